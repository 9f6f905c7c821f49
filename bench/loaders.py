"""Loader throughput on this machine: images/s of model-ready batches, all loaders on the same data.

    .venv/bin/python bench/loaders.py --json bench/loaders.json          # about 2-3 minutes on 2 cores

Data: ``--n`` random 32x32x3 uint8 images written in the CIFAR-10 python format, then prepared as
.beton files (raw pixels). Every loader delivers what the training loop consumes: shuffled batches
of ``--batch-size`` whitened float32 28x28 crops with their labels, for one epoch. Each number is
the median of ``--repeats`` epochs after a warm-up epoch (which also compiles FFCV's pipeline).

- ``ffcv``: the FFCV loader without corruption.
- ``ffcv_corrupted``: the FFCV loader with the corruption operations, for the costliest kind;
  ``ffcv_corrupted_by_kind`` has each kind (labels at p=1, and the three pixel corruptions).
- ``memory``: the in-memory loader (corruption applied once; batches are gathers from tensors).
- ``torch_dataloader``: what most users would write: a torch Dataset over the arrays with
  torchvision per-sample transforms (ToTensor, CenterCrop, per-image standardisation) and a
  ``DataLoader`` with ``--workers`` worker processes.
- ``ffcv_pipeline`` / ``ffcv_pipeline_corrupted_by_kind``: FFCV's own pipeline alone (decode +
  corruption, no crop or whitening), which isolates the operations' cost.

The JSON printed (and written to ``--json``) maps each name to images/s; ``corruption_cost`` is
1 - corrupted/uncorrupted for the end-to-end loader and for the pipeline alone.

``imagenet_jpeg`` is the case where FFCV matters: ``--jpeg-n`` JPEG files (default 2,000, 10
classes, sides of 256-384 pixels) in ImageNet's folder layout, prepared as JPEG .beton files at
256 pixels, read with the random-resized crop to 224 and flips of the ImageNet trials; the same
numbers (``ffcv``, ``ffcv_pipeline``, each corruption, ``corruption_cost``) for that path, where
decoding a JPEG costs far more than a raw 32x32 image and the corruptions' share is smaller.
``--jpeg-n 0`` skips it.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

KINDS = [("labels", 1.0), ("shuffled_pixels", 0.0), ("random_pixels", 0.0), ("gaussian", 0.0)]


def _rate(run_epoch, repeats: int) -> float:
    run_epoch()  # warm-up (compilation, page cache)
    rates = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        n = run_epoch()
        rates.append(n / (time.perf_counter() - t0))
    return statistics.median(rates)


def _consume(batches) -> int:
    n = 0
    for x, y in batches:
        n += y.shape[0]
        x.sum()  # touch the data so nothing stays lazy
    return n


class _PerSampleDataset(torch.utils.data.Dataset):
    """A torchvision-style dataset: one uint8 H x W x C image at a time through per-sample transforms."""

    def __init__(self, images: np.ndarray, labels: np.ndarray, crop: int):
        import torchvision.transforms as T

        self.images, self.labels = images, labels
        self.transform = T.Compose([T.ToTensor(), T.CenterCrop(crop), T.Lambda(_standardize)])

    def __len__(self) -> int:
        return len(self.labels)

    def __getitem__(self, i: int):
        return self.transform(self.images[i]), int(self.labels[i])


def _standardize(x: torch.Tensor) -> torch.Tensor:
    return (x - x.mean()) / x.std(unbiased=False).clamp_min(1.0 / math.sqrt(x.numel()))


class _Parser(argparse.ArgumentParser):
    def error(self, message: str) -> None:  # one line, exit status 2
        self.exit(2, f"{self.prog}: error: {message}\n")


def main(argv: list[str] | None = None) -> int:
    sys.path.insert(0, str(Path(__file__).resolve().parent))
    from machine import cpu_name

    p = _Parser(prog="bench/loaders.py", description=__doc__.splitlines()[0])
    p.add_argument("--json", metavar="OUT", help="also write the JSON here")
    p.add_argument("--kinds", default=",".join(k for k, _ in KINDS),
                   help=f"the corruptions measured, comma-separated (default: all of {', '.join(k for k, _ in KINDS)})")
    p.add_argument("--n", type=int, default=20_000, help="training images (default 20000)")
    p.add_argument("--batch-size", type=int, default=256)
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--threads", type=int, default=os.cpu_count() or 1, help="torch / FFCV threads (default: cores)")
    p.add_argument("--workers", type=int, default=2, help="DataLoader worker processes (default 2)")
    p.add_argument("--jpeg-n", type=int, default=2_000,
                   help="JPEG images of the ImageNet-layout case (default 2000; 0 skips it)")
    args = p.parse_args(argv)
    for name in ("n", "batch_size", "repeats", "threads"):
        if getattr(args, name) < 1:
            p.error(f"--{name.replace('_', '-')} must be >= 1, got {getattr(args, name)}")
    if args.jpeg_n < 0:
        p.error(f"--jpeg-n must be >= 0, got {args.jpeg_n}")
    levels = dict(KINDS)
    kinds = [k.strip() for k in args.kinds.split(",") if k.strip()]
    unknown = [k for k in kinds if k not in levels]
    if unknown or not kinds:
        p.error(f"--kinds {args.kinds!r} is not valid; valid: a comma-separated list of {', '.join(levels)}")
    args.kinds = [(k, levels[k]) for k in kinds]
    if args.json and not Path(args.json).resolve().parent.is_dir():
        p.error(f"--json {args.json!r}: folder {str(Path(args.json).resolve().parent)!r} does not exist")
    torch.set_num_threads(args.threads)

    from rethink_dist.config import TrialConfig
    from rethink_dist.data import load
    from rethink_dist.data.cifar import write_cifar10
    from rethink_dist.data.ffcv_loader import build_ffcv_loader
    from rethink_dist.data.ffcv_writer import prepare
    from rethink_dist.data.memory import MemoryLoader, corrupt_dataset

    results: dict = {"machine": {"cpu": cpu_name(), "cores": os.cpu_count(), "torch_threads": args.threads,
                                 "torch": torch.__version__, "date": time.strftime("%Y-%m-%d")},
                     "n_train": args.n, "batch_size": args.batch_size, "image": "32x32x3 -> 28x28 crop"}
    with tempfile.TemporaryDirectory(prefix="bench-loaders-") as tmp:
        rng = np.random.default_rng(0)
        x = rng.integers(0, 256, (args.n, 32, 32, 3), dtype=np.uint8)
        y = rng.integers(0, 10, args.n)
        write_cifar10(Path(tmp) / "raw", x, y, x[:1000], y[:1000])
        prepare("cifar10", str(Path(tmp) / "raw"), Path(tmp) / "beton", workers=args.threads)
        ds = load("cifar10", str(Path(tmp) / "raw"))
        device = torch.device("cpu")

        def cfg(kind: str = "none", level: float = 0.0) -> TrialConfig:
            return TrialConfig.from_dict({
                "data": {"name": "cifar10", "loader": "ffcv", "beton_dir": str(Path(tmp) / "beton")},
                "corruption": {"kind": kind, "level": level, "seed": 0},
                "optim": {"batch_size": args.batch_size}, "device": "cpu"})

        def ffcv_rates(c: TrialConfig) -> tuple[float, float]:
            loader, _ = build_ffcv_loader(c, device)
            epoch = iter(range(1 << 30))
            full = _rate(lambda: _consume(loader.train_batches(args.batch_size, torch.Generator().manual_seed(next(epoch)))),
                         args.repeats)
            # FFCV's own pipeline: decode + corruption operations only
            raw = _rate(lambda: sum(b[1].shape[0] for b in loader.pipeline_batches()), args.repeats)
            assert torch.get_num_threads() == args.threads
            return full, raw

        results["ffcv"], results["ffcv_pipeline"] = ffcv_rates(cfg())
        by_kind, by_kind_raw = {}, {}
        for kind, level in args.kinds:
            by_kind[kind], by_kind_raw[kind] = ffcv_rates(cfg(kind, level))
            print(f"  ffcv {kind}: {by_kind[kind]:,.0f} images/s", file=sys.stderr)
        worst = min(by_kind, key=by_kind.get)
        results["ffcv_corrupted"] = by_kind[worst]
        results["ffcv_corrupted_kind"] = worst
        results["ffcv_corrupted_by_kind"] = by_kind
        results["ffcv_pipeline_corrupted_by_kind"] = by_kind_raw

        arrays = corrupt_dataset(ds, cfg().corruption)
        memory = MemoryLoader(arrays, 28, False, 0, device)
        epoch = iter(range(1 << 30))
        results["memory"] = _rate(
            lambda: _consume(memory.train_batches(args.batch_size, torch.Generator().manual_seed(next(epoch)))), args.repeats)

        dl = torch.utils.data.DataLoader(_PerSampleDataset(ds.train_x, ds.train_y, 28), batch_size=args.batch_size,
                                         shuffle=True, num_workers=args.workers, persistent_workers=args.workers > 0)
        results["torch_dataloader"] = _rate(lambda: _consume(dl), args.repeats)

    results["corruption_cost"] = {
        "end_to_end": {k: round(1 - v / results["ffcv"], 3) for k, v in by_kind.items()},
        "pipeline_only": {k: round(1 - v / results["ffcv_pipeline"], 3) for k, v in by_kind_raw.items()},
    }
    if args.jpeg_n:
        results["imagenet_jpeg"] = imagenet_jpeg(args)
    text = json.dumps(results, indent=2)
    print(text)
    if args.json:
        Path(args.json).write_text(text + "\n")
    return 0


def _jpeg_folder(root: Path, n: int, classes: int = 10) -> None:
    """train/<wnid>/*.JPEG (and a small val/) of smooth random images of assorted sizes, 256-384 px."""
    from PIL import Image

    rng = np.random.default_rng(1)
    for split, count in (("train", n), ("val", max(classes, n // 10))):
        for i in range(count):
            wnid = f"n{i % classes:08d}"
            (root / split / wnid).mkdir(parents=True, exist_ok=True)
            h, w = (int(v) for v in rng.integers(256, 385, 2))
            base = rng.integers(0, 256, (h // 16 + 1, w // 16 + 1, 3)).astype(np.uint8)
            img = Image.fromarray(base).resize((w, h), Image.BILINEAR)
            img.save(root / split / wnid / f"{wnid}_{i}.JPEG", quality=90)


def imagenet_jpeg(args) -> dict:
    """The loader numbers on JPEG .beton files in ImageNet's layout (random-resized crop to 224)."""
    from rethink_dist.config import TrialConfig
    from rethink_dist.data.ffcv_loader import build_ffcv_loader
    from rethink_dist.data.ffcv_writer import prepare

    out: dict = {"n_train": args.jpeg_n, "image": "JPEG 256-384 px, stored at 256 px -> random-resized crop 224"}
    with tempfile.TemporaryDirectory(prefix="bench-loaders-jpeg-") as tmp:
        t0 = time.perf_counter()
        _jpeg_folder(Path(tmp) / "raw", args.jpeg_n)
        prepare("imagenet", str(Path(tmp) / "raw"), Path(tmp) / "beton", max_resolution=256, write_mode="jpg",
                workers=args.threads)
        out["prepare_seconds"] = round(time.perf_counter() - t0, 1)

        def rates(kind: str, level: float) -> tuple[float, float]:
            cfg = TrialConfig.from_dict({
                "data": {"name": "imagenet", "loader": "ffcv", "beton_dir": str(Path(tmp) / "beton"),
                         "image_size": 224},
                "model": {"name": "inception_v3"}, "reg": {"augment": True},
                "corruption": {"kind": kind, "level": level, "seed": 0},
                "optim": {"batch_size": args.batch_size}, "device": "cpu"})
            loader, _ = build_ffcv_loader(cfg, torch.device("cpu"))
            epoch = iter(range(1 << 30))
            full = _rate(lambda: _consume(loader.train_batches(args.batch_size,
                                                               torch.Generator().manual_seed(next(epoch)))),
                         args.repeats)
            raw = _rate(lambda: sum(b[1].shape[0] for b in loader.pipeline_batches()), args.repeats)
            return full, raw

        out["ffcv"], out["ffcv_pipeline"] = rates("none", 0.0)
        by_kind, by_kind_raw = {}, {}
        for kind, level in args.kinds:
            by_kind[kind], by_kind_raw[kind] = rates(kind, level)
            print(f"  ffcv imagenet jpeg {kind}: {by_kind[kind]:,.0f} images/s", file=sys.stderr)
    out["ffcv_corrupted_by_kind"] = by_kind
    out["ffcv_pipeline_corrupted_by_kind"] = by_kind_raw
    out["corruption_cost"] = {
        "end_to_end": {k: round(1 - v / out["ffcv"], 3) for k, v in by_kind.items()},
        "pipeline_only": {k: round(1 - v / out["ffcv_pipeline"], 3) for k, v in by_kind_raw.items()},
    }
    return out


if __name__ == "__main__":
    sys.exit(main())
