"""rethink-dist sweep FILE: run a sweep file (the same as ``python FILE``, which calls :func:`main`)."""

from __future__ import annotations

import argparse
import math
import sys
from pathlib import Path
from typing import Any

from rethink_dist import stopping
from rethink_dist.errors import SweepError, UserError, WriteFailed
from rethink_dist.files import check_writable
from rethink_dist.tracking import check_reachable, default_tracking_uri, ui_lines
from rethink_dist.metrics import fmt
from rethink_dist.sweep.address import explicit_address, probe_ray_address
from rethink_dist.sweep.driver import DEFAULT_STORAGE, MAX_FAILURES, run_sweep, storage_paths
from rethink_dist.sweep.plan import load_sweep
from rethink_dist.sweep.worker import REPORT_SECONDS

NAME = "sweep"
HELP = "run a sweep file on Ray Tune (local Ray, or the cluster this node belongs to)"


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("file", help="a sweep file, e.g. sweeps/quick.py")
    add_sweep_arguments(p)


def run(args: argparse.Namespace) -> int:
    return run_from_args(args.file, args)


def add_sweep_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--data-root", help="folder with the raw dataset files (CIFAR-10 batches, ImageNet folders)")
    p.add_argument("--storage", default=DEFAULT_STORAGE,
                   help="folder or URI (s3://...) for Tune checkpoints and results (default ./results)")
    p.add_argument("--results-dir", help="local folder for sweep.json and trials.parquet when --storage is remote")
    p.add_argument("--tracking-uri", help="MLflow tracking URI (default sqlite:///<storage>/mlflow.db)")
    p.add_argument("--resume", action="store_true", help="continue an interrupted sweep: only unfinished trials run")
    p.add_argument("--smoke", action="store_true", help="a few tiny trials of this sweep (about a minute)")
    p.add_argument("--max-concurrent", type=int, help="at most this many trials at once")
    p.add_argument("--max-failures", type=int, default=MAX_FAILURES,
                   help=f"retries of a trial whose worker or node died (default {MAX_FAILURES}; -1 unlimited, "
                        "for long runs on spot nodes)")
    p.add_argument("--cpus-per-trial", type=float, help="override every network trial's CPUs")
    p.add_argument("--gpus-per-trial", type=float,
                   help="override every network trial's GPUs (fractions share a GPU: 0.25 = four trials per GPU)")
    p.add_argument("--report-seconds", type=float, default=REPORT_SECONDS,
                   help=f"a trial reports to Tune (with a checkpoint) at most this often, several short epochs "
                        f"per report (default {REPORT_SECONDS:g}; 0: every epoch)")
    p.add_argument("--ray-address", help="Ray cluster address; 'local' starts a new local Ray "
                                         "(default: $RAY_ADDRESS, else this node's cluster, else local)")
    p.add_argument("--num-cpus", type=int, help="CPUs of a local Ray (default: all)")
    p.add_argument("--dry-run", action="store_true", help="check the sweep and list its trials; run nothing")


THEORY_COLUMNS = {"expressivity": ("n", "d", "params", "max_abs_error", "min_eigenvalue"),
                  "kernel": ("n_train", "train_error", "test_error", "norm")}  # of records.THEORY_KEYS


SUMMARY_LINES = 200  # a larger sweep's summary ends with a line pointing to its table


def print_summary(rows: list[dict[str, Any]], stream=sys.stdout) -> None:
    """The final table: accuracies for network trials, the measured quantities for theory trials."""
    if not rows:
        print("no results", file=stream)
        return
    more = len(rows) - SUMMARY_LINES
    rows = rows[:SUMMARY_LINES]
    width = max(len(r["run_name"]) for r in rows)
    nets = [r for r in rows if r.get("kind", "network") not in THEORY_COLUMNS]
    if nets:
        print(f"{'trial':<{width}}  epochs  train%  test%  steps_to_fit", file=stream)
        for r in nets:
            stf = r.get("steps_to_fit")
            stf = "-" if stf is None or stf != stf else int(stf)
            print(f"{r['run_name']:<{width}}  {r.get('epoch', '-'):>6}  {fmt(r.get('train_acc')):>6}  "
                  f"{fmt(r.get('test_acc')):>5}  {stf:>12}", file=stream)
    for r in rows:
        cols = THEORY_COLUMNS.get(r.get("kind", "network"))
        if cols:
            values = "  ".join(f"{c}={fmt(r.get(c), pct=False)}" for c in cols)
            print(f"{r['run_name']:<{width}}  {values}", file=stream)
    if more > 0:
        print(f"... and {more} more trials (every trial's rows: the sweep's trials.parquet)", file=stream)


