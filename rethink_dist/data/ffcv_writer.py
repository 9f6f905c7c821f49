"""Writing and checking the FFCV .beton files of a dataset: ``train.beton``, ``test.beton``, ``meta.json``.

Each .beton holds three fields per sample: ``image``, ``label`` and ``index`` (the sample's
position in its split, the key of its corruption). Fixed-size datasets keep their stored
pixels exactly (``raw``): CIFAR-10's 32x32x3 images as FFCV RGB images, one-channel datasets
(digits, synthetic) as uint8 arrays. ImageNet images are resized so that their longer side is
at most ``max_resolution`` and stored as JPEG, raw, or either by size (``smart``).

``meta.json`` records what a loader must check and what a run logs: the dataset, the counts,
the classes, the image shape, the byte size of each file (a truncated or swapped file is caught
before FFCV reads it), the training set's per-channel mean and std (the ``gaussian``
corruption's parameters, computed with :func:`rethink_dist.corruption.channel_stats` from the
same uint8 pixels the memory loader uses) and a fingerprint of the data.

Every file is written under a temporary name and renamed on success; ``meta.json`` is removed
first and written last, so an interrupted ``prepare`` never leaves a folder that looks complete.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import sys
import time
from pathlib import Path
from typing import Any, Callable, Iterator

import numpy as np
import torch

from rethink_dist import corruption as C
from rethink_dist.files import raise_if_interrupted, write_json_atomic
from rethink_dist.data import DATASETS, DataError, dataset_info

FORMAT = "rethink-dist-beton/1"
META_FILE = "meta.json"
BETON_FILES = {"train": "train.beton", "test": "test.beton"}
FIELDS = ("image", "label", "index")
WRITE_MODES = ("raw", "jpg", "smart")
DEFAULT_IMAGENET_RESOLUTION = 512
SMART_THRESHOLD = 256 * 256 * 3  # smart: images larger than this many raw bytes are stored as JPEG
STATS_IMAGES = 10_000  # ImageNet: the gaussian stats come from this many evenly spaced training images


@contextlib.contextmanager
def keep_torch_threads(threads: int | None = None) -> Iterator[int]:
    """Restore torch's thread count after the block (FFCV sets it as a side effect)."""
    threads = threads or torch.get_num_threads()
    try:
        yield threads
    finally:
        if torch.get_num_threads() != threads:
            torch.set_num_threads(threads)


def import_ffcv() -> None:
    """Import ffcv (and our operations) without letting it drop torch to one thread."""
    with keep_torch_threads():
        import ffcv.loader  # noqa: F401
        import ffcv.writer  # noqa: F401

        from rethink_dist.data import ffcv_ops  # noqa: F401


# ---------------------------------------------------------------------------------------------
# Writing
# ---------------------------------------------------------------------------------------------
class _ArraySamples:
    """Sample ``i`` -> (image, label, i) from in-memory arrays (for FFCV's writer)."""

    def __init__(self, x: np.ndarray, y: np.ndarray):
        self.x, self.y = x, y

    def __len__(self) -> int:
        return len(self.y)

    def __getitem__(self, i: int):
        return self.x[i], int(self.y[i]), int(i)


def _check_options(name: str, write_mode: str | None, jpeg_quality: int, max_resolution: int | None) -> str:
    info = dataset_info(name)
    if write_mode is not None and write_mode not in WRITE_MODES:
        raise DataError(f"--write-mode {write_mode!r} is not valid; valid: {', '.join(WRITE_MODES)}")
    if not 1 <= jpeg_quality <= 100:
        raise DataError(f"--jpeg-quality {jpeg_quality} is not valid; valid: 1..100")
    if max_resolution is not None and max_resolution < 1:
        raise DataError(f"--max-resolution {max_resolution} is not valid; valid: an integer >= 1")
    if info.image_shape is None:  # variable size: ImageNet
        return write_mode or "smart"
    if max_resolution is not None:
        raise DataError(f"--max-resolution applies to imagenet only; {name} keeps its "
                        f"{info.image_shape[0]}x{info.image_shape[1]} images")
    if info.image_shape[2] != 3 and (write_mode or "raw") != "raw":
        raise DataError(f"--write-mode {write_mode!r} is not valid for {name} (1-channel images are stored raw); valid: raw")
    return write_mode or "raw"


def _rgb_field(write_mode: str, jpeg_quality: int, max_resolution: int | None):
    from ffcv.fields import RGBImageField

    return RGBImageField(write_mode=write_mode, max_resolution=max_resolution, jpeg_quality=jpeg_quality,
                         smart_threshold=SMART_THRESHOLD if write_mode == "smart" else None)


