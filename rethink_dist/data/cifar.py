"""CIFAR-10 in its python format: ``cifar-10-batches-py/{data_batch_1..5, test_batch, batches.meta}``.

Each batch is a pickled dict with ``data`` (N x 3072 uint8, channel-major rows of 32x32) and
``labels``. The reader checks structure rather than the official MD5 sums, so files written in
the exact format (by tests and benches) read like the real ones; whether the files are the
official ones is reported in ``ArrayDataset.source``.
"""

from __future__ import annotations

import hashlib
import os
import pickle
from pathlib import Path

import numpy as np

from rethink_dist.data.arrays import ArrayDataset
from rethink_dist.errors import DataError

FOLDER = "cifar-10-batches-py"
TRAIN_FILES = [f"data_batch_{i}" for i in range(1, 6)]
TEST_FILE = "test_batch"
META_FILE = "batches.meta"
# torchvision's MD5 sums of the official files.
OFFICIAL_MD5 = {
    "data_batch_1": "c99cafc152244af753f735de768cd75f",
    "data_batch_2": "d4bba439e000b95fd0a9bffe97cbabec",
    "data_batch_3": "54ebc095f3ab1f0389bbae665268c751",
    "data_batch_4": "634d18415352ddfa80567beed471001a",
    "data_batch_5": "482c414d41f54cd18b22e5b47cb7c3cb",
    "test_batch": "40351d587109b95175f43aff81a1287e",
}
CLASSES = ("airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse", "ship", "truck")


def find_folder(root: str | os.PathLike) -> Path:
    """The ``cifar-10-batches-py`` folder under ``root`` (or ``root`` itself)."""
    root = Path(root)
    if not root.exists():
        raise DataError(f"data root {str(root)!r} does not exist")
    for cand in (root / FOLDER, root):
        if (cand / TEST_FILE).exists() or (cand / META_FILE).exists():
            return cand
    raise DataError(f"no CIFAR-10 python batches under {str(root)!r} (expected {str(root / FOLDER)!r})")


def _read_batch(path: Path) -> tuple[np.ndarray, np.ndarray]:
    if not path.exists():
        raise DataError(f"missing CIFAR-10 file {str(path)!r}")
    try:
        with open(path, "rb") as f:
            d = pickle.load(f, encoding="bytes")
    except Exception as e:  # truncated or not a pickle
        raise DataError(f"cannot read CIFAR-10 file {str(path)!r} (truncated or corrupt: {type(e).__name__})") from None
    if not isinstance(d, dict):
        raise DataError(f"CIFAR-10 file {str(path)!r} is not a batch dict")
    d = {(k.decode() if isinstance(k, bytes) else k): v for k, v in d.items()}
    if "data" not in d or "labels" not in d:
        raise DataError(f"CIFAR-10 file {str(path)!r} lacks 'data' or 'labels'")
    data = np.asarray(d["data"])
    labels = np.asarray(d["labels"], dtype=np.int64)
    if data.dtype != np.uint8 or data.ndim != 2 or data.shape[1] != 3072 or data.shape[0] != labels.shape[0]:
        raise DataError(f"CIFAR-10 file {str(path)!r} has data {data.shape} {data.dtype} and {labels.shape[0]} labels; "
                        "expected N x 3072 uint8 and N labels")
    if labels.size and (labels.min() < 0 or labels.max() > 9):
        raise DataError(f"CIFAR-10 file {str(path)!r} has labels outside 0..9")
    # rows are channel-major (1024 R, 1024 G, 1024 B): to N x 32 x 32 x 3
    return np.ascontiguousarray(data.reshape(-1, 3, 32, 32).transpose(0, 2, 3, 1)), labels


def _md5(path: Path) -> str:
    h = hashlib.md5()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def read_cifar10(root: str | os.PathLike | None, download: bool = False, verify: bool = False) -> ArrayDataset:
    """Read the CIFAR-10 python batches under ``root``; ``download`` fetches them (network needed)."""
    if root is None:
        raise DataError("cifar10 needs --data-root (the folder holding cifar-10-batches-py)")
    if download and not (Path(root) / FOLDER / TEST_FILE).exists():
        try:
            from torchvision.datasets import CIFAR10

            Path(root).mkdir(parents=True, exist_ok=True)
            CIFAR10(str(root), train=True, download=True)
        except Exception as e:
            raise DataError(f"could not download CIFAR-10 into {str(root)!r}: {e}") from None
    folder = find_folder(root)
    parts = [_read_batch(folder / name) for name in TRAIN_FILES]
    test_x, test_y = _read_batch(folder / TEST_FILE)
    meta = folder / META_FILE
    classes = CLASSES
    if meta.exists():
        try:
            with open(meta, "rb") as f:
                m = pickle.load(f, encoding="bytes")
            names = m.get(b"label_names", m.get("label_names"))
            classes = tuple(n.decode() if isinstance(n, bytes) else str(n) for n in names)
        except Exception as e:
            raise DataError(f"cannot read CIFAR-10 file {str(meta)!r} ({type(e).__name__})") from None
    else:
        raise DataError(f"missing CIFAR-10 file {str(meta)!r}")
    official = ""
    if verify:
        official = "official" if all(_md5(folder / n) == s for n, s in OFFICIAL_MD5.items()) else "not the official files"
    train_x = np.concatenate([p[0] for p in parts])
    train_y = np.concatenate([p[1] for p in parts])
    src = str(folder) + (f" ({official})" if official else "")
    return ArrayDataset("cifar10", train_x, train_y, test_x, test_y, classes, src)


def write_cifar10(root: str | os.PathLike, train_x: np.ndarray, train_y: np.ndarray, test_x: np.ndarray,
                  test_y: np.ndarray, classes: tuple[str, ...] = CLASSES) -> Path:
    """Write N x 32 x 32 x 3 uint8 arrays in the exact CIFAR-10 python format (5 train batches)."""
    folder = Path(root) / FOLDER
    folder.mkdir(parents=True, exist_ok=True)

    def dump(name: str, x: np.ndarray, y: np.ndarray, label: str) -> None:
        rows = np.ascontiguousarray(x.transpose(0, 3, 1, 2).reshape(len(x), 3072), dtype=np.uint8)
        d = {b"batch_label": label.encode(), b"labels": [int(v) for v in y], b"data": rows,
             b"filenames": [f"{name}_{i}.png".encode() for i in range(len(x))]}
        with open(folder / name, "wb") as f:
            pickle.dump(d, f, protocol=2)

    for i, (xs, ys) in enumerate(zip(np.array_split(train_x, 5), np.array_split(train_y, 5)), start=1):
        dump(f"data_batch_{i}", xs, ys, f"training batch {i} of 5")
    dump(TEST_FILE, test_x, test_y, "testing batch 1 of 1")
    with open(folder / META_FILE, "wb") as f:
        pickle.dump({b"num_cases_per_batch": len(train_x) // 5, b"label_names": [c.encode() for c in classes],
                     b"num_vis": 3072}, f, protocol=2)
    return folder
