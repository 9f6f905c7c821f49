"""The randomization tests' corruptions, as pure functions of (seed, split, sample index).

Nothing here touches global random state. Every random draw is a counter-based hash
(SplitMix64's finalizer) of the corruption seed, a stream number, the split (train or test)
and the sample's index in its split, so a sample is corrupted the same way in every epoch,
batch order, worker, rank, node, and after a resume.

The per-sample kernels are compiled with numba and are the single implementation: the in-memory
loader calls them over whole arrays, and the FFCV pipeline operations
(`rethink_dist.data.ffcv_ops`) call the very same kernels per batch, so both paths agree bit for
bit.

Kinds (Zhang et al. 2017, section 2):
- ``none``: the data unchanged.
- ``labels``: each training label, independently with probability ``level``, is replaced by a
  class drawn uniformly from all classes (it may equal the true one: about 0.9·level of the
  labels change with 10 classes). ``level=1`` is the paper's "random labels".
- ``shuffled_pixels``: one permutation of pixel positions (all channels of a pixel move
  together), the same for every image of the training and the test set.
- ``random_pixels``: an independent permutation for every image.
- ``gaussian``: every image is replaced by Gaussian noise with the per-channel mean and
  variance of the original training set.

A subset trial (``data.subset``) trains on :func:`subset_indices`, drawn by the same hash (its own
stream, keyed by the subset seed), and keeps every sample's index in the full training set: subset
and corruption commute, and a sample's corrupted label is the same in every trial.

Pixel corruptions apply to the training and the test images alike (as the paper does for
shuffled pixels); test labels stay true unless ``corrupt_test`` is set.
"""

from __future__ import annotations

import math

import numpy as np
from numba import njit, prange

from rethink_dist.config import CORRUPTION_KINDS as KINDS, PIXEL_CORRUPTIONS as PIXEL_KINDS  # noqa: E402

SPLIT_TRAIN = 0
SPLIT_TEST = 1

# Stream numbers: one per independent use of randomness.
_LABEL_COIN = np.uint64(1)
_LABEL_CLASS = np.uint64(2)
_SHUFFLE = np.uint64(3)
_RANDPERM = np.uint64(4)
_GAUSS = np.uint64(5)
_SUBSET = np.uint64(6)

_GOLDEN = np.uint64(0x9E3779B97F4A7C15)
_M1 = np.uint64(0xBF58476D1CE4E5B9)
_M2 = np.uint64(0x94D049BB133111EB)
_S30 = np.uint64(30)
_S27 = np.uint64(27)
_S31 = np.uint64(31)
_S11 = np.uint64(11)
_S32 = np.uint64(32)
_TWO_M53 = 1.0 / 9007199254740992.0  # 2**-53
MAX_POSITIONS = 1 << 20


@njit(cache=True, fastmath=False, inline="always")
def _mix(z):
    """SplitMix64 finalizer: a bijective avalanche of a 64-bit word."""
    z = (z ^ (z >> _S30)) * _M1
    z = (z ^ (z >> _S27)) * _M2
    return z ^ (z >> _S31)


@njit(cache=True, fastmath=False, inline="always")
def _key(seed, stream, split, index):
    h = _mix(np.uint64(seed) + _GOLDEN)
    h = _mix(h ^ (stream * _GOLDEN))
    h = _mix(h ^ (np.uint64(split) + _M1))
    return _mix(h ^ np.uint64(index))


@njit(cache=True, fastmath=False, inline="always")
def _unit(h):
    """A uniform double in [0, 1) from a hash."""
    return np.float64(h >> _S11) * _TWO_M53


# ----------------------------------------------------------------------------------------------
# Labels
# ----------------------------------------------------------------------------------------------
@njit(cache=True, fastmath=False)
def corrupt_label_one(label, index, seed, split, level, num_classes):
    """The corrupted label of one sample."""
    if _unit(_key(seed, _LABEL_COIN, split, index)) < level:
        return np.int64(_key(seed, _LABEL_CLASS, split, index) % np.uint64(num_classes))
    return np.int64(label)


@njit(cache=True, fastmath=False)
def _corrupt_labels_kernel(labels, indices, seed, split, level, num_classes, out):
    for i in range(indices.shape[0]):
        out[i] = corrupt_label_one(labels[i], indices[i], seed, split, level, num_classes)


