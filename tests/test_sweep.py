"""Sweeps on a real Ray cluster, logging to a real MLflow server and to Parquet; failures and resumes."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import textwrap
import threading
import time
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from conftest import wait_for

from rethink_dist.sweep import load_sweep, run_sweep

REPO = Path(__file__).resolve().parents[1]


def write_sweep(tmp_path: Path, name: str, body: str) -> Path:
    path = tmp_path / f"{name}.py"
    path.write_text(textwrap.dedent(body))
    return path


def mlflow_runs(tracking_uri: str, experiment: str):
    from mlflow.tracking import MlflowClient

    client = MlflowClient(tracking_uri)
    exp = client.get_experiment_by_name(experiment)
    assert exp is not None, f"no MLflow experiment {experiment!r}"
    return client, client.search_runs([exp.experiment_id], max_results=1000)


def child_runs(runs):
    return [r for r in runs if r.data.tags.get("rethink.role") == "trial"]


def read_parquet(path: Path) -> pd.DataFrame | None:
    try:
        return pd.read_parquet(path)
    except (FileNotFoundError, OSError, ValueError):
        return None


# ---------------------------------------------------------------------------------------------
# Bad sweep files fail before any trial starts
# ---------------------------------------------------------------------------------------------
BAD_SWEEPS = {
    "syntax": ("NAME = 'x'\ndef trials(data_root=None)\n    return []\n", "syntax error at line 2"),
    "empty": ("NAME = 'x'\ndef trials(data_root=None):\n    return []\n", "empty grid"),
    "invalid": ("NAME = 'x'\ndef trials(data_root=None):\n"
                "    return [{}, {'corruption': {'kind': 'labels', 'level': 2.0}}]\n",
                "trial 1: corruption.level=2.0 is out of range"),
    "dataset": ("NAME = 'x'\ndef trials(data_root=None):\n    return [{'data': {'name': 'mnist'}}]\n",
                "trial 0: unknown dataset 'mnist'"),
    "noname": ("def trials(data_root=None):\n    return [{}]\n", "must define NAME"),
}


@pytest.mark.parametrize("case", sorted(BAD_SWEEPS))
def test_bad_sweep_file_fails_before_ray(tmp_path, case):
    body, needle = BAD_SWEEPS[case]
    path = tmp_path / f"bad_{case}.py"
    path.write_text(body)
    p = subprocess.run([sys.executable, "-m", "rethink_dist.cli", "sweep", str(path), "--storage",
                        str(tmp_path / "out"), "--ray-address", "local"], capture_output=True, text=True, timeout=120)
    assert p.returncode == 2, p.stderr
    lines = p.stderr.strip().splitlines()
    assert len(lines) == 1 and needle in lines[0] and str(path) in lines[0], p.stderr
    assert "Ray" not in p.stderr and not (tmp_path / "out").exists()


def test_missing_data_root_fails_before_ray(tmp_path):
    p = subprocess.run([sys.executable, str(REPO / "sweeps" / "full_paper.py"), "--data-root",
                        str(tmp_path / "nope"), "--storage", str(tmp_path / "out"), "--ray-address", "local"],
                       capture_output=True, text=True, timeout=120)
    assert p.returncode == 2 and "does not exist" in p.stderr and "full_paper.py" in p.stderr, p.stderr


# ---------------------------------------------------------------------------------------------
# A smoke sweep on two nodes, into a real MLflow server and Parquet
# ---------------------------------------------------------------------------------------------
def test_smoke_sweep_on_two_nodes(ray_two_nodes, mlflow_server, tmp_path):
    sweep = load_sweep(REPO / "sweeps" / "quick.py", smoke=True)
    assert 2 <= len(sweep.trials) <= 4
    out = run_sweep(sweep, storage=str(tmp_path / "store"), tracking_uri=mlflow_server, verbose=0)
    assert out["errors"] == 0 and len(out["summary"]) == len(sweep.trials)

    df = pd.read_parquet(out["parquet"])
    assert set(df["trial_id"]) == {t.trial_id for t in sweep.trials}
    assert not df.duplicated(["trial_id", "epoch"]).any()
    assert df["node_id"].nunique() == 2, "trials were not placed on both nodes"

    client, runs = mlflow_runs(mlflow_server, sweep.name)
    parents = [r for r in runs if r.data.tags.get("rethink.role") == "sweep"]
    children = child_runs(runs)
    assert len(parents) == 1 and parents[0].info.status == "FINISHED"
    assert len(children) == len(sweep.trials)
    for run in children:
        assert run.info.status == "FINISHED"
        assert run.data.tags["mlflow.parentRunId"] == parents[0].info.run_id
        tid = run.data.tags["rethink.trial_id"]
        spec = next(t for t in sweep.trials if t.trial_id == tid)
        for key, value in spec.flat().items():
            assert run.data.params[key] == str(value), key
        assert run.data.tags["rethink.dataset_fingerprint"] == run.data.params["meta.dataset_fingerprint"]
        rows = df[df["trial_id"] == tid].sort_values("epoch")
        for metric in ("train_acc", "test_acc", "train_loss", "lr"):
            hist = sorted(client.get_metric_history(run.info.run_id, metric), key=lambda m: m.step)
            assert [m.step for m in hist] == list(rows["epoch"]), metric
            assert np.allclose([m.value for m in hist], rows[metric].to_numpy()), metric
        assert run.data.metrics["summary.epochs"] == rows["epoch"].max()
        assert bool(rows["finished"].iloc[-1]) and not rows["finished"].iloc[:-1].any()
    assert_tune_state_slim(tmp_path / "store" / sweep.name / "tune", len(sweep.trials))


def assert_tune_state_slim(tune_dir: Path, trials: int) -> None:
    """Tune's last experiment snapshot holds, per trial, no epochs, no running statistics and
    checkpoint results of their epoch and Tune's counters only (slim_tune_state): what makes the
    snapshot, written for every trial of the sweep, grow with the sweep's size."""
    import pickle

    from rethink_dist.sweep.results import _CHECKPOINT_RESULT_KEYS

    state = json.loads(sorted(tune_dir.glob("experiment_state-*.json"))[-1].read_text())
    assert len(state["trial_data"]) == trials
    for _, runtime in state["trial_data"]:
        meta = json.loads(runtime)
        assert meta["metric_analysis"] == {} and meta["metric_n_steps"] == {}
        assert "records" not in meta["last_result"] and "train_loss" not in meta["last_result"]
        assert meta["last_result"]["epoch"] >= 1 and "config" in meta["last_result"]
        manager = pickle.loads(bytes.fromhex(meta["checkpoint_manager"]["value"]))
        kept = manager.best_checkpoint_results + [manager.latest_checkpoint_result]
        assert kept and all(set(r.metrics) <= set(_CHECKPOINT_RESULT_KEYS) for r in kept), kept
        assert manager.latest_checkpoint_result.metrics["epoch"] == meta["last_result"]["epoch"]


