"""What a spot node's loss costs on a real autoscaler: the elastic test's scenario, measured.

Runs tests/laptop_cluster.py's spot scenario (cluster/laptop.yaml: Ray's local autoscaler, real
raylets; three digits trials, one per autoscaled node; one node SIGKILLed without notice, one
drained with reason PREEMPTION and a deadline, then killed) and prints, as JSON:

- seconds from the driver's start to the first autoscaled node joining the cluster;
- per lost trial: seconds from the fault's notice by the driver to the node its retry ran on
  joining (a pending trial waiting for its node), and from the node's kill (or drain) to the
  trial's first epoch on the new node;
- the finished epochs each fault made the trial train again (faults.jsonl), with and without notice.

    .venv/bin/python bench/elastic.py --json bench/results/cpu-elastic-DATE.json [--repeats 3]
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path[:0] = [str(REPO / "tests"), str(REPO / "bench")]

from laptop_cluster import spot_scenario  # noqa: E402  (the test's own scenario)
from machine import cpu_name  # noqa: E402

from rethink_dist.sweep.results import read_faults  # noqa: E402


def measure(root: Path, epochs: int, report_seconds: float, notice_s: float) -> dict:
    out = spot_scenario(root, f"sqlite:///{root}/mlflow.db", epochs=epochs, report_seconds=report_seconds,
                        notice_s=notice_s)
    if out["driver_rc"] != 0:
        raise SystemExit(f"the sweep failed ({out['driver_rc']}): {out['driver_log'][-3000:]}")
    import pandas as pd

    df = pd.read_parquet(out["folder"] / "trials.parquet")
    faults = {f["trial_id"]: f for f in read_faults(out["folder"])}
    seen = out["nodes_seen"]
    result = {"first_node_joined_s": round(min(v["first"] for v in seen.values()) - out["t_submit"], 2)}
    for key, t_fault_made in (("lost", out["t_kill"]), ("preempted", out["t_drain"])):
        tid = out[f"{key}_trial"]
        rows = df[(df["trial_id"] == tid) & (df["node_id"] != out[f"{key}_node"])].sort_values("epoch")
        new_node = str(rows["node_id"].iloc[0])
        fault = faults[tid]
        result[key] = {
            "retrained_epochs": fault["retrained_epochs"], "checkpoint_epoch": fault["checkpoint_epoch"],
            "reached_epoch": fault["reached_epoch"],
            "fault_seen_s": round(fault["time"] - t_fault_made, 2),
            "pending_to_node_joined_s": round(max(0.0, seen[new_node]["first"] - fault["time"]), 2),
            "fault_to_resumed_epoch_s": round(float(rows["ended_at"].iloc[0]) - t_fault_made, 2),
        }
    result["idle_nodes_ended_s"] = round(out["t_idle_ended"] - out["t_driver_end"], 2)
    result["sweep_s"] = round(out["t_driver_end"] - out["t_submit"], 2)
    return result


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--json", metavar="OUT", help="also write the result here")
    p.add_argument("--repeats", type=int, default=1, help="scenario runs (each on a fresh cluster)")
    p.add_argument("--epochs", type=int, default=400)
    p.add_argument("--report-seconds", type=float, default=3.0,
                   help="the sweep's --report-seconds: the most training a loss without notice can cost")
    p.add_argument("--notice-seconds", type=float, default=8.0, help="the drain's deadline")
    args = p.parse_args()
    if args.repeats < 1 or args.epochs < 20:
        p.error(f"--repeats must be >= 1 and --epochs >= 20, got {args.repeats} and {args.epochs}")
    runs = []
    for i in range(args.repeats):
        with tempfile.TemporaryDirectory(prefix="rethink-elastic-") as d:
            runs.append(measure(Path(d), args.epochs, args.report_seconds, args.notice_seconds))
        print(f"run {i + 1}/{args.repeats}: {json.dumps(runs[-1])}", file=sys.stderr, flush=True)

    def median(path: tuple[str, ...]):
        values = []
        for r in runs:
            v = r
            for k in path:
                v = v[k]
            values.append(v)
        return statistics.median(values)

    keys = [("first_node_joined_s",), ("idle_nodes_ended_s",)] + [
        (kind, k) for kind in ("lost", "preempted")
        for k in ("retrained_epochs", "fault_seen_s", "pending_to_node_joined_s", "fault_to_resumed_epoch_s")]
    report = {
        "bench": "elastic", "date": time.strftime("%Y-%m-%d"), "machine": {"cpu": cpu_name(), "cores": os.cpu_count(),
                                                                         "python": platform.python_version(),
                                                                         "load_average_at_end": os.getloadavg()},
        "command": "bench/elastic.py " + " ".join(sys.argv[1:]), "epochs": args.epochs,
        "report_seconds": args.report_seconds, "notice_seconds": args.notice_seconds,
        "median": {".".join(k): round(median(k), 2) for k in keys}, "runs": runs,
    }
    text = json.dumps(report, indent=1)
    print(text)
    if args.json:
        Path(args.json).write_text(text + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
