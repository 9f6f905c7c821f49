"""rethink-dist report: the paper's tables and figures from a sweep, next to the paper's numbers."""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path

NAME = "report"
HELP = ("write the paper's tables and figures for a sweep (its <storage>/<sweep> folder, or --tracking-uri and "
        "--experiment) as HTML, markdown and PNGs; log them to the sweep's MLflow parent run; print the HTML's path")


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("results", nargs="?", metavar="RESULTS",
                   help="the sweep's folder (<storage>/<sweep>, with trials.parquet and sweep.json) or a trials.parquet")
    p.add_argument("--out", metavar="DIR", help="report folder (default: RESULTS/report, or ./<experiment>-report)")
    p.add_argument("--tracking-uri", metavar="URI",
                   help="MLflow tracking URI: read the sweep from it (with --experiment and no RESULTS), and log "
                        "the report to its parent run (default: the URI recorded in RESULTS/sweep.json)")
    p.add_argument("--experiment", metavar="NAME", help="MLflow experiment of the sweep (default: the sweep's name)")
    p.add_argument("--no-mlflow", action="store_true", help="do not log the report as MLflow artifacts")


def run(args: argparse.Namespace) -> int:
    from rethink_dist.errors import UsageError
    from rethink_dist.files import check_writable

    os.environ.setdefault("MLFLOW_DISABLE_TELEMETRY", "true")
    if args.results is None and not (args.tracking_uri and args.experiment):
        raise UsageError("report: give RESULTS (a sweep folder such as results/quick) or both --tracking-uri and --experiment")
    if args.out:
        check_writable(args.out, "report: --out", folder=True)

    from rethink_dist.report import ReportError, build_report, load_folder, load_mlflow

    try:
        if args.results is not None:
            results = load_folder(args.results)
            if args.tracking_uri:
                results.tracking_uri = args.tracking_uri
            if args.experiment or args.tracking_uri:
                results.experiment = args.experiment or results.sweep
            default_out = Path(results.source) / "report"
        else:
            results = load_mlflow(args.tracking_uri, args.experiment)
            default_out = Path.cwd() / f"{args.experiment}-report"
        check_writable(args.out or default_out, "report: the report folder", folder=True)
        report = build_report(results, args.out or default_out)
    except (ReportError, FileExistsError) as e:
        raise UsageError(f"report: {e}") from None

    rc = 0
    if not args.no_mlflow and results.tracking_uri and results.experiment:
        rc = _log_to_mlflow(results.tracking_uri, results.experiment, report.out)
    print(report.html)
    return rc


def _log_to_mlflow(uri: str, experiment: str, folder: Path) -> int:
    """Log the report folder under ``report/`` of the sweep's parent run; a note if there is none."""
    from rethink_dist.report import log_to_parent_run

    try:
        parent = log_to_parent_run(uri, experiment, folder)
    except Exception as e:  # the report is written; MLflow being unreachable should not hide it
        msg = str(e).splitlines()[0] if str(e) else type(e).__name__
        print(f"rethink-dist: warning: could not log the report to MLflow at {uri}: {msg}", file=sys.stderr)
        return 1
    if parent is None:
        print(f"rethink-dist: note: no sweep parent run in MLflow experiment {experiment!r} at {uri}; "
              "the report was not logged there", file=sys.stderr)
    else:
        print(f"rethink-dist: logged the report as artifacts 'report/' of MLflow run {parent}", file=sys.stderr)
    return 0