def corrupt_labels(
    labels: np.ndarray,
    indices: np.ndarray,
    seed: int,
    level: float,
    num_classes: int,
    split: int = SPLIT_TRAIN,
) -> np.ndarray:
    """Labels after partial corruption at ``level``: ``labels[i]`` belongs to sample ``indices[i]``."""
    labels = np.ascontiguousarray(labels, dtype=np.int64)
    indices = np.ascontiguousarray(indices, dtype=np.int64)
    if labels.shape != indices.shape:
        raise ValueError(f"labels {labels.shape} and indices {indices.shape} differ in shape")
    if not 0.0 <= level <= 1.0:
        raise ValueError(f"corruption level {level} is outside [0, 1]")
    out = np.empty_like(labels)
    _corrupt_labels_kernel(labels, indices, int(seed), int(split), float(level), int(num_classes), out)
    return out


# ----------------------------------------------------------------------------------------------
# Subsets: which training samples a subset trial trains on
# ----------------------------------------------------------------------------------------------
@njit(cache=True, fastmath=False)
def _subset_keys(n, seed, out):
    for i in range(n):
        out[i] = _key(seed, _SUBSET, SPLIT_TRAIN, i)


def subset_size(n: int, fraction: float) -> int:
    """How many of ``n`` training samples a subset of ``fraction`` holds (at least one)."""
    return min(n, max(1, int(round(fraction * n))))


def subset_indices(n: int, fraction: float, seed: int) -> np.ndarray:
    """The training samples (indices into the full set of ``n``, ascending) a subset trial trains on.

    The :func:`subset_size` samples with the smallest hashes of (``seed``, index): a pure function of
    (seed, n, fraction), so every trial, rank and resume of one subset seed sees the same samples,
    and for one seed a smaller fraction's subset lies inside a larger one's. Each sample is in the
    subset of a random seed with probability ``subset_size / n``, independently of its label.
    """
    if not 0.0 < fraction <= 1.0:
        raise ValueError(f"subset fraction {fraction} is outside (0, 1]")
    keys = np.empty(n, dtype=np.uint64)
    _subset_keys(int(n), int(seed), keys)
    chosen = np.argsort(keys, kind="stable")[: subset_size(n, fraction)]
    return np.sort(chosen).astype(np.int64)


# ----------------------------------------------------------------------------------------------
# Pixels: permutations of positions (images are H x W x C; a position is one (h, w))
# ----------------------------------------------------------------------------------------------
@njit(cache=True, fastmath=False)
def _permutation(base, num_positions):
    """A uniformly random permutation: Fisher-Yates driven by one hash per position (O(n), no sort)."""
    perm = np.arange(num_positions)
    for k in range(num_positions - 1, 0, -1):
        # (32 random bits x (k + 1)) >> 32: an index in [0, k], bias below 2**-12 for k < 2**20
        j = np.int64(((_mix(base ^ (np.uint64(k) * _M2)) >> _S32) * np.uint64(k + 1)) >> _S32)
        t = perm[k]
        perm[k] = perm[j]
        perm[j] = t
    return perm


@njit(cache=True, fastmath=False)
def shuffle_permutation(seed, num_positions):
    """The one permutation of ``num_positions`` pixel positions used by ``shuffled_pixels``."""
    return _permutation(_key(seed, _SHUFFLE, 0, 0), num_positions)


@njit(cache=True, fastmath=False)
def random_permutation(seed, split, index, num_positions):
    """The permutation of pixel positions for one image under ``random_pixels``."""
    return _permutation(_key(seed, _RANDPERM, split, index), num_positions)


@njit(cache=True, fastmath=False)
def permute_one(image, perm, out):
    """out[position k] = image[position perm[k]] for a contiguous H x W x C image."""
    h, w, c = image.shape
    src = image.reshape(h * w, c)
    dst = out.reshape(h * w, c)
    for k in range(h * w):
        p = perm[k]
        for ch in range(c):
            dst[k, ch] = src[p, ch]


# Standard normals by the ziggurat method (Marsaglia and Tsang 2000, in Doornik's 2005 layout):
# the area under f(x) = exp(-x^2 / 2) for x >= 0 is cut into 128 strips of equal area V: strip 0
# is the base rectangle up to R plus the tail beyond R, strips 1..127 are rectangles
# [0, _ZIG_X[i]] x [f(_ZIG_X[i]), f(_ZIG_X[i + 1])]. A draw picks a strip and a point in it; about
# 99% of draws land inside the part of the strip under the curve that needs no test, so a normal
# costs one hash, a multiply and a compare; the rest take a wedge test (one exp) or the tail
# (two logs). Every draw is a hash of (image key, value index, attempt): still a pure function.
_ZIG_R = 3.442619855899
_ZIG_V = 9.91256303526217e-3