def _write_beton(path: Path, samples: Any, image_field: Any, workers: int, label: str) -> None:
    """Write ``samples`` to ``path`` through a temporary file (renamed by the caller)."""
    from ffcv.fields import IntField
    from ffcv.writer import MIN_PAGE_SIZE, DatasetWriter

    print(f"writing {label}: {len(samples)} samples", file=sys.stderr, flush=True)
    # Each worker fills whole pages: small pages keep small datasets small.
    page_size = MIN_PAGE_SIZE if len(samples) < 100_000 else 4 * MIN_PAGE_SIZE
    writer = DatasetWriter(str(path), {"image": image_field, "label": IntField(), "index": IntField()},
                           page_size=page_size, num_workers=workers)
    try:
        writer.from_indexed_dataset(samples, chunksize=max(1, min(100, len(samples) // (4 * workers) or 1)))
    except BaseException:
        _end_writer_processes()
        raise


def _end_writer_processes() -> None:
    """End FFCV's writer processes (this process's multiprocessing children) when the write stops
    early (an error, a stop signal): left running, they go on writing the samples they hold and
    open the file for appending, which makes it again after the caller has removed it."""
    import multiprocessing

    from rethink_dist import stopping

    with stopping.deferred():
        children = multiprocessing.active_children()
        for p in children:
            p.terminate()
        for p in children:
            p.join(10)


def prepare(name: str, data_root: str | None, out: str | os.PathLike, *, max_resolution: int | None = None,
            jpeg_quality: int = 90, write_mode: str | None = None, workers: int | None = None) -> dict[str, Any]:
    """Write ``train.beton``, ``test.beton`` and ``meta.json`` for dataset ``name`` into ``out``."""
    if name not in DATASETS:
        raise DataError(f"unknown dataset {name!r}; valid: {', '.join(sorted(DATASETS))}")
    import_ffcv()
    write_mode = _check_options(name, write_mode, jpeg_quality, max_resolution)
    info = dataset_info(name)
    out = Path(out)
    if out.exists() and not out.is_dir():
        raise DataError(f"--out {str(out)!r} exists and is not a folder")
    workers = workers or max(1, min(os.cpu_count() or 1, 8))

    if info.image_shape is None:
        source = _imagenet_source(data_root, max_resolution or DEFAULT_IMAGENET_RESOLUTION, write_mode, jpeg_quality)
        max_resolution = max_resolution or DEFAULT_IMAGENET_RESOLUTION
    else:
        source = _array_source(name, data_root)

    out.mkdir(parents=True, exist_ok=True)
    # Everything is written beside the old files first: a prepare that fails or is interrupted
    # leaves a folder that held a complete prepare exactly as it was.
    tag = f".tmp{os.getpid()}"
    tmp = {split: out / f".{fname}{tag}" for split, fname in BETON_FILES.items()}
    err_dir = out / f".errors{tag}"
    try:
        err_dir.mkdir(exist_ok=True)
        for split, fname in BETON_FILES.items():
            samples, field = source["samples"](split, err_dir)
            field = field or _rgb_field(write_mode, jpeg_quality, max_resolution)
            _write_beton(tmp[split], samples, field, workers, f"{name} {fname}")
        errors = sorted(err_dir.iterdir())
        if errors:
            raise DataError(f"{len(errors)} image(s) could not be read, e.g. {errors[0].read_text()}")
        mean, std, n_stats = source["stats"]()
        meta = {
            "format": FORMAT,
            "dataset": name,
            "num_classes": len(source["classes"]),
            "classes": list(source["classes"]),
            "image_shape": list(info.image_shape) if info.image_shape else None,
            "image_field": "rgb" if (info.image_shape is None or info.image_shape[2] == 3) else "ndarray",
            "write_mode": write_mode,
            "jpeg_quality": jpeg_quality if write_mode != "raw" else None,
            "max_resolution": max_resolution,
            "channel_mean": [float(v) for v in mean],
            "channel_std": [float(v) for v in std],
            "stats_images": n_stats,
            "fingerprint": source["fingerprint"],
            "source": source["source"],
            "splits": {split: {"file": fname, "num_samples": source["count"](split),
                               "bytes": tmp[split].stat().st_size} for split, fname in BETON_FILES.items()},
            "created": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
        }
        # The swap: without meta.json the folder is incomplete, so it goes first and comes back last.
        raise_if_interrupted()
        (out / META_FILE).unlink(missing_ok=True)
        for split, fname in BETON_FILES.items():
            os.replace(tmp[split], out / fname)
        write_json_atomic(out / META_FILE, meta)
        return meta
    finally:
        for p in tmp.values():
            p.unlink(missing_ok=True)
        shutil.rmtree(err_dir, ignore_errors=True)


def _array_source(name: str, data_root: str | None) -> dict[str, Callable | Any]:
    from ffcv.fields import NDArrayField

    from rethink_dist.data import load

    ds = load(name, data_root)
    arrays = {"train": (ds.train_x, ds.train_y), "test": (ds.test_x, ds.test_y)}
    h, w, c = ds.train_x.shape[1:]

    def samples(split: str, _err: Path):
        x, y = arrays[split]
        field = None if c == 3 else NDArrayField(np.dtype("uint8"), (h, w, c))
        return _ArraySamples(x, y), field

    def stats():
        mean, std = C.channel_stats(ds.train_x)
        return mean, std, len(ds.train_y)

    return {"samples": samples, "stats": stats, "classes": ds.classes, "fingerprint": ds.fingerprint,
            "source": ds.source, "count": lambda split: len(arrays[split][1])}


def _imagenet_source(data_root: str | None, max_resolution: int, write_mode: str, jpeg_quality: int) -> dict:
    from rethink_dist.data import imagenet

    if not data_root:
        raise DataError("imagenet needs --data-root (the folder with train/<wnid>/*.JPEG and val/<wnid>/*.JPEG)")
    splits, classes = imagenet.scan(data_root)
    params = {"max_resolution": max_resolution, "write_mode": write_mode, "jpeg_quality": jpeg_quality}

    def samples(split: str, err_dir: Path):
        return imagenet.ImageFolderSamples(splits[split], err_dir), None

    def stats():
        """Per-channel mean/std of evenly spaced training images, resized as they are stored."""
        from ffcv.fields.rgb_image import resizer
        from tqdm import tqdm

        train = splits["train"]
        pick = np.unique(np.linspace(0, len(train.paths) - 1, min(STATS_IMAGES, len(train.paths))).astype(np.int64))
        total = np.zeros(3)
        total_sq = np.zeros(3)
        count = 0
        for i in tqdm(pick, desc="channel stats", file=sys.stderr):
            image = resizer(imagenet.read_rgb(train.root / train.paths[i]), max_resolution)
            m, s = C.channel_stats(image[None])
            n = image.shape[0] * image.shape[1]
            total += n * m
            total_sq += n * (s * s + m * m)
            count += n
        mean = total / count
        return mean, np.sqrt(np.maximum(total_sq / count - mean * mean, 0.0)), len(pick)

    return {"samples": samples, "stats": stats, "classes": classes, "fingerprint": imagenet.fingerprint(splits, params),
            "source": str(Path(data_root).resolve()), "count": lambda split: len(splits[split].paths)}


# ---------------------------------------------------------------------------------------------
# Checking
# ---------------------------------------------------------------------------------------------
def _prepare_hint(name: str, beton_dir: Path) -> str:
    root = "" if not dataset_info(name).needs_root else " --data-root DIR"
    return f"write them with: rethink-dist prepare {name}{root} --out {beton_dir}"


def read_meta(beton_dir: str | os.PathLike, name: str) -> dict[str, Any]:
    """The checked ``meta.json`` of ``beton_dir`` for dataset ``name``; DataError (one line) otherwise.

    Checks, before FFCV opens anything: both files exist, they belong to ``name``, and each has the
    byte size and the sample count and fields that ``prepare`` wrote.
    """
    d = Path(beton_dir)
    if not d.is_dir():
        raise DataError(f"beton dir {str(d)!r} does not exist; {_prepare_hint(name, d)}")
    for fname in BETON_FILES.values():
        if not (d / fname).is_file():
            raise DataError(f"missing {fname} in {str(d)!r}; {_prepare_hint(name, d)}")
    meta_path = d / META_FILE
    if not meta_path.is_file():
        raise DataError(f"missing {META_FILE} in {str(d)!r} (an interrupted or foreign prepare); {_prepare_hint(name, d)}")
    try:
        meta = json.loads(meta_path.read_text())
        fmt, dataset, splits = meta["format"], meta["dataset"], meta["splits"]
    except (ValueError, KeyError, TypeError) as e:
        raise DataError(f"{str(meta_path)!r} is not a valid {META_FILE} ({type(e).__name__}); {_prepare_hint(name, d)}") from None
    if fmt != FORMAT:
        raise DataError(f"{str(meta_path)!r} has format {fmt!r}, expected {FORMAT!r}; {_prepare_hint(name, d)}")
    if dataset != name:
        raise DataError(f"{str(d)!r} holds .beton files of dataset {dataset!r}, not {name!r}; "
                        f"point --beton-dir at {name}'s files or {_prepare_hint(name, d)}")
    for split, fname in BETON_FILES.items():
        path = d / fname
        size, expected = path.stat().st_size, int(splits[split]["bytes"])
        if size != expected:
            what = "truncated" if size < expected else "not the file prepare wrote"
            raise DataError(f"{str(path)!r} is {size} bytes, expected {expected} ({what}); {_prepare_hint(name, d)}")
        _check_header(path, int(splits[split]["num_samples"]), name, d)
    return meta


def _check_header(path: Path, num_samples: int, name: str, d: Path) -> None:
    import_ffcv()
    from ffcv.reader import Reader

    try:
        reader = Reader(str(path))
        n = int(reader.num_samples)
        fields = tuple(reader.field_names)
        alloc_ok = reader.alloc_table.shape[0] > 0 or n == 0
    except Exception as e:  # noqa: BLE001 - any reader failure means an unusable file
        raise DataError(f"cannot read {str(path)!r} as an FFCV .beton ({type(e).__name__}: "
                        f"{str(e).splitlines()[0] if str(e) else ''}); {_prepare_hint(name, d)}") from None
    if n != num_samples or fields != FIELDS or not alloc_ok:
        raise DataError(f"{str(path)!r} holds {n} samples with fields {list(fields)}, expected {num_samples} with "
                        f"{list(FIELDS)}; {_prepare_hint(name, d)}")
