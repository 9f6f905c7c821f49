"""rethink-dist expressivity: the section-4 network that fits n samples exactly, built and checked."""

from __future__ import annotations

import argparse
import json
import sys

NAME = "expressivity"
HELP = "build the 2n+d-weight ReLU network that fits n samples (paper section 4) and report its fit"


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--n", type=int, help="samples (required without --dataset; with one: all its training samples)")
    p.add_argument("--d", type=int, help="dimension (required without --dataset; with one: its image size)")
    p.add_argument("--seed", type=int, help="seed of the samples, the targets and the direction a (default 0)")
    p.add_argument("--dtype", help="float32 | float64 (default float64)")
    p.add_argument("--targets", help="gaussian (default) | labels (2 classes: +-1 targets; more: one-hot)")
    p.add_argument("--num-classes", type=int, help="classes for --targets labels without --dataset (default 2)")
    p.add_argument("--dataset", help="fit the first n training images / 255 of this dataset (e.g. digits)")
    p.add_argument("--data-root", help="folder with the dataset's files (cifar10)")
    p.add_argument("--a", dest="a", help="direction a: auto (default) | spaced (n <= d) | random")
    p.add_argument("--json", metavar="OUT", help="write the result here (it is printed in any case)")


def run(args: argparse.Namespace) -> int:
    from rethink_dist.files import check_writable, write_json_atomic

    if args.json:
        check_writable(args.json, "--json")
    from rethink_dist.theory import run_expressivity

    params = {k: getattr(args, k) for k in ("n", "d", "seed", "dtype", "targets", "num_classes", "dataset", "data_root", "a")}
    result = run_expressivity(params)
    if args.json:
        write_json_atomic(args.json, result)
    print(json.dumps(result, indent=2))
    return 0
