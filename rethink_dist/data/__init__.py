"""Data sets: how to load each into memory (its facts and defaults are in :mod:`rethink_dist.protocol`).

Every data set loads as :class:`ArrayDataset`: uint8 images N x H x W x C and int64 labels for a
train and a test split.

- ``cifar10``: the CIFAR-10 python batches (torchvision's layout).
- ``digits``: scikit-learn's bundled 8x8 handwritten digits (1,797 real images, no download):
  a fixed stratified split of 1,437 train / 360 test.
- ``fashion_mnist``: Fashion-MNIST's 60,000 / 10,000 28x28 gray images from the IDX files
  (default: Debian's ``/usr/share/datasets/fashion-mnist``).
- ``synthetic``: generated Gaussian class blobs, for fast tests.
- ``imagenet``: the ILSVRC-2012 folder layout, read through FFCV .beton files only.
- ``<module>:<callable>``: your own data set, the arrays your function returns
  (:mod:`rethink_dist.external` says what it must return).
"""

from __future__ import annotations

from pathlib import Path
from typing import Callable

import numpy as np

from rethink_dist.data.arrays import ArrayDataset
from rethink_dist.data.cifar import read_cifar10
from rethink_dist.data.fashion_mnist import read_fashion_mnist
from rethink_dist.errors import DataError
from rethink_dist.external import dataset_facts, is_external, load_user_data
from rethink_dist.protocol import DATASETS, DatasetInfo

__all__ = ["DATASETS", "ArrayDataset", "DataError", "DatasetInfo", "dataset_info", "load"]


def dataset_info(name: str) -> DatasetInfo:
    """The facts of a built-in data set or of your ``module:callable`` (see rethink_dist.external)."""
    return dataset_facts(name)


def load(name: str, root: str | None = None, download: bool = False) -> ArrayDataset:
    """Load dataset ``name`` into memory (uint8 N x H x W x C images, int64 labels)."""
    info = dataset_info(name)
    if is_external(name):
        tr_x, tr_y, te_x, te_y = load_user_data(name)
        return ArrayDataset(name, tr_x, tr_y, te_x, te_y, tuple(str(i) for i in range(info.num_classes)), name)
    loaders: dict[str, Callable[[], ArrayDataset]] = {
        "digits": lambda: _digits(),
        "synthetic": lambda: _synthetic(),
        "cifar10": lambda: read_cifar10(root, download=download),
        "fashion_mnist": lambda: read_fashion_mnist(root),
    }
    if name not in loaders:
        raise DataError(f"dataset {name!r} is read through FFCV only: use data.loader='ffcv' with a beton_dir")
    if info.needs_root and not root:
        raise DataError(f"dataset {name!r} needs --data-root (the folder with its files)")
    return loaders[name]()


def digits_csv_path() -> Path:
    """scikit-learn's bundled digits file, found without importing scikit-learn (slow to import)."""
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
