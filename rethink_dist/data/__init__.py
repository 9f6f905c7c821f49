"""Dataset registry: the documented defaults of each dataset and how to load it into memory.

Every dataset loads as :class:`ArrayDataset`: uint8 images N x H x W x C and int64 labels for a
train and a test split. Each dataset carries the defaults its trials use (crop size, learning-
rate decay per epoch, epochs), chosen so the paper's phenomena show on it:

- ``cifar10``: the paper's protocol: 32x32 images cropped to 28x28, lr decay 0.95 per epoch
  of 50,000 images, 100 epochs [open].
- ``digits``: scikit-learn's bundled 8x8 handwritten digits (1,797 real images, no download):
  a fixed stratified split of 1,437 train / 360 test. An epoch is only 12 steps at batch 128,
  so the decay is the paper's per image: 0.95 ** (1437 / 50000) per epoch.
- ``fashion_mnist``: Fashion-MNIST's 60,000 / 10,000 28x28 gray images from the IDX files
  (default: Debian's ``/usr/share/datasets/fashion-mnist``), the gray channel repeated to the
  paper's 28x28x3 model input; lr x 0.99 per epoch, 200 epochs (README: the choices on
  Fashion-MNIST; MLP 1x512 does not yet fit random labels within them).
- ``synthetic``: generated Gaussian class blobs, for fast tests.
- ``imagenet``: the ILSVRC-2012 folder layout, read through FFCV .beton files only.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

import numpy as np


class DataError(ValueError):
    """Data that cannot be read: a missing root, a missing or truncated file. One line."""


@dataclass(frozen=True)
class DatasetInfo:
    name: str
    num_classes: int
    image_shape: tuple[int, int, int] | None  # stored H, W, C (None: variable, e.g. ImageNet)
    crop: int  # model input side: centre crop for evaluation, random crop with augmentation
    augment_pad: int  # zero padding around the stored image before a random crop
    lr_decay: float  # default learning-rate decay per epoch
    epochs: int  # default maximum epochs
    loaders: tuple[str, ...]
    needs_root: bool
    description: str
    input_channels: int | None = None  # channels the models see (a gray channel repeated); None: as stored


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


DIGITS_TRAIN = 1437
FASHION_LR_DECAY = 0.99  # per epoch of 60,000 images (README: the choices on Fashion-MNIST)
FASHION_EPOCHS = 200
DATASETS: dict[str, DatasetInfo] = {
    "cifar10": DatasetInfo("cifar10", 10, (32, 32, 3), 28, 0, 0.95, 100, ("memory", "ffcv"), True,
                           "CIFAR-10 python batches (torchvision layout)"),
    "digits": DatasetInfo("digits", 10, (8, 8, 1), 8, 1, float(0.95 ** (DIGITS_TRAIN / 50000)), 800,
                          ("memory", "ffcv"), False, "scikit-learn's bundled 8x8 digits"),
    "synthetic": DatasetInfo("synthetic", 10, (8, 8, 1), 8, 1, float(0.95 ** (512 / 50000)), 100,
                             ("memory", "ffcv"), False, "generated class blobs"),
    # 28x28 gray, repeated to the paper's 28x28x3 input (the paper's exact parameter counts); random
    # crop with 2 pixels of padding (CIFAR-10's 28-of-32 crop shifts by the same +-2); the schedule
    # is FASHION_LR_DECAY / FASHION_EPOCHS (README: the choices on Fashion-MNIST).
    "fashion_mnist": DatasetInfo("fashion_mnist", 10, (28, 28, 1), 28, 2, FASHION_LR_DECAY, FASHION_EPOCHS,
                                 ("memory", "ffcv"), False, "Fashion-MNIST IDX files (Debian: dataset-fashion-mnist)",
                                 input_channels=3),
    # lr x 0.94 every two epochs (Inception V3's schedule, as in distributed.IMAGENET_RECIPE), per epoch
    "imagenet": DatasetInfo("imagenet", 1000, None, 299, 0, float(0.94 ** 0.5), 90, ("ffcv",), True,
                            "ILSVRC-2012 train/<wnid>/*.JPEG, val/<wnid>/*.JPEG"),
}


def dataset_info(name: str) -> DatasetInfo:
    if name not in DATASETS:
        raise DataError(f"unknown dataset {name!r}; valid: {', '.join(sorted(DATASETS))}")
    return DATASETS[name]


def load(name: str, root: str | None = None, download: bool = False) -> ArrayDataset:
    """Load dataset ``name`` into memory (uint8 N x H x W x C images, int64 labels)."""
    info = dataset_info(name)
    loaders: dict[str, Callable[[], ArrayDataset]] = {
        "digits": lambda: _digits(),
        "synthetic": lambda: _synthetic(),
        "cifar10": lambda: _cifar(root, download),
        "fashion_mnist": lambda: _fashion_mnist(root),
    }
    if name not in loaders:
        raise DataError(f"dataset {name!r} is read through FFCV only: use data.loader='ffcv' with a beton_dir")
    if info.needs_root and not root:
        raise DataError(f"dataset {name!r} needs --data-root (the folder with its files)")
    return loaders[name]()


def digits_csv_path() -> Path:
    """scikit-learn's bundled digits file, found without importing scikit-learn (2 s per process)."""
    import importlib.util

    spec = importlib.util.find_spec("sklearn")
    if spec is None or not spec.submodule_search_locations:
        raise DataError("the digits dataset needs scikit-learn installed (pip install scikit-learn)")
    path = Path(list(spec.submodule_search_locations)[0]) / "datasets" / "data" / "digits.csv.gz"
    if not path.is_file():
        raise DataError(f"scikit-learn's digits file is missing: {path}")
    return path


