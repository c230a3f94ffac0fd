"""The training loop: train, validate, let the policy grow the network, checkpoint, repeat.

One :class:`Trainer` runs a whole run, fresh or resumed. On the CPU a run is deterministic:
the same spec, settings and seed give bitwise-equal weights, and a run resumed from any
epoch's checkpoint ends with the weights of the uninterrupted run (the checkpoint holds
the graph, the optimizer's state, the policy's state and every RNG state).
"""

from __future__ import annotations

import contextlib
import logging
import math
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import nn

from grow_ir.backends.torch import to_torch, update_params
from grow_ir.errors import GrowError, PassError
from grow_ir.growth.actions import GrowthContext, TrainState, apply_growth
from grow_ir.growth.checkpoint import (
    CheckpointWriter,
    broken_file,
    load_checkpoint,
    load_optimizer_state,
    rng_state,
    set_rng_state,
    snapshot,
)
from grow_ir.growth.compiled import Compiler
from grow_ir.growth.config import GrowthConfig, validate_settings
from grow_ir.growth.data import Dataset, check_fits, fingerprint, load_data, load_recorded_data
from grow_ir.growth.device import deterministic, pick_device
from grow_ir.growth.distributed import Distributed, shard_of
from grow_ir.growth.history import History
from grow_ir.growth.objective import evaluate, perplexity
from grow_ir.growth.optim_state import make_optimizer, set_lr, trainable
from grow_ir.growth.policy import Observation, Policy, make_policy, policy_entry
from grow_ir.growth.report import architecture, growth_line
from grow_ir.growth.schedule import growth_deadline, learning_rate, tail_boundaries
from grow_ir.growth.step import train_step
from grow_ir.growth.timing import Timings
from grow_ir.ir.graph import Graph

Log = Callable[[str], None]
LOGGER = logging.getLogger("grow_ir.train")
"""Where a Trainer's lines go by default (growth steps, stops); the CLI prints them."""


@dataclass
class RunResult:
    """The end of a run: the grown graph (with trained values) and its history."""

    graph: Graph
    history: History
    config: GrowthConfig
    data: Dataset
    task: str | None
    stop_epoch: int | None
    seconds: float

    @property
    def test_accuracy(self) -> float:
        """Accuracy of the final network on the test split."""
        return float(self.history.final["test_accuracy"])


