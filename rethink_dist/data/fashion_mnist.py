"""Fashion-MNIST (Xiao, Rasul, Vollgraf 2017) from its four IDX files.

``train-images-idx3-ubyte``, ``train-labels-idx1-ubyte`` (60,000), ``t10k-images-idx3-ubyte``,
``t10k-labels-idx1-ubyte`` (10,000), each plain or gzipped (``.gz``), in one folder. Debian's
package ``dataset-fashion-mnist`` installs them under :data:`DEFAULT_ROOT`, the default when no
``--data-root`` is given. The IDX parsing is torchvision's (``read_image_file`` /
``read_label_file``); this module finds the files, decompresses them, checks what was read (28x28
uint8 images, one label in 0..9 per image) and turns every failure into one :class:`DataError`
line naming the file and how to get good files. Whether the arrays are the released data set (by
their fingerprint) goes into ``ArrayDataset.source``; files written in the same format (by tests)
read alike.
"""

from __future__ import annotations

import gzip
import os
import tempfile
import zlib
from pathlib import Path

import numpy as np

from rethink_dist.data.arrays import ArrayDataset
from rethink_dist.errors import DataError

DEFAULT_ROOT = "/usr/share/datasets/fashion-mnist"
FILES = {
    "train_images": "train-images-idx3-ubyte",
    "train_labels": "train-labels-idx1-ubyte",
    "test_images": "t10k-images-idx3-ubyte",
    "test_labels": "t10k-labels-idx1-ubyte",
}
SIDE = 28
# ArrayDataset.fingerprint of the released data (Debian's dataset-fashion-mnist 0.0~git20200523.55506a9-1, read
# here). The .gz files themselves are recompressed by Debian, so their MD5 sums differ from the ones
# torchvision lists; the decompressed arrays are what identify the data.
RELEASED_FINGERPRINT = "abf4cdc7be0d9c22"
HINT = ("install Debian's package dataset-fashion-mnist (apt-get install dataset-fashion-mnist), "
        f"which puts the files in {DEFAULT_ROOT}, or pass --data-root DIR holding the four IDX files")


def classes() -> tuple[str, ...]:
    from torchvision.datasets import FashionMNIST

    return tuple(FashionMNIST.classes)


def find_file(root: Path, stem: str) -> Path:
    for cand in (root / stem, root / f"{stem}.gz"):
        if cand.is_file():
            return cand
    raise DataError(f"missing Fashion-MNIST file {str(root / stem)!r}(.gz); {HINT}")


def _read_bytes(path: Path) -> bytes:
    try:
        raw = path.read_bytes()
        return gzip.decompress(raw) if path.suffix == ".gz" else raw
    except (OSError, EOFError, zlib.error) as e:
        raise DataError(f"cannot read Fashion-MNIST file {str(path)!r} (truncated or not gzip: "
                        f"{type(e).__name__}); {HINT}") from None


def read_idx(path: Path, kind: str) -> np.ndarray:
    """One IDX file (``kind``: images or labels) as a numpy array, through torchvision's reader."""
    from torchvision.datasets.mnist import read_image_file, read_label_file

    data = _read_bytes(path)
    reader = read_image_file if kind == "images" else read_label_file
    # torchvision's readers take a path to the uncompressed file.
    with tempfile.TemporaryDirectory(prefix="rethink-idx-") as tmp:
        plain = Path(tmp) / "data.idx"
        plain.write_bytes(data)
        try:
            tensor = reader(str(plain))
        except (AssertionError, RuntimeError, ValueError, TypeError, KeyError, IndexError) as e:
            what = str(e).splitlines()[0] if str(e) else type(e).__name__
            raise DataError(f"Fashion-MNIST file {str(path)!r} is not a valid IDX {kind} file "
                            f"(truncated or foreign: {what}); {HINT}") from None
    arr = tensor.numpy()
    if kind == "images" and (arr.dtype != np.uint8 or arr.ndim != 3 or arr.shape[1:] != (SIDE, SIDE)):
        raise DataError(f"Fashion-MNIST file {str(path)!r} holds images {arr.shape} {arr.dtype}; "
                        f"expected N x {SIDE} x {SIDE} uint8; {HINT}")
    if kind == "labels" and (arr.ndim != 1 or (arr.size and (arr.min() < 0 or arr.max() > 9))):
        raise DataError(f"Fashion-MNIST file {str(path)!r} holds labels of shape {arr.shape} outside 0..9; {HINT}")
    return arr


def read_fashion_mnist(root: str | os.PathLike | None = None) -> ArrayDataset:
    """The four IDX files under ``root`` (default: Debian's path) as N x 28 x 28 x 1 uint8 arrays."""
    root = Path(root if root is not None else DEFAULT_ROOT)
    if not root.is_dir():
        raise DataError(f"Fashion-MNIST folder {str(root)!r} does not exist; {HINT}")
    paths = {key: find_file(root, stem) for key, stem in FILES.items()}
    arrays = {key: read_idx(path, "images" if key.endswith("images") else "labels") for key, path in paths.items()}
    for split in ("train", "test"):
        n_x, n_y = len(arrays[f"{split}_images"]), len(arrays[f"{split}_labels"])
        if n_x != n_y:
            raise DataError(f"Fashion-MNIST {split} files disagree: {n_x} images in {str(paths[split + '_images'])!r} "
                            f"but {n_y} labels in {str(paths[split + '_labels'])!r}; {HINT}")
    ds = ArrayDataset(
        "fashion_mnist",
        np.ascontiguousarray(arrays["train_images"][..., None]), arrays["train_labels"].astype(np.int64),
        np.ascontiguousarray(arrays["test_images"][..., None]), arrays["test_labels"].astype(np.int64),
        classes(), str(root.resolve()),
    )
    released = ds.fingerprint == RELEASED_FINGERPRINT
    ds.source += " (the released Fashion-MNIST)" if released else " (not the released Fashion-MNIST: fingerprint differs)"
    return ds


def write_idx(path: str | os.PathLike, array: np.ndarray) -> Path:
    """Write a uint8 array in the IDX format (gzipped when ``path`` ends in .gz): for tests and benches."""
    import struct

    array = np.ascontiguousarray(array, dtype=np.uint8)
    header = struct.pack(">BBBB", 0, 0, 0x08, array.ndim) + struct.pack(f">{array.ndim}I", *array.shape)
    blob = header + array.tobytes()
    path = Path(path)
    path.write_bytes(gzip.compress(blob, compresslevel=1) if path.suffix == ".gz" else blob)
    return path


def write_fashion_mnist(root: str | os.PathLike, train_x: np.ndarray, train_y: np.ndarray, test_x: np.ndarray,
                        test_y: np.ndarray, compress: bool = True) -> Path:
    """Write N x 28 x 28 images and labels as the four Fashion-MNIST IDX files under ``root``."""
    root = Path(root)
    root.mkdir(parents=True, exist_ok=True)
    ext = ".gz" if compress else ""
    for key, arr in (("train_images", train_x), ("train_labels", train_y), ("test_images", test_x),
                     ("test_labels", test_y)):
        arr = np.asarray(arr)
        write_idx(root / (FILES[key] + ext), arr.reshape(len(arr), SIDE, SIDE) if key.endswith("images") else arr)
    return root
