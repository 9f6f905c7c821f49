"""FFCV pipeline operations that apply the randomization tests' corruptions on the fly.

Each operation receives the batch's sample indices (``with_indices``) and calls, per sample and
inside FFCV's compiled loop, the very kernels of :mod:`rethink_dist.corruption` that the
in-memory loader runs over whole arrays. There is no second implementation: a sample's
corrupted label or pixels are a pure function of (corruption seed, split, sample index), so the
FFCV path and the memory path agree bit for bit in every epoch, order, worker and rank.

The loops are parallel over the samples of a batch (``Compiler.get_iterator()``): with more than
one FFCV worker thread they run under ``prange``.
"""

from __future__ import annotations

from dataclasses import replace
from typing import Callable, Optional, Tuple

import numpy as np
from ffcv.pipeline.allocation_query import AllocationQuery
from ffcv.pipeline.compiler import Compiler
from ffcv.pipeline.operation import Operation
from ffcv.pipeline.state import State

from rethink_dist import corruption as C


class LabelCorruption(Operation):
    """Partial label corruption at ``level`` (``corruption.corrupt_label_one``), in place."""

    def __init__(self, seed: int, level: float, num_classes: int, split: int = C.SPLIT_TRAIN):
        super().__init__()
        if not 0.0 <= level <= 1.0:
            raise ValueError(f"corruption level {level} is outside [0, 1]")
        self.seed, self.level, self.num_classes, self.split = int(seed), float(level), int(num_classes), int(split)

    def generate_code(self) -> Callable:
        corrupt_one = C.corrupt_label_one
        seed, level, num_classes, split = self.seed, self.level, self.num_classes, self.split
        loop = Compiler.get_iterator()

        def corrupt_labels(labels, _dst, indices):
            for i in loop(labels.shape[0]):
                labels[i, 0] = corrupt_one(labels[i, 0], indices[i], seed, split, level, num_classes)
            return labels

        corrupt_labels.is_parallel = True
        corrupt_labels.with_indices = True
        return corrupt_labels

    def declare_state_and_memory(self, previous_state: State) -> Tuple[State, Optional[AllocationQuery]]:
        if previous_state.shape != (1,):
            raise TypeError(f"LabelCorruption expects scalar labels (IntDecoder), got shape {previous_state.shape}")
        return replace(previous_state, jit_mode=True), None


class PixelCorruption(Operation):
    """A pixel corruption (``shuffled_pixels``, ``random_pixels`` or ``gaussian``) of H x W x C images.

    Permutations keep the uint8 pixels; ``gaussian`` writes float32 noise on the 0..255 scale with
    the training set's per-channel ``stats`` = (mean, std), exactly as ``corruption.corrupt_images``.
    """

    def __init__(self, kind: str, seed: int, split: int, stats: tuple[np.ndarray, np.ndarray] | None = None):
        super().__init__()
        if kind not in C.PIXEL_KINDS:
            raise ValueError(f"PixelCorruption kind {kind!r} is not valid; valid: {', '.join(C.PIXEL_KINDS)}")
        if kind == "gaussian" and stats is None:
            raise ValueError("gaussian corruption needs the dataset's per-channel (mean, std)")
        self.kind, self.seed, self.split = kind, int(seed), int(split)
        self.stats = None
        if stats is not None:
            self.stats = (np.ascontiguousarray(stats[0], dtype=np.float64),
                          np.ascontiguousarray(stats[1], dtype=np.float64))
        self.image_shape: tuple[int, int, int] | None = None

    def declare_state_and_memory(self, previous_state: State) -> Tuple[State, Optional[AllocationQuery]]:
        shape = tuple(int(s) for s in previous_state.shape)
        if not previous_state.jit_mode or len(shape) != 3:
            raise TypeError(f"PixelCorruption expects decoded H x W x C arrays, got shape {shape}")
        if shape[0] * shape[1] >= C.MAX_POSITIONS:
            raise ValueError(f"images of {shape[0] * shape[1]} pixels exceed the {C.MAX_POSITIONS} supported")
        if self.stats is not None and self.stats[0].shape[0] != shape[2]:
            raise ValueError(f"gaussian stats have {self.stats[0].shape[0]} channels, images have {shape[2]}")
        self.image_shape = shape
        dtype = np.dtype("float32") if self.kind == "gaussian" else previous_state.dtype
        return replace(previous_state, dtype=dtype), AllocationQuery(shape, dtype)

    def generate_code(self) -> Callable:
        assert self.image_shape is not None, "declare_state_and_memory runs first"
        h, w, _ = self.image_shape
        n_pos = h * w
        seed, split = self.seed, self.split
        loop = Compiler.get_iterator()
        permute_one = C.permute_one

        if self.kind == "shuffled_pixels":
            perm = C.shuffle_permutation(seed, n_pos)  # one permutation for the whole dataset

            def shuffle(images, dst, _indices):
                for i in loop(images.shape[0]):
                    permute_one(images[i], perm, dst[i])
                return dst

            op = shuffle
        elif self.kind == "random_pixels":
            random_permutation = C.random_permutation

            def random_pixels(images, dst, indices):
                for i in loop(images.shape[0]):
                    permute_one(images[i], random_permutation(seed, split, indices[i], n_pos), dst[i])
                return dst

            op = random_pixels
        else:
            mean, std = self.stats
            gaussian_one = C.gaussian_one

            def gaussian(images, dst, indices):
                for i in loop(images.shape[0]):
                    gaussian_one(indices[i], seed, split, mean, std, dst[i])
                return dst

            op = gaussian
        op.is_parallel = True
        op.with_indices = True
        return op
