"""Atomic per-epoch checkpoints of a training run, with no pickle anywhere.

``DIR/checkpoint/`` holds the grown spec and weights (``spec.yaml``,
``weights.safetensors`` via :func:`grow_ir.spec.save`), the optimizer's state
(``optimizer.safetensors`` for tensors, ``optimizer.json`` for hyper-parameters, scalars
and parameter names), the RNG states (``rng.safetensors``) and ``state.json`` (the epoch to
run next, the run's settings, the policy's state, the history so far).

A checkpoint is written in full under ``DIR/.checkpoint.tmp/`` (files flushed to disk),
then renamed into place; the previous one is moved aside first and deleted afterwards. A reader
therefore always finds a complete checkpoint: ``checkpoint/``, or ``.checkpoint.old/`` if
the writer was killed between the two renames.
"""

from __future__ import annotations

import json
import os
import shutil
import threading
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from pydantic import BaseModel, ConfigDict, Field, NonNegativeInt, PositiveInt, ValidationError
from safetensors import SafetensorError
from safetensors.torch import load_file

from grow_ir.errors import GrowError
from grow_ir.ir.graph import Graph
from grow_ir.spec.weights import write_weights

CHECKPOINT = "checkpoint"
CHECKPOINT_TMP = ".checkpoint.tmp"
CHECKPOINT_OLD = ".checkpoint.old"
OPTIMIZER_TENSORS = "optimizer.safetensors"
OPTIMIZER_META = "optimizer.json"


@dataclass
class Checkpoint:
    """A loaded checkpoint: graph, optimizer state, RNG states and the JSON run state."""

    graph: Graph
    optimizer_tensors: dict[str, torch.Tensor]
    optimizer_meta: dict[str, Any]
    rng: dict[str, torch.Tensor]
    state: dict[str, Any]
    path: Path = Path(CHECKPOINT)


def optimizer_to_files(
    optimizer: torch.optim.Optimizer, names: list[str]
) -> tuple[dict[str, torch.Tensor], dict[str, Any]]:
    """The optimizer's state as CPU tensors keyed ``NAME/KEY`` and JSON-able metadata.

    ``names[i]`` is the parameter name of the optimizer's i-th parameter.
    """
    sd = optimizer.state_dict()
    tensors: dict[str, torch.Tensor] = {}
    scalars: dict[str, dict[str, Any]] = {}
    for idx, entry in sd["state"].items():
        name = names[idx]
        for key, value in entry.items():
            if torch.is_tensor(value):
                tensors[f"{name}/{key}"] = value.detach().to("cpu").contiguous().clone()
            else:
                scalars.setdefault(name, {})[key] = value
    groups = [{k: _jsonable(v) for k, v in g.items()} for g in sd["param_groups"]]
    meta = {"class": type(optimizer).__name__, "names": names, "groups": groups}
    meta["scalars"] = scalars
    return tensors, meta


