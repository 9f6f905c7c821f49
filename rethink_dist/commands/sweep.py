"""rethink-dist sweep FILE: run a sweep file (the same as `python FILE`)."""

from __future__ import annotations

import argparse

NAME = "sweep"
HELP = "run a sweep file on Ray Tune (local Ray, or the cluster this node belongs to)"


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("file", help="a sweep file, e.g. sweeps/quick.py")
    from rethink_dist.sweep import add_arguments as sweep_arguments

    sweep_arguments(p)


def run(args: argparse.Namespace) -> int:
    from rethink_dist.sweep import run_from_args

    return run_from_args(args.file, args)
