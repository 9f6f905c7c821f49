"""What the sweep's driver costs per report as the sweep grows: N trials that train nothing.

Each size runs, in a fresh process, a real sweep (``run_sweep``: Ray Tune, the driver's Parquet
table and MLflow runs, checkpoints, reconciliation) of N trials of the ``synthetic`` kind
(rethink_dist/sweep/synthetic.py: made-up epochs of the real record keys, one checkpoint per
report, no torch) of ``--epochs`` epochs each, and prints, as JSON, per size:

- ``cpu_s_per_report``: the driver process's CPU seconds (user + system) from Tune's first step to
  the sweep's end (its last writes included, Ray's start-up not) over the reports Tune handed it, of
  which ``mlflow_cpu_s_per_report`` in the writer's MLflow thread (the MLflow client's work), and ``writer_s_per_report``: the time inside the results writer's per-report callback;
  ``reconcile_s_per_trial``: the writer's work at a trial's end (its rows and run from its checkpoint);
- ``mlflow``: the MLflow client calls the writer made (count by method), their seconds, the values
  they carried (metrics, params, tags), values per second, and their share of the time the writer's
  MLflow thread was busy (``lane_busy_s``; that thread, not Tune's loop, waits for MLflow), and the
  most calls that waited in it at once (``lane_longest``) and the most epochs they carried
  (``lane_heaviest``: the lane's bound, MlflowLane.LIMIT, is in those), and the reports whose live
  epochs were left to their trial's end because the lane was full (``lane_dropped``);
- ``reports_per_s``: reports over the wall time from Tune's first step to the sweep's end;
- ``max_step_s``: the longest turn of Tune's event loop (one event handled, callbacks included:
  a long turn holds back every other trial's report), and the 99th percentile;
- ``flush``: the Parquet table's flushes (count, mean, max seconds);
- ``tune_snapshot``: Tune's experiment-state snapshots (count, mean, max seconds), and
  ``tune_state_kb_per_trial``: the last snapshot's size over the trials;
- ``peak_rss_gb``: the driver's peak resident memory;
- ``rows``, ``epochs_once``: the table's rows, and whether every (trial, epoch) is there exactly once.

``--epochs-per-report`` takes several values (a set of runs each; runs of more than
``--max-reports`` reports are skipped). ``--baseline`` also runs the sizes up to ``--baseline-max``
with the table class of the commit given by ``--baseline-commit`` (one Parquet file rewritten whole
at every flush), swapped into today's driver, side by side. The MLflow store is a SQLite file in the
sweep's storage; ``--server-sizes`` also runs those sizes against a real ``mlflow server`` on
127.0.0.1 (its own SQLite file).

    .venv/bin/python bench/driver.py --sizes 100,1000,10000 --epochs 100 --epochs-per-report 100,10 \\
        --baseline --server-sizes 1000 --json OUT.json
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import resource
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path[:0] = [str(REPO), str(REPO / "bench")]

from machine import cpu_name  # noqa: E402

from rethink_dist.files import write_json_atomic  # noqa: E402

BASELINE_COMMIT = "c52df0a"  # the last commit whose trials.parquet was one file rewritten whole


def _baseline_table(commit: str):
    """The ResultsTable of ``commit`` (from git), with the few methods today's driver calls on it."""
    import types

    source = subprocess.run(["git", "show", f"{commit}:rethink_dist/parquet.py"], cwd=REPO, check=True,
                            capture_output=True, text=True).stdout
    module = types.ModuleType("baseline_parquet")
    exec(compile(source, f"{commit}:rethink_dist/parquet.py", "exec"), module.__dict__)

    class Baseline(module.ResultsTable):
        def __init__(self, path, schema=None, min_interval_s=2.0):
            super().__init__(path, min_interval_s)

        def finished(self, tid):
            rows = self.trial_rows(tid)
            return bool(rows) and bool(rows[-1].get("finished"))

        def has_rows(self, tid):
            return any(t == tid for t, _ in self.rows)

        def last_rows(self):
            return {t: r for (t, _), r in sorted(self.rows.items())}

    return Baseline