def load_optimizer_state(
    optimizer: torch.optim.Optimizer,
    names: list[str],
    tensors: dict[str, torch.Tensor],
    meta: dict[str, Any],
    *,
    directory: Path = Path(CHECKPOINT),
) -> None:
    """Restore :func:`optimizer_to_files`'s output into ``optimizer`` (built over the same
    parameters, in the order ``names``), exactly. ``directory`` (the checkpoint's) names
    the files in errors.

    Raises:
        GrowError: the checkpoint was written for another optimizer or other parameters,
            or holds state of the wrong shape.
    """
    if meta["class"] != type(optimizer).__name__ or meta["names"] != names:
        raise GrowError(
            "the checkpoint's optimizer does not match the run",
            field="optimizer",
            expected=f"{type(optimizer).__name__} over {len(names)} parameters",
            found=f"{meta['class']} over {len(meta['names'])} parameters",
        )
    index = {name: i for i, name in enumerate(names)}
    params = [p for g in optimizer.param_groups for p in g["params"]]
    tensors_file, meta_file = directory / OPTIMIZER_TENSORS, directory / OPTIMIZER_META
    state: dict[int, dict[str, Any]] = {}
    for key, value in tensors.items():
        name, _, field = key.rpartition("/")
        if name not in index:
            raise broken_file(tensors_file, "the optimizer's state", f"unknown tensor {key!r}")
        want = tuple(params[index[name]].shape)
        if tuple(value.shape) not in (want, ()) or not value.is_floating_point():
            raise broken_file(
                tensors_file,
                f"tensor {key!r} of shape {list(want)}",
                f"{str(value.dtype).removeprefix('torch.')}{list(value.shape)}",
            )
        state.setdefault(index[name], {})[field] = value
    for name, entry in meta["scalars"].items():
        if name not in index:
            found = f"unknown parameter {name!r}"
            raise broken_file(meta_file, "the optimizer's settings", found)
        state.setdefault(index[name], {}).update(entry)
    groups = []
    for g in meta["groups"]:
        groups.append({k: tuple(v) if k == "betas" else v for k, v in g.items()})
    try:
        optimizer.load_state_dict({"state": state, "param_groups": groups})
    except (ValueError, KeyError, TypeError) as exc:
        raise broken_file(meta_file, "the optimizer's settings", _first_line(exc)) from None


def _jsonable(value: Any) -> Any:
    if isinstance(value, tuple):
        return list(value)
    if torch.is_tensor(value):
        return value.item()
    return value


def rng_state(generator: torch.Generator, device: torch.device) -> dict[str, torch.Tensor]:
    """The global torch RNG, the shuffling generator and (on CUDA) the device's RNG."""
    out = {"torch": torch.get_rng_state(), "shuffle": generator.get_state()}
    if device.type == "cuda":
        out["cuda"] = torch.cuda.get_rng_state(device)
    return out


def set_rng_state(
    rng: dict[str, torch.Tensor], generator: torch.Generator, device: torch.device
) -> None:
    """Restore :func:`rng_state`'s output (the CUDA state only when running on CUDA)."""
    torch.set_rng_state(rng["torch"])
    generator.set_state(rng["shuffle"])
    if device.type == "cuda" and "cuda" in rng:
        torch.cuda.set_rng_state(rng["cuda"], device)


@dataclass(frozen=True)
class Snapshot:
    """Everything a checkpoint holds, copied: training may go on while it is written."""

    graph: Graph
    optimizer_tensors: dict[str, torch.Tensor]
    optimizer_meta: dict[str, Any]
    rng: dict[str, torch.Tensor]
    state_json: str
    architecture: Graph
    """A graph with ``graph``'s spec and other parameter values (the trainer's graph before
    the trained weights were taken back): the key under which the spec text is reused."""

    def write(self, run_dir: str | Path, spec: str | None = None) -> Path:
        """Write ``run_dir/checkpoint`` atomically and return its path (see the module
        doc); ``spec`` is ``spec_text(self.graph)`` when the caller holds it already."""
        from grow_ir.spec import save

        run_dir = Path(run_dir)
        work, final, old = (
            run_dir / CHECKPOINT_TMP,
            run_dir / CHECKPOINT,
            run_dir / CHECKPOINT_OLD,
        )
        if work.exists():
            shutil.rmtree(work)  # left by a writer that was killed
        work.mkdir(parents=True)
        # save's own temporary files stay inside work
        tmp = save(self.graph, work / CHECKPOINT, text=spec)
        write_weights(self.optimizer_tensors, tmp / OPTIMIZER_TENSORS)
        _write_text(tmp / OPTIMIZER_META, json.dumps(self.optimizer_meta, indent=1))
        write_weights(self.rng, tmp / "rng.safetensors")
        _write_text(tmp / "state.json", self.state_json)
        for f in tmp.iterdir():
            _fsync(f)
        _fsync(tmp)
        if final.exists():
            if old.exists():
                shutil.rmtree(old)
            os.replace(final, old)
        os.replace(tmp, final)
        _fsync(run_dir)
        shutil.rmtree(work, ignore_errors=True)
        if old.exists():
            shutil.rmtree(old)
        return final


