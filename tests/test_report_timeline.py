"""The report's cluster timeline from hand-made placements: two Ray nodes, a trial that moves from
node A to node B at epoch 4, a data-parallel trial that shrinks from 2 to 1 process at epoch 3, a
trial restarted in a new process on its own node; and a table from before ended_at was recorded."""

from __future__ import annotations

import json

import pandas as pd
import pytest

from test_report import _flat

from rethink_dist.report import build_report, load_folder

T0 = 1_700_000_000.0
A, B = "a1b2c3d4" + "0" * 48, "e5f6a7b8" + "1" * 48


def _epoch(tid, epoch, node_id, host, pid, ended, world=1, train=8.0, evals=2.0, seconds=None, finished=False):
    return {"trial_id": tid, "sweep": "tl", "run_name": f"{tid}_run", "kind": "network", "epoch": epoch,
            "step": 10 * epoch, "train_loss": 1.0, "train_acc": 0.5, "test_acc": 0.4, "finished": finished,
            "train_seconds": train, "eval_seconds": evals, "seconds": 10.0 * epoch if seconds is None else seconds,
            "node": host, "node_id": node_id, "pid": pid, "ended_at": T0 + ended, "world_size": world,
            **_flat(data="digits", epochs=5)}


ROWS = [
    # mover: epochs 1-3 on A (pid 101), then, A gone, epochs 4-5 on B (pid 201); 10 s per epoch.
    *[_epoch("mover", e, A, "hostA", 101, 10.0 * e) for e in (1, 2, 3)],
    _epoch("mover", 4, B, "hostB", 201, 50.0), _epoch("mover", 5, B, "hostB", 201, 60.0, finished=True),
    # ddp: on B, world size 2, 2, then 1, 1 (an elastic trial that lost a rank).
    *[_epoch("ddp", e, B, "hostB", 202, 5.0 + 10.0 * e, world=2 if e < 3 else 1, finished=e == 4) for e in (1, 2, 3, 4)],
    # restarted: no train/eval seconds (durations from the cumulative seconds); epoch 3 in a new process on B.
    *[_epoch("restarted", e, B, "hostB", 203, 10.0 + 10.0 * e, train=None, evals=None) for e in (1, 2)],
    _epoch("restarted", 3, B, "hostB", 204, 70.0, train=None, evals=None, finished=True),
]


def _folder(tmp_path, rows):
    folder = tmp_path / "tl"
    folder.mkdir()
    pd.DataFrame(rows).to_parquet(folder / "trials.parquet")
    return folder


def test_timeline_finds_nodes_moves_and_resizes(tmp_path):
    report = build_report(load_folder(_folder(tmp_path, ROWS)), tmp_path / "report")
    fig = next(f for f in report.figures if f.id == "cluster-timeline")
    assert fig.missing is None and fig.png.startswith(b"\x89PNG")
    assert (report.out / "figures" / "cluster-timeline.png").read_bytes() == fig.png
    tl = fig.series
    assert tl["t0"] == T0 and tl["rows_without_time"] == 0
    # (node B ran two trials at once from 10 s to 30 s and from 40 s to 45 s: two rows, "slots")
    assert [(n["label"], n["host"], n["first"], n["last"], n["segments"], n["epochs"], n["slots"])
            for n in tl["nodes"]] == [("a1b2c3d4", "hostA", 0.0, 30.0, 1, 3, 1), ("e5f6a7b8", "hostB", 5.0, 70.0, 4, 9, 2)]
    assert [(s["trial_id"], s["lane"][:8], s["pid"], s["first_epoch"], s["last_epoch"], s["start"], s["end"], s["slot"])
            for s in tl["segments"]] == [
        ("ddp", "e5f6a7b8", 202, 1, 4, 5.0, 45.0, 0),
        ("mover", "a1b2c3d4", 101, 1, 3, 0.0, 30.0, 0), ("mover", "e5f6a7b8", 201, 4, 5, 40.0, 60.0, 1),
        ("restarted", "e5f6a7b8", 203, 1, 2, 10.0, 30.0, 1), ("restarted", "e5f6a7b8", 204, 3, 3, 60.0, 70.0, 0)]
    assert tl["moves"] == [
        {"trial_id": "mover", "epoch": 4, "from": A, "to": B, "from_pid": 101, "to_pid": 201, "at": 30.0,
         "node_lost": True},  # A ran nothing after the trial resumed on B
        {"trial_id": "restarted", "epoch": 3, "from": B, "to": B, "from_pid": 203, "to_pid": 204, "at": 30.0,
         "node_lost": False}]
    assert tl["resizes"] == [{"trial_id": "ddp", "epoch": 3, "from": 2, "to": 1, "lane": B, "at": 25.0}]
    assert tl["counts"] == {"t": [0.0, 5.0, 10.0, 30.0, 40.0, 45.0, 60.0, 70.0],
                            "nodes": [1, 2, 2, 1, 1, 1, 1, 0], "trials": [1, 2, 3, 1, 2, 1, 1, 0]}
    # The JSON keeps the same numbers; the page has the run's section before the tables.
    saved = next(f for f in json.loads(report.data.read_text())["figures"] if f["id"] == "cluster-timeline")
    assert saved["series"] == tl and saved["file"] == "figures/cluster-timeline.png"
    md = report.markdown.read_text()
    assert md.index("## The sweep's run") < md.index("![The sweep's run: cluster timeline]") < md.index("## Table 1")


def test_timeline_of_a_table_without_end_times_says_why(tmp_path):
    old = [{k: v for k, v in r.items() if k not in ("ended_at", "world_size")} for r in ROWS]
    report = build_report(load_folder(_folder(tmp_path, old)), tmp_path / "report")
    fig = next(f for f in report.figures if f.id == "cluster-timeline")
    assert fig.png is None and fig.series == {} and "\n" not in fig.missing
    assert fig.missing.startswith("needs the epochs' end times (ended_at)")
    assert not (report.out / "figures" / "cluster-timeline.png").exists()
    assert f"Missing: {fig.missing}." in report.markdown.read_text()


@pytest.mark.parametrize("drop", [["node_id"], ["node_id", "node"]])
def test_timeline_lanes_without_node_ids(tmp_path, drop):
    rows = [{k: v for k, v in r.items() if k not in drop} for r in ROWS]
    report = build_report(load_folder(_folder(tmp_path, rows)), tmp_path / "report")
    tl = next(f for f in report.figures if f.id == "cluster-timeline").series
    labels = [n["label"] for n in tl["nodes"]]
    assert labels == (["hostA", "hostB"] if drop == ["node_id"] else ["unknown"])
    assert sum(n["epochs"] for n in tl["nodes"]) == len(ROWS)
