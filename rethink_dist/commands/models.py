"""rethink-dist models: parameter counts of every registered architecture."""

from __future__ import annotations

import argparse
import json

NAME = "models"
HELP = "print a JSON object mapping each model name to its parameter count"


def _shape(text: str) -> tuple[int, int, int]:
    try:
        c, h, w = (int(v) for v in text.split(","))
        if min(c, h, w) < 1:
            raise ValueError
    except ValueError:
        raise argparse.ArgumentTypeError(f"invalid input shape {text!r}; expected C,H,W with positive integers, e.g. 3,28,28")
    return c, h, w


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--input-shape", type=_shape, default=(3, 28, 28), metavar="C,H,W",
                   help="input shape (default 3,28,28: the paper's CIFAR-10 crops)")
    p.add_argument("--num-classes", type=int, default=10, help="number of classes (default 10)")
    p.add_argument("--no-batch-norm", action="store_true", help="count inception_small without BatchNorm")


def run(args: argparse.Namespace) -> int:
    from rethink_dist.errors import UsageError
    from rethink_dist.models import MODELS, count_params, create

    if args.num_classes < 2:
        raise UsageError(f"--num-classes must be >= 2, got {args.num_classes}")
    import torch

    counts = {}
    with torch.device("meta"):  # shapes only: no memory, no initialisation cost
        for name, caps in sorted(MODELS.items()):
            kw = {"batch_norm": False} if args.no_batch_norm and caps.batch_norm_switch else {}
            counts[name] = count_params(create(name, args.input_shape, args.num_classes, **kw))
    print(json.dumps(counts, indent=2))
    return 0
