"""The report of a real sweep: `python sweeps/quick.py --smoke` (a few tiny trials on digits, a
local Ray), then `rethink-dist report` on its folder and on its MLflow store; the cells must be
the sweep's own numbers, the figures the expected series, and the HTML must load in Chromium."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pandas as pd
import pytest

from test_report import FOLDER_ONLY
from test_report_browser import browser, check_report_page  # noqa: F401  (fixture)

from rethink_dist.cli import main
from rethink_dist.report.figures import TIMELINE_MISSING

REPO = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def smoke(tmp_path_factory):
    """Run the smoke sweep once; yields its ``<storage>/<sweep>`` folder."""
    storage = tmp_path_factory.mktemp("smoke")
    env = {**os.environ, "MLFLOW_DISABLE_TELEMETRY": "true", "RAY_USAGE_STATS_ENABLED": "0"}
    out = subprocess.run([sys.executable, "sweeps/quick.py", "--smoke", "--storage", str(storage)], cwd=REPO,
                         env=env, capture_output=True, text=True, timeout=600)
    assert out.returncode == 0, out.stdout[-3000:] + out.stderr[-3000:]
    folders = [p for p in storage.iterdir() if (p / "trials.parquet").exists()]
    assert len(folders) == 1, list(storage.iterdir())
    return folders[0]


def _report(capsys, args: list[str]) -> tuple[Path, str]:
    """`rethink-dist report ARGS` in this process: (the HTML path it printed, its stderr)."""
    capsys.readouterr()
    rc = main(["report", *args])
    out = capsys.readouterr()
    assert rc == 0, out.err[-3000:]
    return Path(out.out.strip().splitlines()[-1]), out.err


def test_report_of_a_real_smoke_sweep(smoke, browser, capsys):  # noqa: F811
    html, err = _report(capsys, [str(smoke)])
    assert html == smoke / "report" / "report.html" and html.exists()
    data = json.loads((smoke / "report" / "report.json").read_text())
    rows = pd.read_parquet(smoke / "trials.parquet")
    plan = json.loads((smoke / "sweep.json").read_text())
    assert data["planned"] == len(plan["trials"]) and data["finished"] == rows.loc[rows["finished"], "trial_id"].nunique()

    # Table 1 on digits: one row per (architecture, true/random labels) of the sweep, the trial's own numbers.
    t1 = next(t for t in data["tables"] if t["id"] == "table1-digits")
    assert "paper_test" not in t1["columns"]  # the paper's numbers are for CIFAR-10
    last = rows[rows["finished"]]
    table_trials = last[last["corruption.kind"].isin(["none"]) |
                        ((last["corruption.kind"] == "labels") & last["corruption.level"].isin([0.0, 1.0]))]
    assert len(table_trials) > 0
    for _, trial in table_trials.iterrows():
        name = {"mlp_1x512": "MLP 1x512", "mlp_3x512": "MLP 3x512", "alexnet_small": "AlexNet"}[trial["model.name"]]
        labels = "random" if trial["corruption.kind"] == "labels" and trial["corruption.level"] == 1.0 else "true"
        (row,) = [r for r in t1["rows"] if r["model"] == name and r["labels"] == labels]
        assert row["n"] == 1 and row["train_std"] is None
        assert row["train"] == pytest.approx(100 * trial["train_acc"])
        assert row["test"] == pytest.approx(100 * trial["test_acc"])

    # Figures: each one drawn has a series per corruption kind / setting that the sweep ran.
    figs = {f["id"]: f for f in data["figures"]}
    kinds = {"none": "true labels", "gaussian": "gaussian", "shuffled_pixels": "shuffled pixels",
             "random_pixels": "random pixels"}
    fig1a = figs["fig1a-digits"]
    ran = {kinds.get(k, k) for k in last["corruption.kind"]}
    assert set(fig1a["series"]) <= ran and len(fig1a["series"]) >= 2 and fig1a["file"]
    for series in fig1a["series"].values():
        for run in series:
            mine = rows[rows["trial_id"] == run["trial_id"]].sort_values("epoch")
            assert run["y"] == pytest.approx(list(mine["train_loss"]))
            assert run["x"] == pytest.approx(list(mine["step"] / 1000))
    assert set(figs["fig2a-digits"]["series"]) == {"no regularizer"}  # quick.py runs no regularizer
    assert figs["fig2b-digits"]["missing"]  # no inception_small in quick.py
    # The per-sample records (quick.py keeps them): one file per trial, and the first-fit figure.
    samples = pd.concat([pd.read_parquet(f) for f in sorted((smoke / "samples").glob("*.parquet"))])
    samples = samples[samples["split"] == "train"]
    assert set(samples["trial_id"]) == set(rows["trial_id"])
    first_fit = figs["first-fit-digits"]
    label_trials = last[(last["corruption.kind"] == "labels") & (last["corruption.level"] > 0)]
    if label_trials.empty:  # the smoke grid's picks: the figure needs a label-corruption trial (test_report.py)
        assert first_fit["missing"].startswith("needs finished unregularized label-corruption trials")
    for _, trial in label_trials.iterrows():
        mine = samples[samples["trial_id"] == trial["trial_id"]]
        arch = {"mlp_1x512": "MLP 1x512", "mlp_3x512": "MLP 3x512", "alexnet_small": "AlexNet"}[trial["model.name"]]
        series = first_fit["series"][f"{arch} p={trial['corruption.level']:g} corrupted"]
        # at the last epoch the fraction fitted for good is the accuracy on the corrupted samples
        assert series["fraction_fitted"][-1] == pytest.approx(trial["train_acc_corrupted"])
        assert series["samples"] == int(mine["label_changed"].sum())
    # The cluster timeline: every epoch row lies in one segment, on the node and in the process that ran it.
    timeline = figs["cluster-timeline"]
    assert timeline["file"] and timeline["missing"] is None
    tl = timeline["series"]
    segments = tl["segments"]
    for _, row in rows.iterrows():
        (seg,) = [s for s in segments
                  if s["trial_id"] == row["trial_id"] and s["first_epoch"] <= row["epoch"] <= s["last_epoch"]]
        assert (seg["node_id"], seg["host"], seg["pid"]) == (row["node_id"], row["node"], row["pid"])
        if row["epoch"] == seg["last_epoch"]:
            assert seg["end"] == pytest.approx(row["ended_at"] - tl["t0"], abs=1e-3)
    assert sum(s["epochs"] for s in segments) == len(rows) and tl["rows_without_time"] == 0
    assert {n["lane"] for n in tl["nodes"]} == set(rows["node_id"])
    for n in tl["nodes"]:
        mine = [s for s in segments if s["lane"] == n["lane"]]
        assert n["segments"] == len(mine) and n["label"] == n["lane"][:8]
        assert n["first"] == min(s["start"] for s in mine) and n["last"] == max(s["end"] for s in mine)
    assert len(tl["moves"]) == len(segments) - rows["trial_id"].nunique()
    assert set(rows["world_size"]) == {1} and tl["resizes"] == []
    check_report_page(browser, html, sum(1 for f in data["figures"] if f["file"]))

    # Logged as artifacts of the sweep's parent run in its own MLflow store (recorded in sweep.json).
    from mlflow.tracking import MlflowClient

    client = MlflowClient(plan["tracking_uri"])
    exp = client.get_experiment_by_name(plan["sweep"])
    (parent,) = client.search_runs([exp.experiment_id], "tags.`rethink.role` = 'sweep'")
    assert f"MLflow run {parent.info.run_id}" in err
    logged = {a.path for a in client.list_artifacts(parent.info.run_id, "report")}
    assert {"report/report.html", "report/report.md", "report/report.json"} <= logged


def test_report_from_the_sweeps_mlflow_store_agrees(smoke, tmp_path, capsys):
    plan = json.loads((smoke / "sweep.json").read_text())
    html, _ = _report(capsys, ["--tracking-uri", plan["tracking_uri"], "--experiment", plan["sweep"], "--out",
                       str(tmp_path / "from-mlflow"), "--no-mlflow"])
    from_mlflow = json.loads((html.parent / "report.json").read_text())
    folder, _ = _report(capsys, [str(smoke), "--out", str(tmp_path / "from-folder"), "--no-mlflow"])
    from_folder = json.loads((folder.parent / "report.json").read_text())
    assert from_mlflow["finished"] == from_folder["finished"] > 0
    assert from_mlflow["tables"] == from_folder["tables"]
    # (the per-sample records and the epochs' end times live in the sweep's folder only: from MLflow the
    # first-fit figure and the cluster timeline are missing)
    assert {f["id"]: sorted(f["series"]) for f in from_mlflow["figures"] if not f["id"].startswith(FOLDER_ONLY)} == \
        {f["id"]: sorted(f["series"]) for f in from_folder["figures"] if not f["id"].startswith(FOLDER_ONLY)}
    assert [f["missing"] for f in from_mlflow["figures"] if f["id"].startswith(FOLDER_ONLY)] == \
        [TIMELINE_MISSING, "needs trials run with sample_records on (the shipped sweeps switch it on)"]


def test_results_doc_generator_on_a_real_smoke_sweep(smoke, tmp_path):
    """docs/results/fashion_mnist.py writes its document from a sweep's folder and kernel results:
    every trial's numbers come from the sweep (here the digits smoke sweep), none typed."""
    from rethink_dist.theory import run_kernel

    kdir = tmp_path / "kernel"
    kdir.mkdir()
    k = run_kernel({"dataset": "digits", "kernel": "rbf", "max_train": 300, "dtype": "float32"})
    (kdir / "rbf-true.json").write_text(json.dumps(k))
    doc, figs = tmp_path / "doc" / "results.md", tmp_path / "doc" / "results-figs"
    proc = subprocess.run([sys.executable, str(REPO / "docs" / "results" / "fashion_mnist.py"), "--sweep", str(smoke),
                           "--kernel", str(kdir), "--paper-schedule", str(tmp_path / "none.json"), "--doc", str(doc),
                           "--figs", str(figs)], capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    text = doc.read_text()
    assert text.startswith("# Fashion-MNIST") and "python docs/results/fashion_mnist.py" in text
    assert "wall time of the whole sweep" in text and "minutes" in text
    rows = pd.read_parquet(smoke / "trials.parquet")
    last = rows[rows["finished"]].sort_values("epoch").groupby("trial_id").tail(1)
    assert len(last) > 0
    for _, r in last.iterrows():
        assert f"| {100 * r['test_acc']:.2f} |" in text, r["run_name"]
    assert f"| {100 * k['test_error']:.2f} |" in text and f"{k['norm']:.1f}" in text
    assert "not run:" in text  # no paper-schedule run given: said, not invented
    import re

    shown = re.findall(r"\]\(results-figs/([a-z0-9_]+)\.png\)", text)
    assert "train_acc" in shown
    for name in shown:
        assert (figs / f"{name}.png").stat().st_size > 1000, name
