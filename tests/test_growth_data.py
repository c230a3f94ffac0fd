"""Data sets: the embedded ones, user .npz files, and one test per error message."""

from __future__ import annotations

import io
import zipfile
from pathlib import Path

import numpy as np
import pytest
import torch

from grow_ir.errors import GrowError
from grow_ir.growth.data import check_fits, load_data
from grow_ir.spec import load_spec


def test_digits_are_fixed_stratified_float_splits() -> None:
    d = load_data("digits")
    assert d.sample_shape == (1, 8, 8) and d.num_classes == 10
    assert d.x_train.dtype == torch.float32 and d.y_train.dtype == torch.int64
    assert float(d.x_train.min()) >= 0.0 and float(d.x_train.max()) <= 1.0
    sizes = (len(d.y_train), len(d.y_val), len(d.y_test))
    assert sum(sizes) == 1797 and sizes[2] == pytest.approx(0.2 * 1797, abs=10)
    assert set(d.y_val.tolist()) == set(range(10)) == set(d.y_test.tolist())
    again = load_data("digits")
    assert torch.equal(d.x_test, again.x_test) and torch.equal(d.y_train, again.y_train)


def test_spirals_are_two_balanced_classes() -> None:
    d = load_data("spirals")
    assert d.sample_shape == (2,) and d.num_classes == 2
    assert abs(int(d.y_train.sum()) * 2 - len(d.y_train)) <= 2
    assert torch.equal(d.x_train, load_data("spirals").x_train)


def test_unknown_name_is_refused() -> None:
    with pytest.raises(GrowError, match=r"unknown data set.*'cifar10'"):
        load_data("cifar10")


def save_npz(path: Path, **arrays: np.ndarray) -> Path:
    np.savez(path, **arrays)
    return path


def good_arrays(n: int = 40) -> dict[str, np.ndarray]:
    rng = np.random.default_rng(0)
    return {
        "x_train": rng.normal(size=(n, 3)).astype(np.float32),
        "y_train": np.arange(n) % 2,
        "x_test": rng.normal(size=(10, 3)).astype(np.float64),
        "y_test": np.arange(10) % 2,
    }


def test_npz_file_is_loaded_with_a_validation_split(tmp_path: Path) -> None:
    d = load_data(save_npz(tmp_path / "mine.npz", **good_arrays()))
    assert d.name == "mine.npz" and d.sample_shape == (3,)
    assert len(d.y_train) + len(d.y_val) == 40 and len(d.y_test) == 10
    assert d.x_test.dtype == torch.float32 and d.num_classes == 2


@pytest.mark.parametrize(
    ("change", "key", "message"),
    [
        ({"x_test": None}, "x_test", "missing array"),
        ({"x_train": np.zeros((40, 3), np.int32)}, "x_train", "inputs must be floats"),
        ({"x_train": np.zeros(40, np.float32)}, "x_train", "batch axis"),
        ({"y_train": np.zeros(40, np.float32)}, "y_train", "labels must be integers"),
        ({"y_test": np.zeros((10, 1), np.int64)}, "y_test", "one label per input"),
        ({"y_train": np.arange(40) - 1}, "y_train", "label out of range"),
        ({"x_test": np.zeros((10, 4), np.float32)}, "x_test", "differ in shape"),
        ({"y_test": np.arange(10) % 3}, "y_test", "test label out of range"),
        ({"y_train": np.arange(40) % 2 * 10**9}, "y_train", "label out of range"),
        (
            {"y_train": (np.arange(40) % 2).astype(np.uint64) + np.uint64(2**63)},
            "y_train",
            "label out of range",
        ),
        ({"y_test": np.full(10, 2**64 - 1, np.uint64)}, "y_test", "label out of range"),
    ],
)
def test_malformed_npz_names_the_file_and_the_key(
    tmp_path: Path, change: dict, key: str, message: str
) -> None:
    arrays = {**good_arrays(), **change}
    path = save_npz(tmp_path / "bad.npz", **{k: v for k, v in arrays.items() if v is not None})
    with pytest.raises(GrowError) as info:
        load_data(path)
    text = str(info.value)
    assert message in text and "bad.npz" in text and f"'{key}'" in text


def write_npy_member(path: Path, arrays: dict[str, np.ndarray], lie: dict[str, tuple]) -> Path:
    """An .npz whose members in ``lie`` carry a header claiming another shape."""
    from numpy.lib import format as npy

    with zipfile.ZipFile(path, "w") as archive:
        for key, a in arrays.items():
            buf = io.BytesIO()
            header = npy.header_data_from_array_1_0(a)
            header["shape"] = lie.get(key, a.shape)
            npy.write_array_header_1_0(buf, header)
            buf.write(a.tobytes())
            archive.writestr(f"{key}.npy", buf.getvalue())
    return path


@pytest.mark.parametrize(
    ("shape", "found"),
    [
        ((50, 3), "600 bytes of data for shape [50, 3]"),
        ((10**12, 3), "12.0 TB of data for shape [1000000000000, 3]"),
        ((20, 3), "240 bytes of data for shape [20, 3]"),
    ],
)
def test_an_npz_header_that_lies_about_its_shape_is_refused_before_reading(
    tmp_path: Path, shape: tuple, found: str
) -> None:
    path = write_npy_member(tmp_path / "liar.npz", good_arrays(), {"x_train": shape})
    with pytest.raises(GrowError) as info:
        load_data(path)
    text = str(info.value)
    assert "liar.npz: field 'x_train': the array's header does not match its data" in text
    assert found in text and "480 bytes stored" in text


def test_an_array_larger_than_memory_is_refused_with_its_size(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from grow_ir.growth import data

    monkeypatch.setattr(data, "_physical_memory", lambda: 400)
    with pytest.raises(GrowError, match=r"larger than this machine's memory.*would take 480 bytes"):
        load_data(save_npz(tmp_path / "big.npz", **good_arrays()))


def test_an_object_array_is_never_unpickled(tmp_path: Path) -> None:
    arrays = {**good_arrays(), "y_test": np.array([object()] * 10)}
    np.savez(tmp_path / "obj.npz", **arrays)
    with pytest.raises(GrowError, match=r"'y_test': an array of Python objects needs pickle"):
        load_data(tmp_path / "obj.npz")


def test_unreadable_and_missing_files(tmp_path: Path) -> None:
    junk = tmp_path / "junk.npz"
    junk.write_bytes(b"not a zip file")
    with pytest.raises(GrowError, match=r"junk\.npz: not a readable \.npz file") as info:
        load_data(junk)
    assert "not a zip archive" in str(info.value) and "pickle" not in str(info.value)
    with pytest.raises(GrowError, match="no such data file"):
        load_data(tmp_path / "absent.npz")


def test_data_must_fit_the_graph(tmp_path: Path, mlp_spec: dict) -> None:
    graph = load_spec(mlp_spec)  # x[batch, 4] -> 3 logits
    arrays = good_arrays()
    arrays["x_train"] = np.zeros((40, 4), np.float32)
    arrays["x_test"] = np.zeros((10, 4), np.float32)
    arrays["y_train"] = np.arange(40) % 4  # label 3 needs a 4th logit
    path = save_npz(tmp_path / "four.npz", **arrays)
    with pytest.raises(GrowError, match=r"four.npz: field 'y_train': label out of range"):
        check_fits(load_data(path), graph, source=str(path))
    with pytest.raises(GrowError, match=r"expected samples of shape \[4\], found \[2\]"):
        check_fits(load_data("spirals"), graph, source="spirals")