def run_from_args(path: str, args: argparse.Namespace) -> int:
    if args.max_concurrent is not None and args.max_concurrent < 1:
        raise SweepError(f"--max-concurrent must be >= 1, got {args.max_concurrent}")
    if args.max_failures < -1:
        raise SweepError(f"--max-failures must be >= -1 (-1: unlimited), got {args.max_failures}")
    if not (math.isfinite(args.report_seconds) and args.report_seconds >= 0):
        raise SweepError(f"--report-seconds must be a finite number >= 0 (0: every epoch), got {args.report_seconds}")
    if "://" not in args.storage:
        check_writable(args.storage, "--storage", folder=True)
    if args.results_dir:
        check_writable(args.results_dir, "--results-dir", folder=True)
    if args.tracking_uri or "://" not in args.storage:
        check_reachable(args.tracking_uri or default_tracking_uri(args.storage))
    given = None if args.dry_run else explicit_address(args.ray_address)
    if given:  # in seconds, before the sweep file loads its libraries (run_sweep checks it too)
        probe_ray_address(*given)
    overrides = {k: v for k, v in (("cpus", args.cpus_per_trial), ("gpus", args.gpus_per_trial)) if v is not None}
    sweep = load_sweep(path, data_root=args.data_root, smoke=args.smoke, resources=overrides)
    if args.dry_run:
        for s in sweep.trials:
            print(f"{s.trial_id}  {s.kind:<12} {s.run_name}")
        print(f"{len(sweep.trials)} trials in sweep {sweep.name!r}")
        return 0
    out = run_sweep_stopping(sweep, storage=args.storage, tracking_uri=args.tracking_uri, resume=args.resume,
                    max_concurrent=args.max_concurrent, ray_address=args.ray_address, num_cpus=args.num_cpus,
                    results_dir=args.results_dir, max_failures=args.max_failures,
                    report_seconds=args.report_seconds)
    print(sweep_outcome(sweep.name, out))
    print_summary(out["summary"])
    print(f"\nParquet table: {out['parquet']}")
    print(f"MLflow store:  {out['tracking_uri']}  (experiment {out['experiment']!r})")
    print("\n".join(ui_lines(out["tracking_uri"], out["experiment_id"])))
    return exit_code(out)


def run_sweep_stopping(sweep, **kwargs) -> dict[str, Any]:
    """run_sweep; a signal that stops it at once (a second one) says how to continue."""
    try:
        return run_sweep(sweep, **kwargs)
    except KeyboardInterrupt:
        _, folder = storage_paths(kwargs.get("storage") or DEFAULT_STORAGE, sweep.name)
        if folder is None and kwargs.get("results_dir"):
            folder = Path(kwargs["results_dir"]).resolve() / sweep.name
        if folder is not None and not (folder / "sweep.json").exists():
            raise KeyboardInterrupt(f"sweep {sweep.name!r} {stopping.how()} before it began: nothing was "
                                    "written") from None
        raise KeyboardInterrupt(f"sweep {sweep.name!r} {stopping.how()}: what was recorded is kept; continue "
                                "with --resume") from None


def sweep_outcome(name: str, out: dict[str, Any]) -> str:
    """The line after a sweep: how many trials have results, failed, or were left unfinished."""
    line = f"\nsweep {name!r}: {len(out['summary'])}/{out['planned']} trials with results, {out['errors']} failed"
    if out["unfinished"] and out.get("storage_full"):
        line += f", {out['unfinished']} unfinished (the storage refused writes: free some space or make it writable, then continue with --resume)"
    elif out["unfinished"]:
        line += f", {out['unfinished']} unfinished ({stopping.how()}: continue with --resume)"
    elif stopping.received():
        line += f" ({stopping.how()} after every trial had finished)"
    return line


def exit_code(out: dict[str, Any]) -> int:
    """1 when a trial failed or the storage filled up; 128 + the signal's number when a signal stopped
    the sweep (130 Ctrl-C, 143 SIGTERM, 129 SIGHUP; 130 for trials left unfinished otherwise); else 0."""
    if out["errors"] or out.get("storage_full"):
        return 1
    return stopping.exit_code() if out["unfinished"] or stopping.received() else 0


def main(path: str, argv: list[str] | None = None) -> int:
    """Entry point of a sweep file run as a script."""
    prog = Path(path).name
    parser = argparse.ArgumentParser(prog=prog, description=f"Run the sweep {prog}.")
    add_sweep_arguments(parser)
    restore = stopping.install()
    try:
        args = parser.parse_args(argv)
        rc = run_from_args(path, args)
        if argv is None:  # the process ends next: keep the handlers through its exit handlers
            stopping.exiting(rc)
            restore = lambda: None  # noqa: E731
        return rc
    except UserError as e:
        print(f"{prog}: error: {e}", file=sys.stderr)
        return 2
    except WriteFailed as e:
        print(f"{prog}: error: {e.strerror}", file=sys.stderr)
        return 1
    except KeyboardInterrupt as e:
        return stopping.stopped(e, prog, exit_process=argv is None)
    finally:
        restore()