def child(n: int, epochs: int, per_report: int, max_concurrent: int | None, mlflow: str, baseline: str | None,
          root: Path, trial_cpus: float = 0.05) -> dict:
    os.environ.setdefault("MLFLOW_DISABLE_TELEMETRY", "true")
    from ray.tune.execution.tune_controller import TuneController

    from rethink_dist import parquet
    from rethink_dist.sweep import driver, results
    from rethink_dist.sweep.plan import Sweep, spec_from_item

    if baseline:
        driver.ResultsTable = _baseline_table(baseline)
    table_cls = driver.ResultsTable
    steps, flushes, snapshots, writer_s = [], [], [], []

    def timed(cls, name, into):
        inner = getattr(cls, name)

        def wrapper(self, *a, **kw):
            t = time.perf_counter()
            try:
                return inner(self, *a, **kw)
            finally:
                into.append(time.perf_counter() - t)

        setattr(cls, name, wrapper)

    # MLflow's client calls the writer makes: how many, how long, how many values they carried
    from mlflow.tracking import MlflowClient

    mlflow_calls: dict[str, list[float]] = {}
    values = [0]
    for name in ("log_batch", "create_run", "set_terminated", "update_run", "search_runs", "get_run",
                 "get_metric_history"):
        timed(MlflowClient, name, mlflow_calls.setdefault(name, []))
    inner_batch = MlflowClient.log_batch

    def counting(self, run_id, metrics=(), params=(), tags=(), *a, **kw):
        values[0] += len(metrics) + len(params) + len(tags)
        return inner_batch(self, run_id, metrics, params, tags, *a, **kw)

    MlflowClient.log_batch = counting
    timed(TuneController, "step", steps)
    started: list = []  # the driver's CPU times at Tune's first step: Ray's and the sweep's start-up left out
    inner_step = TuneController.step

    def first_step(self):
        if not started:
            started.append(resource.getrusage(resource.RUSAGE_SELF))
            started.append(time.perf_counter())
        return inner_step(self)

    TuneController.step = first_step
    timed(TuneController, "save_to_dir", snapshots)
    timed(table_cls, "flush", flushes)
    timed(results.ResultsWriter, "on_trial_result", writer_s)
    reconcile_s: list[float] = []
    timed(results.ResultsWriter, "reconcile", reconcile_s)
    lanes: list = []
    inner_lane = results.MlflowLane.__init__

    def lane_init(self, *a, **kw):
        inner_lane(self, *a, **kw)
        lanes.append(self)

    results.MlflowLane.__init__ = lane_init

    trials = [spec_from_item({"kind": "synthetic", "params": {"epochs": epochs, "epochs_per_report": per_report,
                                                               "seed": i, "cpus": trial_cpus}}, i, "bench") for i in range(n)]
    sweep = Sweep(f"driver{n}", "bench/driver.py", trials)
    tracking = f"sqlite:///{root}/mlflow.db" if mlflow == "sqlite" else mlflow
    out = driver.run_sweep(sweep, storage=str(root / "store"), tracking_uri=tracking,
                           max_concurrent=max_concurrent or None, verbose=0)
    cpu0, t0 = started
    wall = time.perf_counter() - t0
    cpu1 = resource.getrusage(resource.RUSAGE_SELF)
    cpu = (cpu1.ru_utime - cpu0.ru_utime) + (cpu1.ru_stime - cpu0.ru_stime)
    keys = parquet.read_table(out["parquet"], columns=["trial_id", "epoch"]).to_pylist()
    states = sorted((root / "store" / sweep.name / "tune").glob("experiment_state-*.json"))
    state_kb = states[-1].stat().st_size / 1024 / n if states else None
    once = len(keys) == len({(k["trial_id"], k["epoch"]) for k in keys}) == n * epochs
    reports = len(writer_s)
    steps.sort()

    def stats(xs):
        return {"count": len(xs), "mean_s": round(statistics.fmean(xs), 5) if xs else None,
                "max_s": round(max(xs), 4) if xs else None}

    return {"trials": n, "epochs": epochs, "epochs_per_report": per_report, "table": "baseline" if baseline else "parts",
            "mlflow": mlflow, "errors": out["errors"], "unfinished": out["unfinished"], "rows": len(keys),
            "epochs_once": once, "reports": reports, "wall_s": round(wall, 1),
            "reports_per_s": round(reports / wall, 1), "cpu_s": round(cpu, 1),
            "cpu_s_per_report": round(cpu / max(reports, 1), 5),
            "mlflow_cpu_s_per_report": round(sum(lane.cpu_s for lane in lanes) / max(reports, 1), 5),
            "writer_s_per_report": round(sum(writer_s) / max(reports, 1), 5),
            "max_step_s": round(steps[-1], 3) if steps else None,
            "p99_step_s": round(steps[int(0.99 * (len(steps) - 1))], 4) if steps else None,
            "flush": stats(flushes), "tune_snapshot": stats(snapshots),
            "mlflow_calls": {"calls": {k: len(v) for k, v in mlflow_calls.items() if v},
                       "seconds": round(sum(sum(v) for v in mlflow_calls.values()), 2), "values": values[0],
                       "values_per_s": round(values[0] / max(sum(sum(v) for v in mlflow_calls.values()), 1e-9)),
                       "lane_busy_s": round(sum(lane.busy_s for lane in lanes), 2),
                       "lane_longest": max((lane.longest for lane in lanes), default=0),
                       "lane_heaviest": max((getattr(lane, "heaviest", 0) for lane in lanes), default=0),
                       "lane_dropped": sum(getattr(lane, "dropped", 0) for lane in lanes),
                       "share_of_lane": round(sum(sum(v) for v in mlflow_calls.values())
                                              / max(sum(lane.busy_s for lane in lanes), 1e-9), 2)},
            "reconcile_s_per_trial": round(sum(reconcile_s) / max(n, 1), 5),
            "tune_state_kb_per_trial": round(state_kb, 1) if state_kb else None,
            "peak_rss_gb": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20, 3)}


