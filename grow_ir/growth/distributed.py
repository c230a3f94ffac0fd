"""Data-parallel growth over several processes: torch.distributed and DDP.

Every process (rank) holds the whole network and trains on its shard of each global
batch; ``DistributedDataParallel`` averages the gradients, so every rank takes the same
optimizer step. Growth stays in lockstep:

- the data order is one seeded permutation that every rank draws identically; global
  batch ``b`` is split into one contiguous shard per rank (:meth:`Distributed.shard`), and
  the loss is scaled so the averaged gradient is the global batch's mean gradient
  whatever the shard sizes, as one process training on the whole batch computes it;
- the validation accuracy the policy sees and the growth decision are rank 0's,
  broadcast (every rank also runs the policy, to keep its state, and must agree);
- the growth step (deterministic given the graph, the seed and the epoch) runs on every
  rank; the new module is wrapped in a new DDP, whose construction broadcasts rank 0's
  parameters and buffers; the optimizer's state is carried over on every rank;
- rank 0 alone writes checkpoints (atomically) and the run's files; on resume every rank
  loads that checkpoint.

Ranks find each other through torch.distributed's environment (``RANK``, ``WORLD_SIZE``,
``LOCAL_RANK``, ``MASTER_ADDR``, ``MASTER_PORT``), set by ``torchrun`` or by
:func:`launch` (``grow-ir train --nproc N``). gloo on the CPU, NCCL on CUDA (one device per
local rank). Every collective has a timeout, so a rank that dies or hangs ends the run
on every rank with an error instead of a hang.
"""

from __future__ import annotations

import contextlib
import dataclasses
import gc
import json
import logging
import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import timedelta
from typing import Any, NoReturn

import torch
import torch.distributed as dist
from torch import nn

from grow_ir.errors import CheckFailed, GrowError

DEFAULT_TIMEOUT_S = 120.0
"""How long a collective waits for the other ranks before the run fails."""


_JOINED: list[Distributed] = []
"""The group this process joined (torch.distributed's process group is per process too)."""


class RankFailed(CheckFailed):
    """Another rank failed, was killed or stopped answering: this rank stops too (exit
    status 1, not bad input)."""


def launched() -> bool:
    """True in a process started as one rank of several (torchrun or ``--nproc``)."""
    return int(os.environ.get("WORLD_SIZE", "1")) > 1


