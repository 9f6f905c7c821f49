"""The corruptions are pure functions of (seed, split, index) with the paper's statistics."""

import math
import os
import subprocess
import sys

import numpy as np
import pytest

from rethink_dist import corruption as C
from rethink_dist.data import load


@pytest.fixture(scope="module")
def digits():
    return load("digits")


def test_labels_same_whatever_the_order(digits):
    y, n = digits.train_y, len(digits.train_y)
    idx = np.arange(n)
    a = C.corrupt_labels(y, idx, seed=3, level=0.5, num_classes=10)
    perm = np.random.default_rng(0).permutation(n)
    b = C.corrupt_labels(y[perm], idx[perm], seed=3, level=0.5, num_classes=10)
    assert np.array_equal(a[perm], b)
    # batches of any size give the same labels
    parts = [C.corrupt_labels(y[s:s + 37], idx[s:s + 37], 3, 0.5, 10) for s in range(0, n, 37)]
    assert np.array_equal(np.concatenate(parts), a)


def test_labels_same_in_another_process(digits):
    idx = np.arange(len(digits.train_y))
    here = C.corrupt_labels(digits.train_y, idx, seed=11, level=0.7, num_classes=10)
    code = ("import numpy as np; from rethink_dist import corruption as C; from rethink_dist.data import load;"
            "d = load('digits'); y = C.corrupt_labels(d.train_y, np.arange(len(d.train_y)), 11, 0.7, 10);"
            "print(','.join(map(str, y)))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True,
                         env={**os.environ, "PYTHONHASHSEED": "123"})
    assert np.array_equal(np.array(out.stdout.strip().split(","), dtype=np.int64), here)


@pytest.mark.parametrize("level", [0.1, 0.3, 0.5, 0.8, 1.0])
def test_changed_fraction_within_binomial_bounds(level):
    n = 50_000
    y = np.arange(n) % 10
    z = C.corrupt_labels(y, np.arange(n), seed=1, level=level, num_classes=10)
    p = 0.9 * level  # a redrawn label equals the true one with probability 1/10
    sd = math.sqrt(n * p * (1 - p))
    assert abs((z != y).sum() - n * p) <= 4.5 * sd
    # redrawn labels are uniform over the classes
    counts = np.bincount(z[z != y], minlength=10)
    assert counts.min() > 0.8 * counts.mean()


def test_level_zero_is_identity(digits):
    idx = np.arange(len(digits.train_y))
    assert np.array_equal(C.corrupt_labels(digits.train_y, idx, 5, 0.0, 10), digits.train_y)
    for kind in ("none", "labels"):
        assert C.corrupt_images(digits.train_x, idx, kind, 5) is digits.train_x


def test_seeds_differ(digits):
    idx = np.arange(len(digits.train_y))
    a = C.corrupt_labels(digits.train_y, idx, 1, 1.0, 10)
    b = C.corrupt_labels(digits.train_y, idx, 2, 1.0, 10)
    assert (a != b).mean() > 0.8


def test_test_split_keyed_separately():
    y = np.zeros(1000, dtype=np.int64)
    idx = np.arange(1000)
    tr = C.corrupt_labels(y, idx, 0, 1.0, 10, C.SPLIT_TRAIN)
    te = C.corrupt_labels(y, idx, 0, 1.0, 10, C.SPLIT_TEST)
    assert (tr != te).mean() > 0.8


def test_shuffled_pixels_one_permutation_keeps_values():
    rng = np.random.default_rng(0)
    imgs = rng.integers(0, 256, (50, 6, 5, 3), dtype=np.uint8)
    idx = np.arange(50)
    out = C.corrupt_images(imgs, idx, "shuffled_pixels", seed=4)
    assert out.dtype == np.uint8 and out.shape == imgs.shape
    assert not np.array_equal(out, imgs)
    # each image keeps its multiset of values, and pixels move with all their channels
    assert np.array_equal(np.sort(out.reshape(50, -1), 1), np.sort(imgs.reshape(50, -1), 1))
    perm = C.shuffle_permutation(4, 30)
    assert np.array_equal(out.reshape(50, 30, 3), imgs.reshape(50, 30, 3)[:, perm])
    # the same permutation for the test split and any index
    out_test = C.corrupt_images(imgs[::-1].copy(), idx[::-1].copy(), "shuffled_pixels", 4, C.SPLIT_TEST)
    assert np.array_equal(out_test[::-1], out)


