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

_GOLDEN = np.uint64(0x9E3779B97F4A7C15)
_M1 = np.uint64(0xBF58476D1CE4E5B9)
_M2 = np.uint64(0x94D049BB133111EB)
_S30 = np.uint64(30)
_S27 = np.uint64(27)
_S31 = np.uint64(31)
_S11 = np.uint64(11)
_S32 = np.uint64(32)
_LOW32 = np.uint64(0xFFFFFFFF)
_TWO_M53 = 1.0 / 9007199254740992.0  # 2**-53
_TWO_M32 = 1.0 / 4294967296.0  # 2**-32
_TWO_PI = 2.0 * math.pi
MAX_POSITIONS = 1 << 20


@njit(cache=True, inline="always")
def _mix(z):
    """SplitMix64 finalizer: a bijective avalanche of a 64-bit word."""
    z = (z ^ (z >> _S30)) * _M1
    z = (z ^ (z >> _S27)) * _M2
    return z ^ (z >> _S31)


@njit(cache=True, inline="always")
def _key(seed, stream, split, index):
    h = _mix(np.uint64(seed) + _GOLDEN)
    h = _mix(h ^ (stream * _GOLDEN))
    h = _mix(h ^ (np.uint64(split) + _M1))
    return _mix(h ^ np.uint64(index))


@njit(cache=True, inline="always")
def _unit(h):
    """A uniform double in [0, 1) from a hash."""
    return np.float64(h >> _S11) * _TWO_M53


# ----------------------------------------------------------------------------------------------
# Labels
# ----------------------------------------------------------------------------------------------
@njit(cache=True)
def corrupt_label_one(label, index, seed, split, level, num_classes):
    """The corrupted label of one sample."""
    if _unit(_key(seed, _LABEL_COIN, split, index)) < level:
        return np.int64(_key(seed, _LABEL_CLASS, split, index) % np.uint64(num_classes))
    return np.int64(label)


@njit(cache=True)
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
# Pixels: permutations of positions (images are H x W x C; a position is one (h, w))
# ----------------------------------------------------------------------------------------------
@njit(cache=True)
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


@njit(cache=True)
def shuffle_permutation(seed, num_positions):
    """The one permutation of ``num_positions`` pixel positions used by ``shuffled_pixels``."""
    return _permutation(_key(seed, _SHUFFLE, 0, 0), num_positions)


@njit(cache=True)
def random_permutation(seed, split, index, num_positions):
    """The permutation of pixel positions for one image under ``random_pixels``."""
    return _permutation(_key(seed, _RANDPERM, split, index), num_positions)


@njit(cache=True)
def permute_one(image, perm, out):
    """out[position k] = image[position perm[k]] for a contiguous H x W x C image."""
    h, w, c = image.shape
    src = image.reshape(h * w, c)
    dst = out.reshape(h * w, c)
    for k in range(h * w):
        p = perm[k]
        for ch in range(c):
            dst[k, ch] = src[p, ch]


@njit(cache=True)
def gaussian_one(index, seed, split, mean, std, out):
    """Fill one contiguous H x W x C float32 image with N(mean[c], std[c]^2) noise.

    Box-Muller on pairs of values: one hash gives two 32-bit uniforms, which give two normals.
    """
    h, w, c = out.shape
    n = h * w * c
    flat = out.reshape(n)
    base = _key(seed, _GAUSS, split, index)
    for q in range((n + 1) // 2):
        r = _mix(base ^ (np.uint64(q) * _GOLDEN))
        u1 = (np.float64(r >> _S32) + 1.0) * _TWO_M32  # (0, 1]
        u2 = np.float64(r & _LOW32) * _TWO_M32  # [0, 1)
        radius = math.sqrt(-2.0 * math.log(u1))
        angle = _TWO_PI * u2
        v = 2 * q
        flat[v] = np.float32(mean[v % c] + std[v % c] * (radius * math.cos(angle)))
        if v + 1 < n:
            flat[v + 1] = np.float32(mean[(v + 1) % c] + std[(v + 1) % c] * (radius * math.sin(angle)))


@njit(cache=True, parallel=True)
def _shuffle_kernel(images, perm, out):
    for i in prange(images.shape[0]):
        permute_one(images[i], perm, out[i])


@njit(cache=True, parallel=True)
def _random_pixels_kernel(images, indices, seed, split, out):
    n = images.shape[1] * images.shape[2]
    for i in prange(images.shape[0]):
        permute_one(images[i], random_permutation(seed, split, indices[i], n), out[i])


@njit(cache=True, parallel=True)
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