@dataclass
class Distributed:
    """This process's place in a multi-process run, and the collectives the trainer uses."""

    rank: int
    world: int
    local_rank: int
    device: torch.device
    _source: nn.Module | None = field(default=None, repr=False)
    _wrapped: nn.Module | None = field(default=None, repr=False)

    @classmethod
    def join(cls, device: torch.device, timeout_s: float = DEFAULT_TIMEOUT_S) -> Distributed:
        """Join the process group described by the environment (gloo on the CPU, NCCL on
        CUDA, where each local rank takes its own device).

        Raises:
            GrowError: the environment does not describe a group.
        """
        try:
            rank, world = int(os.environ["RANK"]), int(os.environ["WORLD_SIZE"])
            local = int(os.environ.get("LOCAL_RANK", rank))
        except (KeyError, ValueError) as exc:
            raise GrowError(
                "not launched as a rank of a multi-process run",
                field="RANK",
                expected="RANK, WORLD_SIZE (and MASTER_ADDR, MASTER_PORT) from torchrun or "
                "grow-ir train --nproc N",
                found=str(exc),
            ) from None
        if device.type == "cuda":
            device = torch.device("cuda", local)
            torch.cuda.set_device(device)
        backend = "nccl" if device.type == "cuda" else "gloo"
        if not dist.is_initialized():
            dist.init_process_group(
                backend, timeout=timedelta(seconds=timeout_s), rank=rank, world_size=world
            )
        _JOINED[:] = [cls(rank, world, local, device)]
        return _JOINED[0]

    def close(self) -> None:
        """Leave the process group."""
        self._source = self._wrapped = None
        _JOINED.clear()
        if dist.is_initialized():
            dist.destroy_process_group()

    # ---- the module -------------------------------------------------------------------

    def wrap(self, module: nn.Module) -> nn.Module:
        """``module`` in DDP (the same wrapper while ``module`` is the same).

        A new module (after a growth step) gets a new wrapper, made on every rank at the
        same point of the run; making it broadcasts rank 0's parameters and buffers. The
        old wrapper is freed first: its gradient hooks sit on parameters the new module
        may share, and must not fire again.
        """
        if module is self._source and self._wrapped is not None:
            return self._wrapped
        self._source = self._wrapped = None
        gc.collect()
        ids = [self.local_rank] if self.device.type == "cuda" else None
        self._wrapped = nn.parallel.DistributedDataParallel(module, device_ids=ids)
        self._source = module
        return self._wrapped

    # ---- data -------------------------------------------------------------------------

    def shard(self, batch: torch.Tensor) -> torch.Tensor:
        """This rank's contiguous share of a global batch of indices (sizes differ by at
        most one)."""
        return torch.tensor_split(batch, self.world)[self.rank]

    def smallest_shard(self, size: int) -> int:
        """The size of the smallest shard of a global batch of ``size``."""
        return size // self.world

    # ---- agreement --------------------------------------------------------------------

    def sum(self, values: Sequence[float]) -> list[float]:
        """``values`` summed over every rank (float64)."""
        t = torch.tensor(list(values), dtype=torch.float64, device=self.device)
        self._collective(dist.all_reduce, t)
        return t.tolist()

    def rank0_float(self, value: float) -> float:
        """Rank 0's ``value``, on every rank."""
        t = torch.tensor([value], dtype=torch.float64, device=self.device)
        self._collective(dist.broadcast, t, src=0)
        return float(t.item())

    def all_ok(self, ok: bool) -> bool:
        """True when ``ok`` holds on every rank."""
        t = torch.tensor([1 if ok else 0], dtype=torch.int64, device=self.device)
        self._collective(dist.all_reduce, t, op=dist.ReduceOp.MIN)
        return bool(t.item())

    def rank0_text(self, text: str) -> str:
        """Rank 0's ``text``, on every rank (broadcast as UTF-8 bytes, no pickle)."""
        data = text.encode() if self.rank == 0 else b""
        size = torch.tensor([len(data)], dtype=torch.int64, device=self.device)
        self._collective(dist.broadcast, size, src=0)
        buf = torch.zeros(int(size.item()), dtype=torch.uint8, device=self.device)
        if self.rank == 0:
            buf.copy_(torch.frombuffer(bytearray(data), dtype=torch.uint8))
        self._collective(dist.broadcast, buf, src=0)
        return bytes(buf.cpu().tolist()).decode()

    def same_decision(self, requests: list[Any]) -> list[Any]:
        """Rank 0's growth requests, checked against this rank's own.

        Raises:
            RankFailed: this rank's policy decided otherwise (its state diverged).
        """
        mine = json.dumps([dataclasses.asdict(r) for r in requests], sort_keys=True, default=str)
        theirs = self.rank0_text(mine)
        if theirs != mine:
            raise RankFailed(
                "the ranks' growth policies disagree",
                field="growth",
                expected=f"rank {self.rank} to decide what rank 0 decided: {theirs}",
                found=mine,
            )
        return requests

    def _collective(self, fn: Any, *args: Any, **kwargs: Any) -> None:
        try:
            fn(*args, **kwargs)
        except (RuntimeError, dist.DistError) as exc:
            raise lost_rank(self, exc) from None


def current() -> Distributed | None:
    """The multi-process run this process is a rank of, if any (for training loops that
    are not handed one, like Learn to Grow's)."""
    return _JOINED[0] if _JOINED and dist.is_initialized() else None


def shard_of(where: Distributed | None, batch: torch.Tensor) -> torch.Tensor:
    """This process's share of a global batch (all of it in a single process)."""
    return batch if where is None else where.shard(batch)


def batch_loss(
    where: Distributed | None, out: torch.Tensor, y: torch.Tensor, global_size: int
) -> torch.Tensor:
    """Cross-entropy to back-propagate for this process's shard of a global batch: the
    mean in a single process; under DDP, which averages over ranks, the shard's sum times
    ranks ÷ global size, so the gradient is the global batch's mean whatever the shards."""
    out, per_sample = out.reshape(-1, out.shape[-1]), max(1, y[0].numel()) if len(y) else 1
    y = y.reshape(-1)  # a language model: one next-token label per position
    if where is None:
        return nn.functional.cross_entropy(out, y)
    summed = nn.functional.cross_entropy(out, y, reduction="sum")
    return summed * (where.world / (global_size * per_sample))


def lost_rank(where: Distributed, exc: BaseException, out_dir: str | None = None) -> RankFailed:
    """The error a rank reports when a collective failed under it."""
    first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
    resume = (
        f"; the last complete checkpoint is in {out_dir}: grow-ir train --resume {out_dir} "
        f"--nproc {where.world}"
        if out_dir
        else ""
    )
    return RankFailed(
        f"rank {where.rank} of {where.world} stopped: another rank failed, was killed or "
        f"timed out{resume}",
        field="--nproc",
        expected="every rank to reach the same collective",
        found=first[:300],
    )


