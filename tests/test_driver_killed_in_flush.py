"""The driver SIGKILLed while it writes trials.parquet's parts, then resumed: every epoch once, in
Parquet and in MLflow (synthetic trials: the sweep machinery alone, on a real Ray and SQLite store)."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pandas as pd

REPO = Path(__file__).resolve().parents[1]
EPOCHS, TRIALS = 40, 6
SWEEP = f"""
NAME = "flushkill"

def trials(data_root=None):
    return [{{"kind": "synthetic", "params": {{"epochs": {EPOCHS}, "epoch_seconds": 0.05, "seed": i, "cpus": 0.25}}}}
            for i in range({TRIALS})]
"""


def _writing(folder: Path) -> str | None:
    """The name of a part being written now (its temporary file beside it), if any."""
    try:
        with os.scandir(folder) as it:
            for entry in it:
                if entry.name.startswith(".") and ".parquet.tmp" in entry.name:
                    return entry.name
    except FileNotFoundError:
        pass
    return None


def test_driver_killed_during_a_flush_resumes_with_every_epoch_once(tmp_path):
    path = tmp_path / "flushkill.py"
    path.write_text(textwrap.dedent(SWEEP))
    store = tmp_path / "store"
    parts = store / "flushkill" / "trials.parquet"
    cmd = [sys.executable, "-m", "rethink_dist.cli", "sweep", str(path), "--storage", str(store),
           "--ray-address", "local", "--num-cpus", "2", "--max-concurrent", str(TRIALS)]
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    with open(tmp_path / "first.log", "w") as log:
        first = subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT, env=env, start_new_session=True)
        seen = None
        try:
            deadline = time.monotonic() + 240
            while first.poll() is None and time.monotonic() < deadline:
                seen = _writing(parts)
                # a flush after some epochs of every trial: the kill lands among the parts' writes
                if seen and len(list(parts.glob("t*.parquet"))) == TRIALS:
                    os.killpg(first.pid, signal.SIGKILL)  # the driver and the Ray it started (its group)
                    break
        finally:
            if first.poll() is None:
                os.killpg(first.pid, signal.SIGKILL)
            first.wait(60)
    log = (tmp_path / "first.log").read_text()
    assert seen and first.returncode == -signal.SIGKILL, (first.returncode, log[-3000:])
    before = pd.read_parquet(parts)  # readable as it was left
    assert not before.duplicated(["trial_id", "epoch"]).any()
    assert before["epoch"].max() < EPOCHS or not before["finished"].all(), "the sweep ended before the kill"

    second = subprocess.run(cmd + ["--resume"], capture_output=True, text=True, env=env, timeout=600)
    assert second.returncode == 0, second.stdout[-3000:] + second.stderr[-3000:]
    after = pd.read_parquet(parts)
    assert after["trial_id"].nunique() == TRIALS and len(after) == TRIALS * EPOCHS
    assert not after.duplicated(["trial_id", "epoch"]).any()
    for tid, rows in after.groupby("trial_id"):
        assert sorted(rows["epoch"]) == list(range(1, EPOCHS + 1)), tid
        assert rows.sort_values("epoch")["finished"].tolist() == [False] * (EPOCHS - 1) + [True], tid
    assert not [p.name for p in parts.iterdir() if p.name.startswith(".")], "a cut-short write was left"

    from mlflow.tracking import MlflowClient

    client = MlflowClient(f"sqlite:///{store / 'mlflow.db'}")
    exp = client.get_experiment_by_name("flushkill")
    runs = [r for r in client.search_runs([exp.experiment_id]) if r.data.tags.get("rethink.role") == "trial"]
    assert len(runs) == TRIALS and all(r.info.status == "FINISHED" for r in runs)
    for r in runs:
        steps = [m.step for m in client.get_metric_history(r.info.run_id, "train_loss")]
        assert sorted(steps) == list(range(1, EPOCHS + 1)), (r.data.tags.get("rethink.trial_id"), sorted(steps))