def test_random_pixels_differ_across_images():
    img = np.arange(64, dtype=np.uint8).reshape(1, 8, 8, 1)
    imgs = np.repeat(img, 20, axis=0)
    out = C.corrupt_images(imgs, np.arange(20), "random_pixels", seed=9)
    assert np.array_equal(np.sort(out.reshape(20, -1), 1), np.sort(imgs.reshape(20, -1), 1))
    assert len({o.tobytes() for o in out}) == 20
    again = C.corrupt_images(imgs[5:6], np.array([5]), "random_pixels", seed=9)
    assert np.array_equal(again[0], out[5])


def test_gaussian_matches_dataset_mean_and_variance(digits):
    idx = np.arange(len(digits.train_y))
    stats = C.channel_stats(digits.train_x)
    out = C.corrupt_images(digits.train_x, idx, "gaussian", seed=2, stats=stats)
    assert out.dtype == np.float32
    m, s = out.reshape(-1).mean(), out.reshape(-1).std()
    assert abs(m - stats[0][0]) < 0.01 * stats[1][0]
    assert abs(s / stats[1][0] - 1) < 0.01
    # independent of the source image: a function of (seed, index) only
    other = C.corrupt_images(np.zeros_like(digits.train_x), idx, "gaussian", seed=2, stats=stats)
    assert np.array_equal(out, other)


def test_gaussian_values_are_standard_normal_into_the_tails():
    """The ziggurat generator: the CDF, the moments and the tails (its wedge and tail branches)."""
    import math

    n = 2000
    out = C.corrupt_images(np.zeros((n, 32, 32, 3), np.uint8), np.arange(n), "gaussian", seed=4,
                           stats=(np.zeros(3), np.ones(3)))
    z = out.astype(np.float64).ravel()  # 6.1 million draws
    assert abs(z.mean()) < 0.002 and abs(z.var() - 1) < 0.003
    assert abs((z**4).mean() - 3) < 0.02  # kurtosis of a normal
    zs = np.sort(z)
    phi = lambda x: 0.5 * (1 + math.erf(x / math.sqrt(2)))  # noqa: E731
    grid = np.linspace(-4, 4, 161)
    assert max(abs(e - phi(g)) for e, g in zip(np.searchsorted(zs, grid) / z.size, grid)) < 0.001
    for a in (3.0, C._ZIG_R, 4.0):  # beyond R every value comes from the tail branch
        expected = 2 * (1 - phi(a)) * z.size
        assert abs((np.abs(z) > a).sum() - expected) < 5 * math.sqrt(expected), a
    assert (z > 0).mean() == pytest.approx(0.5, abs=0.001)


def test_gaussian_same_bits_when_first_compiled_by_a_fast_math_caller(tmp_path):
    """FFCV compiles its pipelines with fastmath=True and numba lets callees inherit it; compiled so,
    a NaN test inside the kernels would vanish (2.7% of the values stayed NaN, and the numba cache
    then served that build to the memory path too). The kernels state fastmath=False."""
    stats = (np.array([72.0]), np.array([90.0]))
    plain = C.corrupt_images(np.zeros((40, 28, 28, 1), np.uint8), np.arange(40), "gaussian", seed=5, stats=stats)
    assert np.isfinite(plain).all()
    np.save(tmp_path / "plain.npy", plain)
    code = f"""
import numpy as np
from numba import njit
from rethink_dist import corruption as C
@njit(fastmath=True, error_model="numpy")  # as ffcv.pipeline.compiler.Compiler.compile does
def pipeline(indices, mean, std, out):
    for i in range(indices.shape[0]):
        C.gaussian_one(indices[i], 5, C.SPLIT_TRAIN, mean, std, out[i])
out = np.zeros((40, 28, 28, 1), np.float32)
pipeline(np.arange(40), np.array([72.0]), np.array([90.0]), out)
assert np.isfinite(out).all(), int(np.isnan(out).sum())
assert np.array_equal(out, np.load({str(tmp_path / "plain.npy")!r}))
again = C.corrupt_images(np.zeros((40, 28, 28, 1), np.uint8), np.arange(40), "gaussian", seed=5,
                         stats=(np.array([72.0]), np.array([90.0])))
assert np.array_equal(again, out)
"""
    env = {**os.environ, "NUMBA_CACHE_DIR": str(tmp_path / "numba")}  # nothing compiled before this caller
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env, timeout=300)
    assert proc.returncode == 0, proc.stderr[-2000:]


def test_bad_arguments():
    with pytest.raises(ValueError, match="outside"):
        C.corrupt_labels(np.zeros(3), np.arange(3), 0, 1.5, 10)
    with pytest.raises(ValueError, match="unknown corruption"):
        C.corrupt_images(np.zeros((1, 2, 2, 1), np.uint8), np.arange(1), "blur", 0)
    with pytest.raises(ValueError, match="needs"):
        C.corrupt_images(np.zeros((1, 2, 2, 1), np.uint8), np.arange(1), "gaussian", 0)
