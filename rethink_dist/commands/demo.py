"""rethink-dist demo: the main job on any machine: sweeps/quick.py on the embedded digits, then its report."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from rethink_dist.commands import report
from rethink_dist.commands.sweep import exit_code, print_summary, run_sweep_stopping, sweep_outcome
from rethink_dist.errors import UsageError
from rethink_dist.files import check_writable
from rethink_dist.sweep.driver import DEFAULT_STORAGE, can_restore
from rethink_dist.sweep.plan import load_sweep
from rethink_dist.tracking import ui_lines

NAME = "demo"
HELP = "run sweeps/quick.py (digits, no network, no GPU needed), print its table and write its report"
QUICK = Path(__file__).resolve().parents[2] / "sweeps" / "quick.py"


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--storage", default="results", help="results folder (default ./results)")
    p.add_argument("--smoke", action="store_true", help="a few tiny trials instead of the whole sweep")
    p.add_argument("--num-cpus", type=int, help="CPUs for the local Ray (default: all)")


def run(args: argparse.Namespace) -> int:
    if not QUICK.is_file():
        raise UsageError(f"demo: {str(QUICK)!r} is missing: run the demo from a rethink-dist checkout")
    check_writable(args.storage or DEFAULT_STORAGE, "--storage", folder=True)
    sweep = load_sweep(QUICK, smoke=args.smoke)
    storage = str(Path(args.storage or DEFAULT_STORAGE).resolve())
    resume = can_restore(f"{storage}/{sweep.name}/tune")
    print(f"demo: sweep {sweep.name!r} ({len(sweep.trials)} trials) into {storage}"
          + (" (continuing the earlier run)" if resume else ""), file=sys.stderr, flush=True)
    out = run_sweep_stopping(sweep, storage=storage, resume=resume, ray_address="local", num_cpus=args.num_cpus)
    print(sweep_outcome(sweep.name, out))
    print_summary(out["summary"])

    print(f"\nParquet table: {out['parquet']}")
    print(f"MLflow store:  {out['tracking_uri']}  (experiment {out['experiment']!r})")
    print("\n".join(ui_lines(out["tracking_uri"], out["experiment_id"], mlflow=".venv/bin/mlflow")))
    print("Report:        ", end="", flush=True)
    rc = report.run(argparse.Namespace(results=out["results_dir"], out=None, tracking_uri=None, experiment=None,
                                       no_mlflow=False))
    return exit_code(out) or rc
