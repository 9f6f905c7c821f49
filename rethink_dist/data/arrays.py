"""A data set in memory: uint8 images N x H x W x C and int64 labels, for a train and a test split."""

from __future__ import annotations

import hashlib
from dataclasses import dataclass, field

import numpy as np


@dataclass
class ArrayDataset:
    name: str
    train_x: np.ndarray  # N x H x W x C uint8
    train_y: np.ndarray  # N int64
    test_x: np.ndarray
    test_y: np.ndarray
    classes: tuple[str, ...]
    source: str = ""  # where it came from (path, "sklearn", "generated")
    _fingerprint: str | None = field(default=None, repr=False)

    @property
    def num_classes(self) -> int:
        return len(self.classes)

    @property
    def fingerprint(self) -> str:
        """sha256 (first 16 hex digits) of the arrays: which data a run saw."""
        if self._fingerprint is None:
            h = hashlib.sha256()
            for a in (self.train_x, self.train_y, self.test_x, self.test_y):
                h.update(str(a.shape).encode())
                h.update(np.ascontiguousarray(a).data)
            self._fingerprint = h.hexdigest()[:16]
        return self._fingerprint

    def subset_train(self, n: int | None) -> "ArrayDataset":
        if n is None or n >= len(self.train_y):
            return self
        return ArrayDataset(self.name, self.train_x[:n], self.train_y[:n], self.test_x, self.test_y,
                            self.classes, self.source)