@dataclass
class Trainer:
    """A training run. Build it with :meth:`fresh` or :meth:`resume`, then :meth:`run`."""

    config: GrowthConfig
    data: Dataset
    data_source: str
    device: torch.device
    state: TrainState
    policy: Policy
    generator: torch.Generator
    out_dir: Path | None
    history: History = field(default_factory=History)
    next_epoch: int = 0
    stop_epoch: int | None = None
    elapsed: float = 0.0
    log: Log = LOGGER.info
    progress: bool = True
    threads: int = field(default_factory=torch.get_num_threads)
    data_sha256: str | None = None
    timings: Timings = field(default_factory=Timings)
    compiler: Compiler | None = None
    """Set to train under ``torch.compile`` (``--compile``): one compilation per growth step."""
    dist: Distributed | None = None
    """Set when this process is one rank of a DDP run (see :mod:`grow_ir.growth.distributed`)."""
    writer: CheckpointWriter = field(default_factory=CheckpointWriter, repr=False)
    """Writes each epoch's checkpoint while the next epoch trains."""
    _bar: Any = field(default=None, repr=False)

    @classmethod
    def fresh(
        cls,
        graph: Graph,
        config: GrowthConfig,
        *,
        data_source: str,
        out_dir: str | Path | None,
        device: str | None = None,
        log: Log = LOGGER.info,
        progress: bool = True,
    ) -> Trainer:
        """A new run of ``graph`` under ``config`` on the data set ``data_source``.

        Seeds torch's global RNG and the shuffling generator with ``config.seed``; the
        graph's parameters are used as they are (the spec's seed made them). The run uses
        torch's current CPU thread count (``Trainer.threads``) and keeps it on resume.

        Raises:
            GrowError: bad data, a graph that does not fit it, a bad policy setting.
        """
        dev = pick_device(device)
        data = load_data(data_source, val_fraction=config.val_fraction, seq_len=config.seq_len)
        check_fits(data, graph, config.task, source=data_source)
        torch.manual_seed(config.seed)
        gen = torch.Generator().manual_seed(config.seed)
        module = to_torch(graph, task=config.task).to(dev).train()
        optimizer = make_optimizer(config.optimizer, module)
        policy = make_policy(config, graph)
        stop = None if policy_entry(config.policy).grows else growth_deadline(config)
        return cls(
            config=config,
            data=data,
            data_source=data_source,
            device=dev,
            state=TrainState(graph, module, optimizer),
            policy=policy,
            generator=gen,
            out_dir=Path(out_dir) if out_dir is not None else None,
            stop_epoch=stop,
            log=log,
            progress=progress,
            data_sha256=fingerprint(data_source, data),
        )

    @classmethod
    def resume(
        cls,
        out_dir: str | Path,
        *,
        device: str | None = None,
        log: Log = LOGGER.info,
        progress: bool = True,
    ) -> Trainer:
        """The run checkpointed in ``out_dir``, ready to continue with its next epoch
        (on the device and CPU thread count it ran with, unless ``device`` is given).

        Raises:
            GrowError: no checkpoint, or one that does not match its own settings.
        """
        ckpt = load_checkpoint(out_dir)
        s = ckpt.state
        config = validate_settings(s["config"], file=f"{out_dir}/state.json")
        dev = pick_device(device if device is not None else s["device"])
        data = load_recorded_data(
            s["data"],
            s.get("data_sha256"),
            val_fraction=config.val_fraction,
            seq_len=config.seq_len,
        )
        graph = ckpt.graph
        module = to_torch(graph, task=config.task).to(dev).train()
        optimizer = make_optimizer(config.optimizer, module)
        load_optimizer_state(
            optimizer,
            list(trainable(module)),
            ckpt.optimizer_tensors,
            ckpt.optimizer_meta,
            directory=ckpt.path,
        )
        policy = make_policy(config, graph)
        try:
            policy.load_state_dict(s["policy"])
        except (KeyError, TypeError, ValueError) as exc:
            raise broken_file(
                ckpt.path / "state.json", "the policy's state ('policy')", repr(exc)
            ) from None
        gen = torch.Generator()
        set_rng_state(ckpt.rng, gen, dev)
        return cls(
            config=config,
            data=data,
            data_source=s["data"],
            device=dev,
            state=TrainState(graph, module, optimizer),
            policy=policy,
            generator=gen,
            out_dir=Path(out_dir),
            history=History.from_json(s["history"]),
            next_epoch=int(s["next_epoch"]),
            stop_epoch=s["stop_epoch"],
            elapsed=float(s["elapsed"]),
            threads=int(s.get("threads", torch.get_num_threads())),
            data_sha256=s.get("data_sha256"),
            timings=Timings.from_json(s.get("timings")),
            compiler=Compiler(s["compile"]) if s.get("compile") else None,
            log=log,
            progress=progress,
        )

    # ---- the loop -----------------------------------------------------------------------

    def run(self) -> RunResult:
        """Train every remaining epoch, then score the test split.

        Guarantees: after each epoch the policy has seen the validation accuracy and its
        growth steps ran (each logged in one line); with an output directory, a checkpoint
        of the state after each epoch is written (a snapshot taken at the epoch's end, its
        files written and flushed on a second thread while the next epoch trains) and is
        complete before the next one is started and before ``run`` returns or raises; a
        process killed meanwhile leaves the checkpoint before it, complete.
        """
        from tqdm import tqdm

        cfg = self.config
        bar = tqdm(
            total=cfg.epochs,
            initial=self.next_epoch,
            desc="epoch",
            unit="epoch",
            disable=None if self.progress and self.lead else True,
            dynamic_ncols=True,
        )
        self._bar = bar
        try:
            with deterministic(self.threads):
                self._log_stops()  # units already at their limit
                for epoch in range(self.next_epoch, cfg.epochs):
                    self._epoch(epoch, bar)
                with self.timings.phase("checkpoint"):
                    self.writer.wait()
                bar.close()
                return self._finish()
        except BaseException:
            with contextlib.suppress(Exception):  # the error in flight is the one to report
                self.writer.wait()
            raise
        finally:
            bar.close()
            self._bar = None

    @property
    def lead(self) -> bool:
        """True in the process that logs and writes files (rank 0, or the only one)."""
        return self.dist is None or self.dist.rank == 0

    def _say(self, line: str) -> None:
        """Log one line, above the progress bar when one is shown (rank 0 only)."""
        if not self.lead:
            return
        bar = self._bar
        if bar is not None and not bar.disable:
            with bar.external_write_mode():  # the bar steps aside for the line
                self.log(line)
        else:
            self.log(line)

    def _epoch(self, epoch: int, bar: Any) -> None:
        start = time.perf_counter()
        cfg, st = self.config, self.state
        lr = learning_rate(cfg, epoch, self.stop_epoch)
        set_lr(st.optimizer, lr)
        loss, train_acc = self._train_epoch()
        if not math.isfinite(loss):  # NaN/Inf data or a diverging step: nothing to report
            raise GrowError(
                f"training stopped: the loss is not finite in epoch {epoch + 1}",
                field="--lr",
                expected="a finite loss (finite data; a smaller learning rate); the last "
                "checkpoint is kept",
                found=f"a mean loss of {loss}",
            )
        with self.timings.phase("validation"):
            val_loss, val_acc = evaluate(st.module, self.data.x_val, self.data.y_val, self.device)
            if self.dist is not None:  # the policy decides on rank 0's figure
                val_acc = self.dist.rank0_float(val_acc)
        params = st.graph.num_params()
        seconds = time.perf_counter() - start
        row = self.history.add_epoch(
            epoch + 1,
            train_loss=loss,
            train_accuracy=train_acc,
            val_accuracy=val_acc,
            params=params,
            lr=lr,
            seconds=seconds,
        )
        if self.data.is_sequence:  # a language model: validation loss and perplexity too
            row.update(val_loss=val_loss, val_perplexity=perplexity(val_loss))
        bar.set_postfix(
            {"loss": f"{loss:.3f}", "val acc": f"{val_acc:.2%}", "params": f"{params:,}"}
        )
        if self.policy.growing:
            metrics = {"train_loss": loss, "train_accuracy": train_acc, "val_accuracy": val_acc}
            if self.data.is_sequence:
                metrics["val_loss"] = val_loss
            with self.timings.phase("growth"):
                self._grow(Observation(epoch, loss, val_acc, st.graph, metrics, self.data))
        self.elapsed += time.perf_counter() - start
        self.next_epoch = epoch + 1
        bar.update(1)
        if self.out_dir is not None and self.lead:
            with self.timings.phase("checkpoint"):
                self._checkpoint()

    def _train_epoch(self) -> tuple[float, float]:
        st, d = self.state, self.data
        st.module.train()
        model = st.module if self.dist is None else self.dist.wrap(st.module)
        ranks = 1 if self.dist is None else self.dist.world
        model = model if self.compiler is None else self.compiler.wrap(model)
        n, bs = len(d.y_train), self.config.batch_size
        clock = time.perf_counter
        start = clock()
        order = torch.randperm(n, generator=self.generator)
        x, y = d.x_train.to(self.device), d.y_train.to(self.device)
        total = torch.zeros((), dtype=torch.float64, device=self.device)
        correct = torch.zeros((), dtype=torch.int64, device=self.device)
        seen = labels = 0
        step_s = 0.0  # on CUDA, kernels run asynchronously: time lands where the host waits
        for i in range(0, n, bs):
            batch = order[i : i + bs]
            if self._smallest(len(batch)) < 2 and seen:
                break  # batchnorm cannot train on one sample
            idx = shard_of(self.dist, batch).to(self.device)
            xb, yb = x[idx], y[idx]
            if self.compiler is not None:
                xb = self.compiler.batch(xb)
            t0 = clock()
            out, loss = train_step(
                model, st.optimizer, xb, yb, dist=self.dist, global_size=len(batch)
            )
            total += loss.double() * (len(batch) / ranks)  # summed over ranks: the sum
            correct += (out.argmax(-1) == yb).sum()
            seen += len(idx)
            labels += yb.numel()  # a language model has one label per position
            step_s += clock() - t0
        if self.dist is not None:
            sums = self.dist.sum([float(total), float(correct), seen, labels])
            total_f, correct_f, seen_f, labels_f = sums
            total.fill_(total_f)
            correct.fill_(int(correct_f))
            seen, labels = int(seen_f), int(labels_f)
        result = float(total) / max(1, seen), int(correct) / max(1, labels)
        self.timings.add("step", step_s)
        self.timings.add("data", clock() - start - step_s)
        return result

    def _smallest(self, batch: int) -> int:
        """The fewest samples a process trains on in a global batch of ``batch``."""
        return batch if self.dist is None else self.dist.smallest_shard(batch)

    def _grow(self, obs: Observation) -> None:
        epoch = obs.epoch
        requests = self.policy.observe(obs)
        if self.dist is not None:  # one decision, rank 0's, taken by every rank
            requests = self.dist.same_decision(requests)
        self._log_stops()
        ctx = GrowthContext(self.config, self.data, self.device, epoch, self.config.task)
        for req in requests:
            before = self.state.graph
            try:
                self.state, outcome = apply_growth(self.state, req, ctx)
            except PassError as exc:  # the graph and the state are unchanged
                self.policy.refused(req, epoch, exc.message)
                continue
            self.policy.grown(req, epoch, self.state.graph)
            self.history.add_event(epoch + 1, outcome, before)
            self._say(growth_line(epoch + 1, outcome))
        self._log_stops()
        if not self.policy.growing and self.stop_epoch is None:
            self.stop_epoch = epoch + 1
            drops = tail_boundaries(self.config, self.stop_epoch)
            at = ", ".join(str(b + 1) for b in drops) or "none"
            self._say(
                f"epoch {epoch + 1}: growth stopped; learning-rate tail from epoch "
                f"{epoch + 2} (x{self.config.lr_gamma:g} at epochs {at})"
            )

    def _log_stops(self) -> None:
        grouped: dict[tuple[int, str], list[str]] = {}
        for stop in self.policy.drain_stops():
            self.history.add_stop(stop.epoch + 1, stop.unit, stop.reason)
            grouped.setdefault((stop.epoch + 1, stop.reason), []).append(stop.unit)
        for (epoch, reason), units in grouped.items():
            verb = "stops" if len(units) == 1 else "stop"
            when = f"epoch {epoch}" if epoch > 0 else "before training"
            self._say(f"{when}: {', '.join(units)} {verb} growing: {reason}")

    def _checkpoint(self) -> None:
        assert self.out_dir is not None
        st = self.state
        snap = snapshot(
            graph=update_params(st.graph, st.module),
            architecture=st.graph,
            optimizer=st.optimizer,
            names=list(trainable(st.module)),
            rng=rng_state(self.generator, self.device),
            state=self.state_json(),
        )
        self.writer.write(self.out_dir, snap)

    def state_json(self) -> dict[str, Any]:
        """The run's JSON state for a checkpoint: next epoch, settings, policy, history."""
        return {
            "next_epoch": self.next_epoch,
            "config": self.config.model_dump(mode="json"),
            "data": self.data_source,
            "data_sha256": self.data_sha256,
            "device": str(self.device),
            "policy": self.policy.state_dict(),
            "stop_epoch": self.stop_epoch,
            "history": self.history.to_json(),
            "elapsed": self.elapsed,
            "threads": self.threads,
            "timings": self.timings.to_json(),
            "compile": None if self.compiler is None else self.compiler.backend,
        }

    def _finish(self) -> RunResult:
        st = self.state
        graph = update_params(st.graph, st.module)
        with self.timings.phase("validation"):
            test_loss, test_acc = evaluate(
                st.module, self.data.x_test, self.data.y_test, self.device
            )
        last = self.history.epochs[-1] if self.history.epochs else {}
        lm = {}
        if self.data.is_sequence:
            lm = {"test_loss": test_loss, "test_perplexity": perplexity(test_loss)}
        self.history.final = {
            "test_accuracy": test_acc,
            **lm,
            "val_accuracy": last.get("val_accuracy"),
            "params": graph.num_params(),
            "epochs": self.config.epochs,
            "tail_start": None if self.stop_epoch is None else self.stop_epoch + 1,
            "seconds": self.elapsed,
            "data": self.data_source,
            "device": str(self.device),
            "threads": self.threads,
            "architecture": architecture(graph),
            "units": self.policy.summary(),
            "time_split": self.timings.to_json(),
        }
        self._say(self.timings.line())
        return RunResult(
            graph,
            self.history,
            self.config,
            self.data,
            self.config.task,
            self.stop_epoch,
            self.elapsed,
        )


def accuracy(module: nn.Module, x: torch.Tensor, y: torch.Tensor, device: torch.device) -> float:
    """Top-1 accuracy of ``module`` in eval mode over every label (its mode is restored
    afterwards)."""
    return evaluate(module, x, y, device)[1]
