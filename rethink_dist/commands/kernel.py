"""rethink-dist kernel: the minimum-norm kernel interpolant (paper section 5) on a dataset."""

from __future__ import annotations

import argparse
import json
import sys

NAME = "kernel"
HELP = "solve K alpha = Y exactly (minimum-norm interpolant, paper section 5); train/test error and norm"
EXIT_NOT_INTERPOLATED = 3  # the solve ran but did not interpolate (ridge 0): the JSON says how far it got

FLAGS = ("dataset", "data_root", "kernel", "gamma", "features", "num_filters", "filter_size", "pool", "ridge",
         "max_train", "corruption", "level", "corruption_seed", "also_levels", "dtype", "device", "memory_gb", "block_size", "seed", "tol", "max_iter")


def _levels(text: str) -> list[float]:
    try:
        return [float(v) for v in text.split(",") if v.strip()]
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a comma-separated list of levels in [0, 1]") from None


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--dataset", help="digits (default) | fashion_mnist | cifar10 | synthetic")
    p.add_argument("--data-root", help="folder with the dataset's files (cifar10: holds cifar-10-batches-py)")
    p.add_argument("--kernel", help="linear | rbf (default: exp(-gamma |x - y|^2)) | laplacian (exp(-gamma |x - y|))")
    p.add_argument("--gamma", type=float, help="kernel width (default rbf 1 / (D * Var(features)), laplacian its square root)")
    p.add_argument("--features", help="raw (pixels / 255, default) | random_conv")
    p.add_argument("--num-filters", type=int, help="random_conv: number of random filters (default 256)")
    p.add_argument("--filter-size", type=int, help="random_conv: filter side (default 5)")
    p.add_argument("--pool", type=int, help="random_conv: average-pool grid side (default 2)")
    p.add_argument("--ridge", type=float, help="l2 regularization lambda (default 0: interpolate)")
    p.add_argument("--max-train", type=int, help="use only the first N training samples")
    p.add_argument("--corruption", help="none | labels | shuffled_pixels | random_pixels | gaussian")
    p.add_argument("--level", type=float, help="label corruption probability p in [0, 1]")
    p.add_argument("--corruption-seed", type=int, help="seed of the corruption (default 0)")
    p.add_argument("--also-levels", type=_levels, metavar="P[,P...]",
                   help="more label-corruption levels solved with the same factorization of K, e.g. 1.0 "
                        "(random labels too, at the cost of one solve); results under also_levels")
    p.add_argument("--dtype", help="float32 | float64 (default)")
    p.add_argument("--device", help="auto (default) | cpu | cuda")
    p.add_argument("--memory-gb", type=float, help="memory budget for K, features and blocks (default 80%% of free)")
    p.add_argument("--block-size", type=int, help="Gram rows per block (default: from the budget)")
    p.add_argument("--seed", type=int, help="seed of the random filters (default 0)")
    p.add_argument("--tol", type=float, help="largest |(K + ridge I) alpha - Y| entry the solver may leave (default 1e-3)")
    p.add_argument("--max-iter", type=int, help="most conjugate-gradient iterations (default 200)")
    p.add_argument("--json", metavar="OUT", help="write the result here (it is printed in any case)")


def run(args: argparse.Namespace) -> int:
    from rethink_dist.files import check_writable, write_json_atomic

    if args.json:
        check_writable(args.json, "--json")
    from rethink_dist.theory import run_kernel

    result = run_kernel({k: getattr(args, k) for k in FLAGS})
    if args.json:
        write_json_atomic(args.json, result)
    if not result["ridge"] and not result["interpolated"]:
        print(f"rethink-dist: not interpolated: {result['solver']} left max |K alpha - Y| = "
              f"{result['max_fit_residual']:.3g} (train error {100 * result['train_error']:.2f}%): "
              f"{result['solver_detail']}{'; the result is in ' + args.json if args.json else ''}", file=sys.stderr)
        return EXIT_NOT_INTERPOLATED
    print(json.dumps(result, indent=2))
    return 0