def _ziggurat_tables() -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    x = np.zeros(129, dtype=np.float64)
    f = lambda t: math.exp(-0.5 * t * t)  # noqa: E731
    x[0] = _ZIG_V / f(_ZIG_R)
    x[1] = _ZIG_R
    for i in range(1, 127):
        x[i + 1] = math.sqrt(-2.0 * math.log(_ZIG_V / x[i] + f(x[i])))
    x[128] = 0.0
    ratio = x[1:] / x[:-1]  # a draw u * x[i] with |u| < ratio[i] lies under the curve
    fx = np.array([f(t) for t in x])
    return x, ratio, fx


_ZIG_X, _ZIG_RATIO, _ZIG_F = _ziggurat_tables()
_S8 = np.uint64(8)
_M7 = np.uint64(127)
_TWO_M56 = 1.0 / 72057594037927936.0  # 2**-56
# Marks a first draw that missed the fast region. A finite value that no first draw can take (they
# are below R = 3.44 in magnitude), not NaN: code compiled with fast-math (FFCV compiles its
# pipelines so, and numba lets callees inherit it) may assume that no NaN exists and drop the test.
_MISS = np.float32(1e30)


@njit(cache=True, fastmath=False, inline="always")
def _draw(base, k, attempt):
    """The hash of draw ``attempt`` of value ``k`` in the stream ``base``."""
    return _mix(base ^ ((np.uint64(k) | (np.uint64(attempt) << _S32)) * _GOLDEN))


@njit(cache=True, fastmath=False, inline="always")
def _strip_point(r):
    """A draw's strip (7 bits) and signed position u in (-1, 1) (56 bits; signed: one conversion)."""
    return np.int64(r & _M7), np.float64(np.int64(r >> _S8)) * _TWO_M56 * 2.0 - 1.0


@njit(cache=True, fastmath=False, inline="always")
def _normal(base, k):
    """The k-th standard normal of the stream ``base``."""
    attempt = 0
    while True:
        i, u = _strip_point(_draw(base, k, attempt))
        attempt += 1
        if abs(u) < _ZIG_RATIO[i]:
            return u * _ZIG_X[i]
        if i == 0:  # the tail beyond R (Marsaglia's method), with the sign of u
            while True:
                r1 = _draw(base, k, attempt)
                r2 = _draw(base, k, attempt + 1)
                attempt += 2
                t = -math.log((np.float64(r1 >> _S11) + 1.0) * _TWO_M53) / _ZIG_R
                y = -math.log((np.float64(r2 >> _S11) + 1.0) * _TWO_M53)
                if y + y >= t * t:
                    return _ZIG_R + t if u > 0 else -_ZIG_R - t
        x = u * _ZIG_X[i]
        r2 = _draw(base, k, attempt)
        attempt += 1
        if _ZIG_F[i] + _unit(r2) * (_ZIG_F[i + 1] - _ZIG_F[i]) < math.exp(-0.5 * x * x):
            return x


@njit(cache=True, fastmath=False)
def _first_draws(base, flat):
    """Attempt 0 of ``_normal(base, k)`` for every k: the value where it lands under the curve, else _MISS."""
    for k in range(flat.shape[0]):
        i, u = _strip_point(_draw(base, k, 0))
        flat[k] = np.float32(u * _ZIG_X[i]) if abs(u) < _ZIG_RATIO[i] else _MISS


@njit(cache=True, fastmath=False)
def _finish_draws(base, flat):
    for k in range(flat.shape[0]):
        if flat[k] == _MISS:
            flat[k] = np.float32(_normal(base, k))


@njit(cache=True, fastmath=False)
def _scale_channels(pixels, mean, std):
    for ch in range(pixels.shape[1]):
        m = mean[ch]
        s = std[ch]
        for p in range(pixels.shape[0]):
            pixels[p, ch] = np.float32(m + s * np.float64(pixels[p, ch]))