def check_started(where: Distributed, error: GrowError | None) -> None:
    """Return when every rank set its run up; otherwise raise ``error`` (this rank's) or
    a RankFailed saying another rank could not start."""
    ok = where.all_ok(error is None)
    if error is not None:
        raise error
    if not ok:
        raise RankFailed(
            f"rank {where.rank} of {where.world} stopped: another rank could not start the run",
            field="--nproc",
            expected="every rank to start",
            found="a rank that reported an error",
        )


def leave(status: int) -> NoReturn:
    """End this rank's process with ``status`` without the interpreter's teardown.

    Why: constructing a ``DistributedDataParallel`` keeps the gloo group's C++ worker
    threads alive past ``destroy_process_group`` (torch 2.13: ``pt_gloo_runloop`` and
    ``gloo_tcp_loop`` are still running after the wrapper is freed and the group
    destroyed), and a C++ thread that needs the GIL while the interpreter tears down is
    ended by Python 3.11 with ``pthread_exit``, which aborts the process (``terminate
    called without an active exception``, SIGABRT), so an intermittent failure of a run
    that succeeded. Guarantees: stdout, stderr and logging are flushed first; by then the
    command has written, flushed and fsynced its files (checkpoints are complete before
    ``Trainer.run`` returns).
    """
    logging.shutdown()
    for stream in (sys.stdout, sys.stderr):
        with contextlib.suppress(Exception):
            stream.flush()
    os._exit(status)


def rank_argv(argv: Sequence[str]) -> list[str]:
    """The command line a rank runs: ``argv`` without ``--nproc N``."""
    out: list[str] = []
    skip = False
    for arg in argv:
        if skip:
            skip = False
        elif arg == "--nproc":
            skip = True
        elif not arg.startswith("--nproc="):
            out.append(arg)
    return out


# ---- launching ---------------------------------------------------------------------------


def free_port() -> int:
    """A TCP port free on this machine now (for the rendezvous of a local run)."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def launch(nproc: int, argv: Sequence[str], *, grace_s: float = 30.0) -> int:
    """Run ``python -m grow_ir ARGV`` as ``nproc`` ranks on this machine and wait.

    Each rank gets torch.distributed's environment (a fresh local rendezvous port);
    rank ``r`` prints its pid first. When a rank fails or is killed, the others are given
    ``grace_s`` seconds to stop by themselves (each reports its own error) and are then
    terminated. Returns 0 when every rank succeeded, else the first failure's status
    (2 for bad input, 1 otherwise).
    """
    env = dict(os.environ)
    env.update(
        MASTER_ADDR="127.0.0.1",
        MASTER_PORT=str(free_port()),
        WORLD_SIZE=str(nproc),
        LOCAL_WORLD_SIZE=str(nproc),
    )
    procs = []
    for rank in range(nproc):
        rank_env = {**env, "RANK": str(rank), "LOCAL_RANK": str(rank)}
        cmd = [sys.executable, "-m", "grow_ir", *argv]
        procs.append(subprocess.Popen(cmd, env=rank_env))
        print(f"rank {rank}: pid {procs[-1].pid}", flush=True)
    failed: tuple[int, int] | None = None
    deadline = None
    while any(p.poll() is None for p in procs):
        if failed is None:
            failed = _first_failure(procs)
            if failed is not None:
                deadline = time.monotonic() + grace_s
        elif deadline is not None and time.monotonic() > deadline:
            for p in procs:
                if p.poll() is None:
                    p.terminate()
            deadline = None
        time.sleep(0.05)
    failed = failed or _first_failure(procs)
    if failed is None:
        return 0
    rank, code = failed
    how = f"was killed by {signal.Signals(-code).name}" if code < 0 else f"exited with {code}"
    print(
        f"grow-ir: error: rank {rank} of {nproc} {how}; the run stopped on every rank",
        file=sys.stderr,
    )
    return 2 if code == 2 else 1


def _first_failure(procs: list[subprocess.Popen]) -> tuple[int, int] | None:
    """The failed rank to report: one killed by a signal first (the cause; the others
    stop because of it and may exit as soon), else the lowest failed rank."""
    failed = [(rank, code) for rank, p in enumerate(procs) if (code := p.poll())]
    killed = [f for f in failed if f[1] < 0]
    return (killed or failed or [None])[0]