def snapshot(
    *,
    graph: Graph,
    optimizer: torch.optim.Optimizer,
    names: list[str],
    rng: dict[str, torch.Tensor],
    state: dict[str, Any],
    architecture: Graph | None = None,
) -> Snapshot:
    """The checkpoint of this moment: the optimizer's tensors cloned, the run state as
    JSON text (``graph`` and ``rng`` are copies already: ``update_params``, ``rng_state``).
    ``architecture`` is a graph that differs from ``graph`` in parameter values only (the
    graph ``update_params`` made it from); snapshots with the same one share a spec text."""
    tensors, meta = optimizer_to_files(optimizer, names)
    state_text = json.dumps(state, indent=1)
    return Snapshot(graph, tensors, meta, rng, state_text, architecture or graph)


class CheckpointWriter:
    """Writes snapshots on a thread of their own, one at a time and in order, so that the
    next epoch trains while the last one's checkpoint goes to disk.

    Guarantees: when :meth:`wait` returns, every snapshot handed over is a complete
    checkpoint on disk (the newest in ``checkpoint/``); an error of a write is raised by
    the next :meth:`write` or :meth:`wait`.
    """

    def __init__(self) -> None:
        self._thread: threading.Thread | None = None
        self._error: BaseException | None = None
        self._spec: tuple[Graph, str] | None = None
        """The last snapshot's architecture and its spec text: the same YAML every epoch
        until a growth step changes the architecture."""

    def write(self, run_dir: str | Path, snap: Snapshot) -> None:
        """Wait for the write in progress, then start writing ``snap`` into ``run_dir``."""
        self.wait()

        def run() -> None:
            try:
                if self._spec is None or self._spec[0] is not snap.architecture:
                    from grow_ir.spec.store import spec_text

                    self._spec = (snap.architecture, spec_text(snap.graph))
                snap.write(run_dir, self._spec[1])
            except BaseException as exc:  # handed to the training thread by wait()
                self._error = exc

        self._thread = threading.Thread(target=run, name="grow-ir checkpoint", daemon=False)
        self._thread.start()

    def wait(self) -> None:
        """Block until the write in progress is complete; raise its error, if any."""
        if self._thread is not None:
            self._thread.join()
            self._thread = None
        error, self._error = self._error, None
        if error is not None:
            raise error


def find_checkpoint(run_dir: str | Path) -> Path | None:
    """The complete checkpoint of ``run_dir``, or None when it has none."""
    run_dir = Path(run_dir)
    for name in (CHECKPOINT, CHECKPOINT_OLD):
        path = run_dir / name
        if (path / "state.json").is_file():
            return path
    return None


def load_checkpoint(run_dir: str | Path) -> Checkpoint:
    """Read the checkpoint of ``run_dir``, every file checked before it is used.

    Guarantees: nothing is unpickled (RNG and optimizer tensors are safetensors files);
    each JSON file has the fields and types a run writes; RNG states have the size and
    dtype torch's generators take.

    Raises:
        GrowError: ``run_dir`` has no complete checkpoint, or a file of it is truncated,
            empty or of another type (naming that file and what is wrong with it).
    """
    from grow_ir.spec import load

    path = find_checkpoint(run_dir)
    if path is None:
        raise GrowError(
            "nothing to resume: the run directory has no checkpoint",
            file=str(run_dir),
            expected=f"a directory with {CHECKPOINT}/state.json (written after each epoch)",
            found="none",
        )
    state = _read_json(path / "state.json", RunStateFile, "the run's state")
    meta = _read_json(path / "optimizer.json", OptimizerFile, "the optimizer's settings")
    tensors = _read_tensors(path / "optimizer.safetensors", "the optimizer's state")
    rng = _read_tensors(path / "rng.safetensors", "the random generators' states")
    _check_rng(rng, path / "rng.safetensors")
    graph = load(path)
    return Checkpoint(graph, tensors, meta, rng, state, path)