def digits_split() -> tuple[np.ndarray, np.ndarray]:
    """Rows of the training and the test split (stored: see digits_split.txt)."""
    rows = {}
    for line in (Path(__file__).parent / "digits_split.txt").read_text().splitlines():
        if line and not line.startswith("#"):
            name, *values = line.split()
            rows[name] = np.array([int(v) for v in values], dtype=np.int64)
    return rows["train"], rows["test"]


def _digits() -> ArrayDataset:
    import gzip

    with gzip.open(digits_csv_path(), "rt") as f:
        table = np.loadtxt(f, delimiter=",")
    # Pixels are 0..16: rescale to the 0..255 range every other dataset uses.
    images = np.rint(table[:, :-1].reshape(-1, 8, 8) * (255.0 / 16.0)).astype(np.uint8)[..., None]
    labels = table[:, -1].astype(np.int64)
    train, test = digits_split()
    return ArrayDataset("digits", np.ascontiguousarray(images[train]), labels[train],
                        np.ascontiguousarray(images[test]), labels[test],
                        tuple(str(i) for i in range(10)), "sklearn.datasets.load_digits")


def _synthetic(n_train: int = 512, n_test: int = 256, seed: int = 0) -> ArrayDataset:
    """Ten Gaussian blobs in 8x8 pixel space: learnable, deterministic, instant."""
    rng = np.random.default_rng(seed)
    protos = rng.uniform(40, 215, size=(10, 8, 8, 1))

    def make(n: int) -> tuple[np.ndarray, np.ndarray]:
        y = np.arange(n) % 10
        rng.shuffle(y)
        x = protos[y] + rng.normal(0, 40, size=(n, 8, 8, 1))
        return np.clip(np.rint(x), 0, 255).astype(np.uint8), y.astype(np.int64)

    tr_x, tr_y = make(n_train)
    te_x, te_y = make(n_test)
    return ArrayDataset("synthetic", tr_x, tr_y, te_x, te_y, tuple(str(i) for i in range(10)), "generated")


def _fashion_mnist(root: str | None) -> ArrayDataset:
    from rethink_dist.data.fashion_mnist import read_fashion_mnist

    return read_fashion_mnist(root)


def _cifar(root: str | None, download: bool) -> ArrayDataset:
    from rethink_dist.data.cifar import read_cifar10

    return read_cifar10(root, download=download)
