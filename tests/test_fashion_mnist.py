"""Fashion-MNIST: the IDX reader on files written here (gz and plain, truncated, foreign), the
installed real files (Debian's dataset-fashion-mnist), and the protocol's model input."""

import gzip
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from rethink_dist.config import ConfigError, TrialConfig
from rethink_dist.data import DataError, load
from rethink_dist.data.fashion_mnist import (DEFAULT_ROOT, FILES, RELEASED_FINGERPRINT, read_fashion_mnist,
                                            write_fashion_mnist)

REAL = Path(DEFAULT_ROOT)
# make (and so CI) installs the package: there a missing file is a failure, not a skip.
needs_real = pytest.mark.skipif(not (REAL / "train-images-idx3-ubyte.gz").is_file() and not os.environ.get("CI"),
                                reason="Debian's dataset-fashion-mnist is not installed (make system-deps installs it)")


def _fake(rng, n_train=30, n_test=12):
    return (rng.integers(0, 256, (n_train, 28, 28), dtype=np.uint8), rng.integers(0, 10, n_train, dtype=np.uint8),
            rng.integers(0, 256, (n_test, 28, 28), dtype=np.uint8), rng.integers(0, 10, n_test, dtype=np.uint8))


@pytest.mark.parametrize("compress", [True, False], ids=["gz", "plain"])
def test_idx_round_trip(tmp_path, compress):
    tx, ty, vx, vy = _fake(np.random.default_rng(0))
    root = write_fashion_mnist(tmp_path, tx, ty, vx, vy, compress=compress)
    ext = ".gz" if compress else ""
    assert sorted(p.name for p in root.iterdir()) == sorted(stem + ext for stem in FILES.values())
    # The IDX header: magic 0x00000803 (uint8, 3 dims), then the dims big-endian.
    blob = (root / f"train-images-idx3-ubyte{ext}").read_bytes()
    blob = gzip.decompress(blob) if compress else blob
    assert blob[:4] == b"\x00\x00\x08\x03" and int.from_bytes(blob[4:8], "big") == 30
    ds = read_fashion_mnist(root)
    assert ds.train_x.shape == (30, 28, 28, 1) and ds.train_x.dtype == np.uint8
    assert np.array_equal(ds.train_x[..., 0], tx) and np.array_equal(ds.test_x[..., 0], vx)
    assert np.array_equal(ds.train_y, ty) and np.array_equal(ds.test_y, vy) and ds.train_y.dtype == np.int64
    assert ds.classes[0] == "T-shirt/top" and len(ds.classes) == 10
    assert "not the released Fashion-MNIST" in ds.source
    assert load("fashion_mnist", str(root)).fingerprint == ds.fingerprint


