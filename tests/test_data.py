"""Datasets: the embedded digits, CIFAR-10 python files written here in the exact format."""

import pickle

import numpy as np
import pytest

from rethink_dist.data import DataError, load
from rethink_dist.data.cifar import CLASSES, read_cifar10, write_cifar10


def _fake_cifar(rng, n_train=50, n_test=20):
    return (rng.integers(0, 256, (n_train, 32, 32, 3), dtype=np.uint8), rng.integers(0, 10, n_train),
            rng.integers(0, 256, (n_test, 32, 32, 3), dtype=np.uint8), rng.integers(0, 10, n_test))


def test_digits_split_fixed_and_stratified():
    a, b = load("digits"), load("digits")
    assert a.train_x.shape == (1437, 8, 8, 1) and a.test_x.shape == (360, 8, 8, 1)
    assert a.train_x.dtype == np.uint8 and a.train_x.max() == 255
    assert np.array_equal(a.train_y, b.train_y) and a.fingerprint == b.fingerprint
    counts = np.bincount(a.test_y, minlength=10)
    assert counts.min() >= 35 and counts.max() <= 37


def test_digits_equal_scikit_learns_split():
    """The stored split and the direct file read give exactly scikit-learn's load_digits + train_test_split."""
    from sklearn.datasets import load_digits
    from sklearn.model_selection import train_test_split

    d = load_digits()
    images = np.rint(d.images * (255.0 / 16.0)).astype(np.uint8)[..., None]
    tr_x, te_x, tr_y, te_y = train_test_split(images, d.target, train_size=1437, stratify=d.target,
                                              random_state=0, shuffle=True)
    ours = load("digits")
    assert np.array_equal(ours.train_x, tr_x) and np.array_equal(ours.test_x, te_x)
    assert np.array_equal(ours.train_y, tr_y) and np.array_equal(ours.test_y, te_y)


def test_cifar_round_trip_exact_format(tmp_path):
    rng = np.random.default_rng(0)
    tx, ty, vx, vy = _fake_cifar(rng)
    folder = write_cifar10(tmp_path, tx, ty, vx, vy)
    assert sorted(p.name for p in folder.iterdir()) == sorted(
        [f"data_batch_{i}" for i in range(1, 6)] + ["test_batch", "batches.meta"])
    # the exact python format: a pickled dict with bytes keys, data N x 3072 uint8 channel-major
    with open(folder / "data_batch_1", "rb") as f:
        d = pickle.load(f, encoding="bytes")
    assert d[b"data"].shape == (10, 3072) and d[b"data"].dtype == np.uint8
    assert np.array_equal(d[b"data"][0, :1024].reshape(32, 32), tx[0, :, :, 0])
    ds = read_cifar10(tmp_path)
    assert np.array_equal(ds.train_x, tx) and np.array_equal(ds.train_y, ty)
    assert np.array_equal(ds.test_x, vx) and np.array_equal(ds.test_y, vy)
    assert ds.classes == CLASSES
    assert read_cifar10(folder).fingerprint == ds.fingerprint  # the folder itself works too
    assert "not the official" in read_cifar10(tmp_path, verify=True).source


def test_cifar_missing_and_truncated_files_name_the_path(tmp_path):
    rng = np.random.default_rng(1)
    folder = write_cifar10(tmp_path, *_fake_cifar(rng))
    (folder / "data_batch_3").unlink()
    with pytest.raises(DataError, match="missing CIFAR-10 file .*data_batch_3"):
        read_cifar10(tmp_path)
    write_cifar10(tmp_path, *_fake_cifar(rng))
    blob = (folder / "test_batch").read_bytes()
    (folder / "test_batch").write_bytes(blob[: len(blob) // 2])
    with pytest.raises(DataError, match="truncated or corrupt.*test_batch|test_batch.*truncated or corrupt"):
        read_cifar10(tmp_path)
    with pytest.raises(DataError, match="does not exist"):
        read_cifar10(tmp_path / "nowhere")
    with pytest.raises(DataError, match="needs --data-root"):
        load("cifar10")