BATCHED = """
NAME = "batched"

def trials(data_root=None):
    return [{"model": {"name": "mlp_1x512"}, "optim": {"epochs": 6}, "data": {"max_train": 200}}]
"""


def test_short_epochs_go_to_tune_several_per_report(ray_two_nodes, tmp_path):
    """Several epochs per report (one report here): every epoch still reaches Parquet and MLflow once."""
    sweep = load_sweep(write_sweep(tmp_path, "batched", BATCHED))
    out = run_sweep(sweep, storage=str(tmp_path / "store"), verbose=0, report_seconds=3600)
    assert out["errors"] == 0
    tid = sweep.trials[0].trial_id
    reports = [json.loads(line) for line in
               (tmp_path / "store" / "batched" / "tune" / tid / "result.json").read_text().splitlines()]
    assert len(reports) == 1, "with report_seconds=3600 the trial reports once, when it is done"
    assert [r["epoch"] for r in reports[0]["records"]] == [1, 2, 3, 4, 5, 6]
    assert reports[0]["epoch"] == 6 and reports[0]["done_training"]

    df = pd.read_parquet(out["parquet"]).sort_values("epoch")
    assert list(df["epoch"]) == [1, 2, 3, 4, 5, 6]
    assert np.allclose(df["train_loss"], [r["train_loss"] for r in reports[0]["records"]])
    assert list(df["finished"]) == [False] * 5 + [True]
    client, runs = mlflow_runs(out["tracking_uri"], "batched")
    (child,) = child_runs(runs)
    assert sorted(m.step for m in client.get_metric_history(child.info.run_id, "train_loss")) == [1, 2, 3, 4, 5, 6]