def test_truncated_missing_and_foreign_files_are_one_line(tmp_path):
    rng = np.random.default_rng(1)
    for name, damage in [
        ("train-images-idx3-ubyte.gz", lambda b: b[: len(b) // 2]),  # truncated gzip stream
        ("t10k-labels-idx1-ubyte.gz", lambda b: gzip.compress(gzip.decompress(b)[:-3])),  # short payload
        ("train-labels-idx1-ubyte.gz", lambda b: gzip.compress(b"\x00\x00\x0d\x01" + gzip.decompress(b)[4:])),  # float32
        ("t10k-images-idx3-ubyte.gz", lambda b: b"PK\x03\x04 not an idx file"),  # foreign: not gzip at all
    ]:
        root = write_fashion_mnist(tmp_path / name, *_fake(rng))
        path = root / name
        path.write_bytes(damage(path.read_bytes()))
        with pytest.raises(DataError) as e:
            read_fashion_mnist(root)
        msg = str(e.value)
        assert "\n" not in msg and str(path) in msg and "dataset-fashion-mnist" in msg, msg
    root = write_fashion_mnist(tmp_path / "missing", *_fake(rng))
    (root / "t10k-images-idx3-ubyte.gz").unlink()
    with pytest.raises(DataError, match="missing Fashion-MNIST file .*t10k-images-idx3-ubyte.*dataset-fashion-mnist"):
        read_fashion_mnist(root)
    with pytest.raises(DataError, match="does not exist.*dataset-fashion-mnist"):
        read_fashion_mnist(tmp_path / "nowhere")
    # images and labels of different lengths
    tx, ty, vx, vy = _fake(rng)
    root = write_fashion_mnist(tmp_path / "counts", tx, ty[:-1], vx, vy)
    with pytest.raises(DataError, match="30 images .* but 29 labels"):
        read_fashion_mnist(root)


def test_cli_bad_data_root_is_one_line_exit_2(tmp_path):
    root = write_fashion_mnist(tmp_path, *_fake(np.random.default_rng(2)))
    blob = (root / "train-images-idx3-ubyte.gz").read_bytes()
    (root / "train-images-idx3-ubyte.gz").write_bytes(blob[:100])
    proc = subprocess.run([sys.executable, "-m", "rethink_dist.cli", "train", "--dataset", "fashion_mnist",
                           "--data-root", str(root), "--epochs", "1"], capture_output=True, text=True, timeout=120)
    assert proc.returncode == 2, proc.stderr
    lines = [l for l in proc.stderr.splitlines() if l.strip()]
    assert len(lines) == 1 and "train-images-idx3-ubyte.gz" in lines[0] and "dataset-fashion-mnist" in lines[0], lines


@needs_real
def test_the_installed_real_files():
    ds = load("fashion_mnist")  # no root: Debian's path
    assert ds.train_x.shape == (60000, 28, 28, 1) and ds.test_x.shape == (10000, 28, 28, 1)
    assert np.array_equal(np.bincount(ds.train_y, minlength=10), np.full(10, 6000))
    assert np.array_equal(np.bincount(ds.test_y, minlength=10), np.full(10, 1000))
    assert ds.fingerprint == RELEASED_FINGERPRINT and ds.source.endswith("(the released Fashion-MNIST)")
    assert len(np.unique(ds.train_x.reshape(60000, -1), axis=0)) == 60000  # no duplicate training images


def test_gray_channel_repeated_to_the_papers_input_and_counts(tmp_path):
    """The models see 28x28x3 (the paper's parameter counts); data.channels=1 keeps the gray channel."""
    from rethink_dist.train import Trial

    root = write_fashion_mnist(tmp_path, *_fake(np.random.default_rng(3)))
    base = {"data": {"name": "fashion_mnist", "root": str(root)}, "optim": {"epochs": 1}}
    counts = {"mlp_1x512": 1_209_866, "mlp_3x512": 1_735_178, "alexnet_small": 1_387_786}
    for arch, n in counts.items():
        trial = Trial(TrialConfig.from_dict({**base, "model": {"name": arch}}))
        assert trial.loader.input_shape == (3, 28, 28) and trial.meta["params"] == n
        assert trial.config.to_flat()["data.channels"] == 3
    x = trial.loader.test_eval
    assert torch.equal(x[:, 0], x[:, 1]) and torch.equal(x[:, 0], x[:, 2])
    gray = Trial(TrialConfig.from_dict({**base, "data": {**base["data"], "channels": 1}}))
    assert gray.loader.input_shape == (1, 28, 28) and gray.meta["params"] == 784 * 512 + 512 + 5130
    assert torch.equal(gray.loader.test_eval[:, 0], x[:, 0])  # whitening then repeating = repeating then whitening
    with pytest.raises(ConfigError, match="data.channels=2 is not valid for 'cifar10'; valid: 3"):
        TrialConfig.from_dict({"data": {"name": "cifar10", "channels": 2}})
    with pytest.raises(ConfigError, match="data.channels=0"):
        TrialConfig.from_dict({"data": {"name": "fashion_mnist", "channels": 0}})
