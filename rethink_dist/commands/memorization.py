"""rethink-dist memorization: memorization, influence and consistency scores from a sweep of subset trials."""

from __future__ import annotations

import argparse
import json
import math

NAME = "memorization"
HELP = ("estimate every training sample's memorization score, its consistency score and the largest "
        "train-to-test influences from a sweep of subset trials (sweeps/memorization.py); writes "
        "SWEEP_FOLDER/memorization/scores.parquet and influence.parquet and prints a summary per setting")


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("folder", metavar="SWEEP_FOLDER", help="the sweep's folder (<storage>/<sweep>, with sweep.json and samples/)")
    p.add_argument("--out", metavar="DIR", help="where to write the Parquet files (default: SWEEP_FOLDER/memorization)")
    p.add_argument("--top", type=int, default=1000, metavar="N",
                   help="how many of the largest train-to-test influences to keep per setting (default 1000)")
    p.add_argument("--json", action="store_true", help="print the summary as JSON")


def _fmt(v) -> str:
    if isinstance(v, float):
        return "-" if math.isnan(v) else f"{v:.3f}"
    return str(v)


def run(args: argparse.Namespace) -> int:
    from rethink_dist.errors import UsageError
    from rethink_dist.files import check_writable

    if args.top < 1:
        raise UsageError(f"memorization: --top must be >= 1, got {args.top}")
    if args.out:
        check_writable(args.out, "memorization: --out", folder=True)
    from rethink_dist.memorization import MemorizationError, estimate_folder

    try:
        result = estimate_folder(args.folder, args.out, top=args.top)
    except MemorizationError as e:
        raise UsageError(f"memorization: {e}") from None
    if args.json:
        print(json.dumps(result, indent=1))
        return 0
    cols = ("setting", "trials", "median_mem_se", "min_trials_in", "min_trials_out", "auc_corrupted", "corrupted_in_top")
    print("  ".join(cols))
    for row in result["settings"]:
        print("  ".join(_fmt(row.get(c, "-")) for c in cols) + (f"  ({row['note']})" if row.get("note") else ""))
    print(f"scores and influences: {result['out']}")
    return 0