def test_report_seconds_must_be_a_number_at_least_zero(tmp_path):
    path = write_sweep(tmp_path, "batched", BATCHED)
    proc = subprocess.run([sys.executable, "-m", "rethink_dist.cli", "sweep", str(path), "--report-seconds", "-1",
                           "--storage", str(tmp_path / "s")],
                          capture_output=True, text=True, env={**os.environ, "PYTHONPATH": str(REPO)}, timeout=120)
    assert proc.returncode == 2 and "--report-seconds must be a finite number >= 0" in proc.stderr, proc.stderr
    assert proc.stderr.count("\n") == 1 and not (tmp_path / "s").exists()


# ---------------------------------------------------------------------------------------------
# A killed trial worker resumes from its last checkpoint
# ---------------------------------------------------------------------------------------------
LONG_TRIAL = """
NAME = "killme"

def trials(data_root=None):
    return [{"model": {"name": "alexnet_small"}, "corruption": {"kind": "labels", "level": 1.0, "seed": 7},
             "optim": {"epochs": EPOCHS}, "data": {"max_train": 700, "subset": 0.8, "subset_seed": 3},
             "sample_records": True}]
"""


def test_killed_worker_resumes_from_checkpoint(ray_two_nodes, mlflow_server, tmp_path):
    epochs = 40
    path = write_sweep(tmp_path, "killme", LONG_TRIAL.replace("EPOCHS", str(epochs)))
    sweep = load_sweep(path)
    parquet = tmp_path / "store" / "killme" / "trials.parquet"
    result: dict = {}
    runner = threading.Thread(target=lambda: result.update(
        run_sweep(sweep, storage=str(tmp_path / "store"), tracking_uri=mlflow_server, verbose=0)))
    runner.start()
    try:
        df = wait_for(lambda: (d := read_parquet(parquet)) is not None and d["epoch"].max() >= 3 and (d,),
                      180, "the trial to report 3 epochs")[0]
        assert df["epoch"].max() < epochs, "the trial finished before it could be killed: make it longer"
        victim = int(df["pid"].iloc[-1])
        os.kill(victim, signal.SIGKILL)  # the trial's Ray worker process, started by this test's sweep
    finally:
        runner.join(timeout=600)
    assert not runner.is_alive() and result.get("errors") == 0, result

    df = pd.read_parquet(parquet).sort_values("epoch")
    assert list(df["epoch"]) == list(range(1, epochs + 1)), "gap or repeated epoch"
    pids = list(df["pid"])
    assert victim in pids and len(set(pids)) == 2, "the trial did not move to a new worker"
    first_new = pids.index(next(p for p in pids if p != victim)) + 1
    assert first_new > 1, "the retried trial restarted from scratch instead of its checkpoint"
    assert df["labels_fingerprint"].nunique() == 1
    # the same corrupted labels as the corruption function gives in this process
    from rethink_dist.config import TrialConfig
    from rethink_dist.data import load
    from rethink_dist.data.memory import corrupt_dataset
    from rethink_dist.train import labels_fingerprint

    cfg = TrialConfig.from_dict(sweep.trials[0].config)
    arrays = corrupt_dataset(load("digits").subset_train(700), cfg.corruption)
    assert df["labels_fingerprint"].iloc[0] == labels_fingerprint(arrays.train_y)

    client, runs = mlflow_runs(mlflow_server, "killme")
    children = child_runs(runs)
    assert len(children) == 1 and children[0].info.status == "FINISHED"
    steps = [m.step for m in client.get_metric_history(children[0].info.run_id, "train_acc")]
    assert sorted(steps) == list(range(1, epochs + 1)), "MLflow has a gap or a repeated epoch"

    # Per-sample records: one file, one row per training sample, equal to an uninterrupted run's
    # (the same config in this process, one thread like the trial's worker).
    files = list((tmp_path / "store" / "killme" / "samples").glob("*.parquet"))
    assert [f.name for f in files] == [f"{sweep.trials[0].trial_id}.parquet"]
    every = pd.read_parquet(files[0])
    samples = every[every["split"] == "train"].sort_values("sample")
    assert list(samples["sample"]) == list(range(700)) and set(samples["trial_id"]) == {sweep.trials[0].trial_id}
    assert list(samples["label_changed"]) == list(arrays.changed)
    from rethink_dist.corruption import subset_indices

    held = np.zeros(700, bool)
    held[subset_indices(700, 0.8, 3)] = True  # a subset trial: it trained on 560 of the 700
    assert samples["in_subset"].tolist() == held.tolist()
    import torch

    from rethink_dist.train import train

    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        ref = train(cfg)
    finally:
        torch.set_num_threads(threads)
    assert [r["train_loss"] for r in ref["history"]] == list(df["train_loss"]), "the resumed run is not exact"
    first = ref["samples"]["first_fit_epoch"]
    assert samples["first_fit_epoch"].fillna(-1).astype(int).tolist() == first.tolist()
    assert samples["forgettings"].tolist() == ref["samples"]["forgettings"].tolist()
    test = every[every["split"] == "test"].sort_values("sample")
    assert test["correct"].tolist() == ref["samples"]["test_correct"].tolist()
    # fitted at the end <=> classified as its label at the last evaluation (train_acc over the
    # subset it trained on, heldout_acc over the rest)
    fitted = samples["first_fit_epoch"].notna().to_numpy()
    assert fitted[held].mean() == pytest.approx(df["train_acc"].iloc[-1])
    assert fitted[~held].mean() == pytest.approx(df["heldout_acc"].iloc[-1])

    # The report draws these real records on digits (the smoke sweep of test_report_sweep.py picks
    # no label-corruption trial, so this is where a sweep's own first-fit figure is checked).
    from rethink_dist.report import build_report, load_folder

    report = build_report(load_folder(tmp_path / "store" / "killme"), tmp_path / "report")
    fig = next(f for f in report.figures if f.id == "first-fit-digits")
    assert fig.png and not fig.missing
    corrupted, clean = fig.series["AlexNet p=1 corrupted"], fig.series["AlexNet p=1 clean"]
    assert corrupted["epoch"] == list(range(epochs + 1))
    # The figure counts the samples the trial trained on (its subset).
    changed_held = int(samples["label_changed"].to_numpy(bool)[held].sum())
    assert corrupted["samples"] == changed_held and clean["samples"] == int(held.sum()) - changed_held
    assert corrupted["fraction_fitted"][-1] == pytest.approx(df["train_acc_corrupted"].iloc[-1])
    assert clean["fraction_fitted"][-1] == pytest.approx(df["train_acc_clean"].iloc[-1])


