"""ImageNet (ILSVRC-2012) in the standard folder layout: ``train/<wnid>/*.JPEG``, ``val/<wnid>/*.JPEG``.

Classes are the sorted ``wnid`` folder names of ``train``; a sample's index is its position in
the sorted file list of its split (the order the .beton files are written in), so the
corruption, keyed by sample index, is fixed by the files alone.
"""

from __future__ import annotations

import hashlib
import os
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from rethink_dist.errors import DataError

SPLITS = {"train": "train", "test": "val"}
EXTENSIONS = (".jpeg", ".jpg", ".png")


@dataclass(frozen=True)
class ImageFolderSplit:
    """The files of one split: ``paths[i]`` has label ``labels[i]``."""

    root: Path
    paths: tuple[str, ...]  # relative to root
    labels: np.ndarray  # int64


def _class_dirs(folder: Path) -> list[str]:
    return sorted(d.name for d in folder.iterdir() if d.is_dir() and not d.name.startswith("."))


def _files(folder: Path, classes: list[str]) -> tuple[tuple[str, ...], np.ndarray]:
    paths: list[str] = []
    labels: list[int] = []
    for label, wnid in enumerate(classes):
        d = folder / wnid
        if not d.is_dir():
            continue
        names = sorted(n for n in os.listdir(d) if n.lower().endswith(EXTENSIONS) and not n.startswith("."))
        paths += [f"{folder.name}/{wnid}/{n}" for n in names]
        labels += [label] * len(names)
    return tuple(paths), np.asarray(labels, dtype=np.int64)


def scan(root: str | os.PathLike) -> tuple[dict[str, ImageFolderSplit], tuple[str, ...]]:
    """The train and test (``val``) splits under ``root`` and the class names (wnids)."""
    root = Path(root)
    if not root.is_dir():
        raise DataError(f"imagenet data root {str(root)!r} does not exist or is not a folder")
    for sub in SPLITS.values():
        if not (root / sub).is_dir():
            raise DataError(f"imagenet data root {str(root)!r} has no {sub}/ folder (expected train/<wnid>/*.JPEG, val/<wnid>/*.JPEG)")
    classes = _class_dirs(root / "train")
    if not classes:
        raise DataError(f"no class folders under {str(root / 'train')!r} (expected train/<wnid>/*.JPEG)")
    extra = sorted(set(_class_dirs(root / "val")) - set(classes))
    if extra:
        raise DataError(f"val/ has class folders that train/ lacks, e.g. {extra[0]!r}; both splits need the same wnids")
    splits = {}
    for split, sub in SPLITS.items():
        paths, labels = _files(root / sub, classes)
        if not paths:
            raise DataError(f"no images (*.JPEG) under {str(root / sub)!r}")
        splits[split] = ImageFolderSplit(root, paths, labels)
    return splits, tuple(classes)


def fingerprint(splits: dict[str, ImageFolderSplit], params: dict) -> str:
    """sha256 (16 hex digits) of the file lists, their sizes, labels and the writing parameters."""
    h = hashlib.sha256(repr(sorted(params.items())).encode())
    for split in sorted(splits):
        s = splits[split]
        for path, label in zip(s.paths, s.labels):
            h.update(f"{split}\0{path}\0{os.path.getsize(s.root / path)}\0{int(label)}\n".encode())
    return h.hexdigest()[:16]


def read_rgb(path: Path) -> np.ndarray:
    """One image file as an H x W x 3 uint8 array."""
    from PIL import Image

    with Image.open(path) as im:
        return np.asarray(im.convert("RGB"), dtype=np.uint8)


class ImageFolderSamples:
    """An indexable view for FFCV's writer: sample ``i`` -> (H x W x 3 uint8 image, label, i).

    A file that cannot be decoded is recorded in ``error_dir`` (the writer runs in worker
    processes) and replaced by a 1 x 1 black image, so the caller can refuse the result with a
    clear message instead of a half-written file.
    """

    def __init__(self, split: ImageFolderSplit, error_dir: Path):
        self.split = split
        self.error_dir = error_dir

    def __len__(self) -> int:
        return len(self.split.paths)

    def __getitem__(self, i: int):
        path = self.split.root / self.split.paths[i]
        try:
            image = read_rgb(path)
        except Exception as e:  # noqa: BLE001 - any decoding failure is reported by name
            (self.error_dir / f"{i}.txt").write_text(f"{path}: {type(e).__name__}: {e}".splitlines()[0])
            image = np.zeros((1, 1, 3), dtype=np.uint8)
        return image, int(self.split.labels[i]), int(i)
