"""The in-memory loader: the whole (corrupted) dataset as tensors on the training device.

The corruption is applied once, when the data is built, by the same kernels the FFCV pipeline
uses; batches are index draws from a per-epoch generator, and crops and whitening run on whole
batches. Without augmentation the preprocessed training and test sets are cached on the device,
so a training batch and the evaluation passes are plain gathers.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Iterator

import numpy as np
import torch

from rethink_dist import corruption as C
from rethink_dist.config import CorruptionConfig
from rethink_dist.data import ArrayDataset
from rethink_dist.data.preprocess import preprocess


@dataclass
class CorruptedArrays:
    """A dataset after its corruption: what every loader must serve (numpy, N x H x W x C)."""

    train_x: np.ndarray
    train_y: np.ndarray
    test_x: np.ndarray
    test_y: np.ndarray
    changed: np.ndarray  # bool per training sample: its label differs from the true one
    true_train_y: np.ndarray


def corrupt_dataset(ds: ArrayDataset, cc: CorruptionConfig) -> CorruptedArrays:
    """Apply the corruption ``cc`` to a whole in-memory dataset (train and test)."""
    n_tr, n_te = len(ds.train_y), len(ds.test_y)
    idx_tr, idx_te = np.arange(n_tr, dtype=np.int64), np.arange(n_te, dtype=np.int64)
    stats = C.channel_stats(ds.train_x) if cc.kind == "gaussian" else None
    train_x = C.corrupt_images(ds.train_x, idx_tr, cc.kind, cc.seed, C.SPLIT_TRAIN, stats)
    test_x = C.corrupt_images(ds.test_x, idx_te, cc.kind, cc.seed, C.SPLIT_TEST, stats)
    train_y, test_y = ds.train_y, ds.test_y
    if cc.kind == "labels":
        train_y = C.corrupt_labels(ds.train_y, idx_tr, cc.seed, cc.level, ds.num_classes, C.SPLIT_TRAIN)
        if cc.corrupt_test:
            test_y = C.corrupt_labels(ds.test_y, idx_te, cc.seed, cc.level, ds.num_classes, C.SPLIT_TEST)
    return CorruptedArrays(train_x, train_y, test_x, test_y, train_y != ds.train_y, ds.train_y)


def _nchw(a: np.ndarray, device: torch.device) -> torch.Tensor:
    return torch.from_numpy(np.ascontiguousarray(a)).permute(0, 3, 1, 2).contiguous().to(device)


class MemoryLoader:
    """Batches of (inputs, labels) drawn by index from device-resident tensors."""

    def __init__(self, arrays: CorruptedArrays, crop: int, augment: bool, pad: int, device: torch.device,
                 eval_batch_size: int = 1024, channels: int | None = None, subset: np.ndarray | None = None):
        """``subset``: the indices of the training samples to train on (a subset trial); evaluation
        still covers the whole training set, in index order."""
        self.device = device
        self.crop, self.augment, self.pad, self.channels = crop, augment, pad, channels
        self.eval_batch_size = eval_batch_size
        self.channels_last = False
        self.train_raw = _nchw(arrays.train_x, device)
        self.train_y = torch.from_numpy(arrays.train_y).to(device)
        self.changed = torch.from_numpy(arrays.changed).to(device)
        self.test_y = torch.from_numpy(arrays.test_y).to(device)
        test_raw = _nchw(arrays.test_x, device)
        self.train_eval = self._prep_all(self.train_raw)
        self.test_eval = self._prep_all(test_raw)
        if not augment:
            self.train_raw = None  # the cache serves training batches too
        self.input_shape = tuple(self.test_eval.shape[1:])
        n = len(arrays.train_y)
        self.train_index = None if subset is None else torch.from_numpy(np.asarray(subset, np.int64)).to(device)
        # Per training sample: trained on? (None: every sample is)
        self.in_subset = None
        if subset is not None:
            self.in_subset = torch.zeros(n, dtype=torch.bool, device=device)
            self.in_subset[self.train_index] = True

    def use_channels_last(self) -> None:
        """Hold the cached inputs channels-last (N x H x W x C in memory, still N x C x H x W in shape) for
        a channels-last model: a training batch is then gathered from that storage and an evaluation
        batch is a slice of it, both already channels-last, where an N x C x H x W cache needs one
        more copy of every batch to convert it."""
        if not self.channels_last:
            self.train_eval = self.train_eval.contiguous(memory_format=torch.channels_last)
            self.test_eval = self.test_eval.contiguous(memory_format=torch.channels_last)
            self.channels_last = True

    def gather(self, x: torch.Tensor, idx: torch.Tensor) -> torch.Tensor:
        """The rows ``idx`` of the cached inputs ``x`` (``train_eval`` or ``test_eval``) in one
        ``index_select``, keeping a channels-last cache's layout, so the batch needs no copy."""
        if self.channels_last:  # index_select would return an N x C x H x W-contiguous batch
            return x.permute(0, 2, 3, 1).index_select(0, idx).permute(0, 3, 1, 2)
        return x.index_select(0, idx)

    def _prep_all(self, raw: torch.Tensor) -> torch.Tensor:
        return torch.cat([preprocess(raw[i : i + 4096], self.crop, channels=self.channels) for i in range(0, len(raw), 4096)])

    @property
    def num_train(self) -> int:
        """The training set's size (what evaluation and the per-sample records cover)."""
        return len(self.train_y)

    @property
    def num_fit(self) -> int:
        """How many training samples an epoch trains on (the subset's size in a subset trial)."""
        return self.num_train if self.train_index is None else len(self.train_index)

    def train_batches(self, batch_size: int, generator: torch.Generator) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        """One epoch of shuffled training batches (the last one may be smaller)."""
        order = torch.randperm(self.num_fit, generator=generator).to(self.device)
        if self.train_index is not None:
            order = self.train_index.index_select(0, order)
        for start in range(0, self.num_fit, batch_size):
            idx = order[start : start + batch_size]
            # index_select rather than x[idx]: the faster gather on the CPU (bench/train.py).
            if self.augment:
                x = preprocess(self.train_raw.index_select(0, idx), self.crop, augment=True, pad=self.pad,
                               generator=generator, channels=self.channels)
            else:
                x = self.gather(self.train_eval, idx)
            yield x, self.train_y.index_select(0, idx)

    def eval_batches(self, split: str) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        """The whole split in order, in large batches, preprocessed without augmentation."""
        x_all, y_all = (self.train_eval, self.train_y) if split == "train" else (self.test_eval, self.test_y)
        for start in range(0, len(y_all), self.eval_batch_size):
            yield x_all[start : start + self.eval_batch_size], y_all[start : start + self.eval_batch_size]