# ---------------------------------------------------------------------------------------------
# An interrupted driver resumes with --resume; finished trials are not rerun
# ---------------------------------------------------------------------------------------------
THREE_TRIALS = """
NAME = "resumable"

def trials(data_root=None):
    return [{"model": {"name": "mlp_3x512"}, "corruption": {"kind": "labels", "level": level},
             "optim": {"epochs": 60}} for level in (0.0, 0.5, 1.0)]
"""


def test_interrupted_driver_resumes(tmp_path):
    path = write_sweep(tmp_path, "resumable", THREE_TRIALS)
    store = tmp_path / "store"
    parquet = store / "resumable" / "trials.parquet"
    cmd = [sys.executable, "-m", "rethink_dist.cli", "sweep", str(path), "--storage", str(store),
           "--ray-address", "local", "--num-cpus", "1", "--max-concurrent", "1"]
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    log = open(tmp_path / "first.log", "w")
    first = subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT, env=env, start_new_session=True)
    try:
        wait_for(lambda: (d := read_parquet(parquet)) is not None and d["finished"].any(), 300, "one trial to finish")
        os.killpg(first.pid, signal.SIGINT)  # Ctrl-C of the driver (its own process group)
        first.wait(timeout=120)
    finally:
        if first.poll() is None:
            os.killpg(first.pid, signal.SIGKILL)
            first.wait()
    log.close()
    first_log = (tmp_path / "first.log").read_text()
    assert first.returncode == 130 and "unfinished (interrupted: continue with --resume)" in first_log, \
        (first.returncode, first_log[-3000:])
    before = pd.read_parquet(parquet)
    done_before = set(before.loc[before["finished"], "trial_id"])
    assert 1 <= len(done_before) < 3, "interrupt came too late to test a resume"
    # "finished" means trained to the end: an interrupted trial is never marked finished
    assert (before[before["trial_id"].isin(done_before)].groupby("trial_id")["epoch"].max() == 60).all()
    rows_before = before[before["trial_id"].isin(done_before)].sort_values(["trial_id", "epoch"])
    uri = f"sqlite:///{store / 'mlflow.db'}"
    _, runs = mlflow_runs(uri, "resumable")
    assert [r.info.status for r in runs if r.data.tags.get("rethink.role") == "sweep"] == ["KILLED"]

    # without --resume the existing sweep is refused, not mixed
    again = subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=120)
    assert again.returncode == 2 and "--resume" in again.stderr

    second = subprocess.run(cmd + ["--resume"], capture_output=True, text=True, env=env, timeout=600)
    assert second.returncode == 0, second.stdout[-3000:] + second.stderr[-3000:]
    after = pd.read_parquet(parquet)
    assert after.groupby("trial_id")["finished"].any().all() and after["trial_id"].nunique() == 3
    assert not after.duplicated(["trial_id", "epoch"]).any()
    # every row keeps what only the live result carried (the trial's process and node)
    assert after["pid"].notna().all() and after["node_id"].notna().all(), after.groupby("trial_id")["pid"].count()
    rows_after = after[after["trial_id"].isin(done_before)].sort_values(["trial_id", "epoch"])
    assert list(rows_after["pid"]) == list(rows_before["pid"]), "a finished trial was rerun"

    client, runs = mlflow_runs(uri, "resumable")
    children = child_runs(runs)
    assert len(children) == 3 and {r.data.tags["rethink.trial_id"] for r in children} == set(after["trial_id"])
    assert [r.info.status for r in runs if r.data.tags.get("rethink.role") == "sweep"] == ["FINISHED"]
    for run in children:
        assert run.info.status == "FINISHED"
        steps = [m.step for m in client.get_metric_history(run.info.run_id, "train_loss")]
        assert sorted(steps) == list(range(1, 61))
    plan = json.loads((store / "resumable" / "sweep.json").read_text())
    assert [t["trial_id"] for t in plan["trials"]] == sorted(after["trial_id"].unique())


# ---------------------------------------------------------------------------------------------
# Theory trials are trials of the same system
# ---------------------------------------------------------------------------------------------
def test_theory_smoke_sweep(ray_two_nodes, tmp_path):
    sweep = load_sweep(REPO / "sweeps" / "theory.py", smoke=True)
    kinds = {t.kind for t in sweep.trials}
    assert kinds == {"expressivity", "kernel"}
    out = run_sweep(sweep, storage=str(tmp_path / "store"), verbose=0)
    assert out["errors"] == 0
    df = pd.read_parquet(out["parquet"])
    assert len(df) == len(sweep.trials) and df["finished"].all()
    expr = df[df["kind"] == "expressivity"]
    assert (expr["max_abs_error"] < 1e-6).all()
    assert (expr["params"] >= 2 * expr["n"] + expr["d"]).all()
    client, runs = mlflow_runs(out["tracking_uri"], sweep.name)
    children = child_runs(runs)
    assert len(children) == len(sweep.trials)
    for run in children:
        assert run.info.status == "FINISHED"
        assert any(k.startswith("params.") for k in run.data.params)
        assert any(k.startswith("summary.") for k in run.data.metrics)