@njit(cache=True, fastmath=False)
def gaussian_one(index, seed, split, mean, std, out):
    """Fill one contiguous H x W x C float32 image with N(mean[c], std[c]^2) noise (ziggurat).

    Three passes, each a simple loop the compiler vectorizes: the first draws of all values
    (_MISS where a draw misses the fast region), the misses (about 1%) by the full method, the
    per-channel scaling. Plain IEEE arithmetic throughout: every kernel here is compiled with
    ``fastmath=False`` stated, so that a fast-math caller (FFCV's pipeline compiler) cannot pass
    its flags down, and vectorized and scalar code give the same bits on every machine.
    """
    h, w, c = out.shape
    flat = out.reshape(h * w * c)
    base = _key(seed, _GAUSS, split, index)
    _first_draws(base, flat)
    _finish_draws(base, flat)
    _scale_channels(out.reshape(h * w, c), mean, std)


@njit(cache=True, fastmath=False, parallel=True)
def _shuffle_kernel(images, perm, out):
    for i in prange(images.shape[0]):
        permute_one(images[i], perm, out[i])


@njit(cache=True, fastmath=False, parallel=True)
def _random_pixels_kernel(images, indices, seed, split, out):
    n = images.shape[1] * images.shape[2]
    for i in prange(images.shape[0]):
        permute_one(images[i], random_permutation(seed, split, indices[i], n), out[i])


@njit(cache=True, fastmath=False, parallel=True)
def _gaussian_kernel(indices, seed, split, mean, std, out):
    for i in prange(indices.shape[0]):
        gaussian_one(indices[i], seed, split, mean, std, out[i])


def channel_stats(images: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Per-channel mean and standard deviation (float64) of N x H x W x C images."""
    if images.ndim != 4:
        raise ValueError(f"expected N x H x W x C images, got shape {images.shape}")
    c = images.shape[-1]
    flat = images.reshape(-1, c)
    total = np.zeros(c, dtype=np.float64)
    total_sq = np.zeros(c, dtype=np.float64)
    # Chunked so a 1.2M-image array never needs a float64 copy in full.
    for start in range(0, flat.shape[0], 1 << 22):
        chunk = flat[start : start + (1 << 22)].astype(np.float64)
        total += chunk.sum(axis=0)
        total_sq += (chunk * chunk).sum(axis=0)
    n = flat.shape[0]
    mean = total / n
    var = np.maximum(total_sq / n - mean * mean, 0.0)
    return mean, np.sqrt(var)


def corrupt_images(
    images: np.ndarray,
    indices: np.ndarray,
    kind: str,
    seed: int,
    split: int = SPLIT_TRAIN,
    stats: tuple[np.ndarray, np.ndarray] | None = None,
) -> np.ndarray:
    """Images (N x H x W x C) after the pixel corruption ``kind``; ``images[i]`` is sample ``indices[i]``.

    Permutations keep the input's dtype; ``gaussian`` returns float32 on the input's pixel
    scale and needs ``stats`` (per-channel mean and std of the original training set).
    Kinds that leave pixels alone return the input unchanged.
    """
    if kind not in KINDS:
        raise ValueError(f"unknown corruption kind {kind!r}; valid: {', '.join(KINDS)}")
    if kind not in PIXEL_KINDS:
        return images
    images = np.ascontiguousarray(images)
    indices = np.ascontiguousarray(indices, dtype=np.int64)
    if images.ndim != 4 or images.shape[0] != indices.shape[0]:
        raise ValueError(f"images {images.shape} must be N x H x W x C with N = {indices.shape[0]}")
    n_pos = images.shape[1] * images.shape[2]
    if n_pos >= MAX_POSITIONS:
        raise ValueError(f"images of {n_pos} pixels exceed the {MAX_POSITIONS} supported")
    if kind == "shuffled_pixels":
        out = np.empty_like(images)
        _shuffle_kernel(images, shuffle_permutation(int(seed), n_pos), out)
        return out
    if kind == "random_pixels":
        out = np.empty_like(images)
        _random_pixels_kernel(images, indices, int(seed), int(split), out)
        return out
    if stats is None:
        raise ValueError("gaussian corruption needs the dataset's per-channel (mean, std)")
    mean = np.ascontiguousarray(stats[0], dtype=np.float64)
    std = np.ascontiguousarray(stats[1], dtype=np.float64)
    out = np.empty(images.shape, dtype=np.float32)
    _gaussian_kernel(indices, int(seed), int(split), mean, std, out)
    return out