def _server(root: Path):
    """A real ``mlflow server`` on 127.0.0.1 (its own SQLite file); returns (process, uri)."""
    import urllib.request

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    mlflow = str(Path(sys.executable).with_name("mlflow"))
    proc = subprocess.Popen([mlflow, "server", "--host", "127.0.0.1", "--port", str(port), "--workers", "1",
                             "--backend-store-uri", f"sqlite:///{root}/server.db",
                             "--default-artifact-root", str(root / "artifacts")],
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    uri = f"http://127.0.0.1:{port}"
    for _ in range(240):
        try:
            urllib.request.urlopen(f"{uri}/health", timeout=1)
            return proc, uri
        except OSError:
            time.sleep(0.5)
    proc.kill()
    raise SystemExit("mlflow server did not start in 120 s")


def _ints(text: str, flag: str) -> list[int]:
    try:
        values = [int(x) for x in text.split(",") if x.strip()]
    except ValueError:
        values = []
    if not values or min(values) < 1:
        print(f"bench/driver.py: {flag} {text!r} must be positive integers separated by commas (e.g. 100,1000)",
              file=sys.stderr)
        raise SystemExit(2)
    return values


def _plan(args) -> list[dict]:
    """The runs: every size x epochs-per-report with at most --max-reports reports; the baseline table
    beside the new one up to --baseline-max trials; an MLflow server at --server-sizes."""
    sizes, per_reports = _ints(args.sizes, "--sizes"), _ints(args.epochs_per_report, "--epochs-per-report")
    server_sizes = _ints(args.server_sizes, "--server-sizes") if args.server_sizes else []
    if args.epochs < 1:
        print(f"bench/driver.py: --epochs must be >= 1, got {args.epochs}", file=sys.stderr)
        raise SystemExit(2)
    if args.max_concurrent < 0 or not args.trial_cpus > 0:
        print(f"bench/driver.py: --max-concurrent must be >= 0 (0: no limit) and --trial-cpus > 0; got "
              f"{args.max_concurrent} and {args.trial_cpus}", file=sys.stderr)
        raise SystemExit(2)
    plan = []
    for per in per_reports:
        for n in sizes:
            if n * -(-args.epochs // per) > args.max_reports:
                print(f"bench/driver.py: skipping {n} trials x {args.epochs} epochs at {per} per report: more than "
                      f"--max-reports {args.max_reports}", file=sys.stderr)
                continue
            for mlflow in ["sqlite"] + (["server"] if n in server_sizes and per == per_reports[0] else []):
                tables = [None, args.baseline_commit] if args.baseline and n <= args.baseline_max and mlflow == "sqlite" \
                    else [None]
                plan += [{"n": n, "per_report": per, "mlflow": mlflow, "baseline": b} for b in tables]
    return plan


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--sizes", default="100,1000,10000", help="numbers of trials, comma-separated")
    ap.add_argument("--epochs", type=int, default=100)
    ap.add_argument("--epochs-per-report", default="100",
                    help="epochs in one report (each with a checkpoint), comma-separated: each is a set of runs")
    ap.add_argument("--max-reports", type=int, default=20000, help="skip the runs that would make more reports")
    ap.add_argument("--max-concurrent", type=int, default=8, help="Tune's max_concurrent_trials (0: none; then the "
                    "CPUs bound the trials at once: --trial-cpus)")
    ap.add_argument("--trial-cpus", type=float, default=0.05, help="the CPUs each trial asks of Ray")
    ap.add_argument("--server-sizes", default="", help="sizes also run against a real mlflow server on 127.0.0.1")
    ap.add_argument("--baseline", action="store_true", help="also run the baseline table, side by side")
    ap.add_argument("--baseline-max", type=int, default=1000, help="the largest size the baseline runs")
    ap.add_argument("--baseline-commit", default=BASELINE_COMMIT)
    ap.add_argument("--json", help="also write the JSON here")
    ap.add_argument("--child", help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.child:
        spec = json.loads(args.child)  # the result goes to a file: Ray's workers print to this stdout
        (Path(spec["root"]) / "run.json").write_text(json.dumps(child(**{**spec, "root": Path(spec["root"])})))
        return
    runs: list[dict] = []

    def document() -> dict:
        return {"bench": "driver", "command": "bench/driver.py " + " ".join(sys.argv[1:]),
                "date": time.strftime("%Y-%m-%d"),
                "machine": {"cpu": cpu_name(), "cores": os.cpu_count(), "python": platform.python_version(),
                            "load_avg_1m_at_end": os.getloadavg()[0]}, "runs": runs}

    for item in _plan(args):
        with tempfile.TemporaryDirectory(prefix="rethink-bench-driver-") as d:
            server, mlflow = None, item["mlflow"]
            if mlflow == "server":
                server, mlflow = _server(Path(d))
            try:
                spec = {"n": item["n"], "epochs": args.epochs, "per_report": item["per_report"],
                        "max_concurrent": args.max_concurrent, "mlflow": mlflow, "baseline": item["baseline"], "root": d,
                        "trial_cpus": args.trial_cpus}
                p = subprocess.run([sys.executable, __file__, "--child", json.dumps(spec)], capture_output=True,
                                   text=True)
            finally:
                if server is not None:
                    server.terminate()
                    server.wait(30)
            if p.returncode != 0 or not (Path(d) / "run.json").is_file():
                raise SystemExit(f"{item} failed ({p.returncode}):\n{p.stderr[-4000:]}")
            run = json.loads((Path(d) / "run.json").read_text())
            run["mlflow"], run["max_concurrent"], run["trial_cpus"] = item["mlflow"], args.max_concurrent, args.trial_cpus
            runs.append(run)
            print(json.dumps(run), file=sys.stderr, flush=True)
            if args.json:  # after every run: a long bench stopped part-way keeps what it measured
                write_json_atomic(args.json, document(), indent=1)
    print(json.dumps(document(), indent=1))


if __name__ == "__main__":
    main()