class _File(BaseModel):
    model_config = ConfigDict(extra="allow")


class RunStateFile(_File):
    """What ``state.json`` must hold (see ``Trainer.state_json``)."""

    next_epoch: NonNegativeInt
    config: dict[str, Any]  # validated by its policy's settings model when resumed
    data: str
    data_sha256: str | None = None
    device: str
    policy: dict[str, Any]
    stop_epoch: NonNegativeInt | None
    history: dict[str, list[dict[str, Any]] | dict[str, Any]]
    elapsed: float
    threads: PositiveInt = 1


class OptimizerFile(_File):
    """What ``optimizer.json`` must hold (see :func:`optimizer_to_files`)."""

    model_config = ConfigDict(extra="forbid")
    names: list[str]
    groups: list[dict[str, Any]] = Field(min_length=1)
    scalars: dict[str, dict[str, Any]]
    class_: str = Field(alias="class")


def broken_file(file: Path, what: str, found: str) -> GrowError:
    """The error for a checkpoint ``file`` that does not hold ``what``."""
    return GrowError(
        "a checkpoint file is broken; cannot resume",
        file=str(file),
        expected=f"{what}, as the training run wrote it",
        found=found,
    )


def _first_line(exc: BaseException) -> str:
    return str(exc).splitlines()[0] if str(exc) else type(exc).__name__


def _read_json(file: Path, model: type[BaseModel], what: str) -> dict[str, Any]:
    """The JSON object in ``file``, validated by ``model`` (returned as written)."""
    try:
        data = json.loads(file.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise broken_file(file, what, "no such file") from None
    except (OSError, ValueError) as exc:
        size = file.stat().st_size if file.is_file() else 0
        found = "an empty file" if size == 0 else f"not JSON ({_first_line(exc)})"
        raise broken_file(file, what, found) from None
    if not isinstance(data, dict):
        raise broken_file(file, what, f"a JSON {type(data).__name__}, not an object")
    try:
        model.model_validate(data)
    except ValidationError as exc:
        err = exc.errors()[0]
        where = ".".join(str(p) for p in err["loc"]) or "the top level"
        raise broken_file(file, what, f"field '{where}': {err['msg']}") from None
    return data


def _read_tensors(file: Path, what: str) -> dict[str, torch.Tensor]:
    """The tensors of a safetensors ``file`` (never a pickle)."""
    try:
        return load_file(str(file))
    except FileNotFoundError:
        raise broken_file(file, what, "no such file") from None
    except (SafetensorError, OSError, ValueError, RuntimeError) as exc:
        size = file.stat().st_size if file.is_file() else 0
        found = "an empty file" if size == 0 else f"not a safetensors file ({_first_line(exc)})"
        raise broken_file(file, what, found) from None


def _check_rng(rng: dict[str, torch.Tensor], file: Path) -> None:
    """Refuse RNG states torch's generators would not take."""
    size = torch.get_rng_state().numel()
    for key in ("torch", "shuffle"):
        t = rng.get(key)
        if t is None:
            raise broken_file(file, "the random generators' states", f"no tensor '{key}'")
        if t.dtype != torch.uint8 or tuple(t.shape) != (size,):
            raise broken_file(
                file,
                f"tensor '{key}' uint8[{size}] (a CPU generator's state)",
                f"{str(t.dtype).removeprefix('torch.')}{list(t.shape)}",
            )


def _write_json(path: Path, data: Any) -> None:
    _write_text(path, json.dumps(data, indent=1))


def _write_text(path: Path, text: str) -> None:
    with open(path, "w") as f:
        f.write(text)
        f.flush()
        os.fsync(f.fileno())


def _fsync(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def write_json_atomic(path: str | Path, data: Any) -> None:
    """Write JSON to ``path`` through a temporary file and a rename."""
    path = Path(path)
    tmp = path.with_name(path.name + ".tmp")
    _write_json(tmp, data)
    os.replace(tmp, path)
