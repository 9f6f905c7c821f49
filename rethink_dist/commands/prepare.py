"""rethink-dist prepare: write a dataset's FFCV files (train.beton, test.beton, meta.json)."""

from __future__ import annotations

import argparse
import sys

NAME = "prepare"
HELP = "write a dataset as FFCV .beton files (train.beton, test.beton, meta.json) for --loader ffcv"
WRITE_MODES = ("raw", "jpg", "smart")  # rethink_dist.data.ffcv_writer.WRITE_MODES (kept import-free)


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("dataset", metavar="DATASET", help="cifar10 | digits | fashion_mnist | imagenet | synthetic")
    p.add_argument("--data-root", help="folder with the raw files (cifar10: holds cifar-10-batches-py; "
                                       "imagenet: train/<wnid>/*.JPEG and val/<wnid>/*.JPEG)")
    p.add_argument("--out", required=True, metavar="DIR", help="folder to write train.beton, test.beton, meta.json")
    p.add_argument("--max-resolution", type=int, metavar="N",
                   help="imagenet: resize so the longer side is at most N pixels (default 512)")
    p.add_argument("--jpeg-quality", type=int, default=90, metavar="Q", help="JPEG quality 1..100 (default 90)")
    p.add_argument("--write-mode", choices=WRITE_MODES,
                   help="raw pixels, jpg, or smart (JPEG for images over 256x256x3 bytes); "
                        "default: raw for cifar10/digits/fashion_mnist/synthetic (exact pixels), smart for imagenet")
    p.add_argument("--workers", type=int, metavar="N", help="writer processes (default: the CPU count, at most 8)")


def run(args: argparse.Namespace) -> int:
    from rethink_dist.data import DataError
    from rethink_dist.data.ffcv_writer import prepare
    from rethink_dist.files import check_writable

    if args.workers is not None and args.workers < 1:
        raise DataError(f"--workers {args.workers} is not valid; valid: an integer >= 1")
    check_writable(args.out, "--out", folder=True)
    meta = prepare(args.dataset, args.data_root, args.out, max_resolution=args.max_resolution,
                   jpeg_quality=args.jpeg_quality, write_mode=args.write_mode, workers=args.workers)
    s = meta["splits"]
    print(f"wrote {args.out}: {s['train']['num_samples']} train / {s['test']['num_samples']} test samples of "
          f"{meta['dataset']} ({meta['num_classes']} classes, write mode {meta['write_mode']}, "
          f"fingerprint {meta['fingerprint']})", file=sys.stderr)
    return 0
