"""A sweep's MLflow, as its users look at it: a diverged trial is a FAILED run with the reason, not
retried; the artifacts live in the storage folder whatever the working directory; the experiment
opens on its runs (model training), not on MLflow 3's GenAI overview. A real sweep on a local Ray,
run as a user runs it (`rethink-dist sweep`), from another working directory."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pandas as pd
import pytest

REPO = Path(__file__).resolve().parents[1]
CLI = [sys.executable, "-m", "rethink_dist.cli"]
SWEEP = """
NAME = "diverge"

def trials(data_root=None):
    return [{"optim": {"epochs": 3}, "data": {"max_train": 200}},
            {"optim": {"epochs": 3, "lr": 1.0e6}, "data": {"max_train": 200}, "name": "blows_up"},
            {"optim": {"epochs": 3, "lr": 1.0e7}, "model": {"name": "mlp_3x512"}, "data": {"max_train": 200},
             "name": "blows_up_too"}]
"""


@pytest.fixture(scope="module")
def swept(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("mlflow_sweep")
    (tmp / "diverge.py").write_text(SWEEP)
    elsewhere = tmp / "elsewhere"
    elsewhere.mkdir()
    store = tmp / "store"
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    p = subprocess.run(CLI + ["sweep", str(tmp / "diverge.py"), "--storage", str(store), "--ray-address", "local",
                              "--num-cpus", "2"], cwd=elsewhere, capture_output=True, text=True, env=env, timeout=600)
    report = subprocess.run(CLI + ["report", str(store / "diverge")], cwd=elsewhere, capture_output=True, text=True,
                            env=env, timeout=600)
    return {"proc": p, "report": report, "store": store, "elsewhere": elsewhere,
            "uri": f"sqlite:///{store / 'mlflow.db'}"}


def _client(uri):
    from mlflow.tracking import MlflowClient

    return MlflowClient(uri)


def test_a_diverged_trial_fails_its_run_with_the_reason_and_is_not_retried(swept):
    p = swept["proc"]
    assert p.returncode == 1, p.stdout[-3000:] + p.stderr[-3000:]
    assert "2 failed" in p.stdout
    client = _client(swept["uri"])
    exp = client.get_experiment_by_name("diverge")
    runs = {r.info.run_name: r for r in client.search_runs([exp.experiment_id], "tags.`rethink.role` = 'trial'")}
    assert set(runs) == {"blows_up", "blows_up_too", "digits_true_mlp_1x512_lr0.01_wd0_aug0_s0"}
    for name in ("blows_up", "blows_up_too"):
        assert runs[name].info.status == "FAILED"
        assert "loss became" in runs[name].data.tags["rethink.last_error"]
    good = runs["digits_true_mlp_1x512_lr0.01_wd0_aug0_s0"]
    assert good.info.status == "FINISHED" and "rethink.last_error" not in good.data.tags
    df = pd.read_parquet(swept["store"] / "diverge" / "trials.parquet")
    assert sorted(df.loc[df["finished"], "run_name"]) == ["digits_true_mlp_1x512_lr0.01_wd0_aug0_s0"]
    # Not retried: a trial that raised would leave Tune's error.txt and be run again (it would diverge
    # again, identically); a diverged one ends normally, with its reason.
    errors = list((swept["store"] / "diverge" / "tune").glob("*/error.txt"))
    assert not errors, f"a diverged trial was handled as an error to retry: {errors}"


def test_artifacts_live_in_the_storage_folder(swept):
    r = swept["report"]
    assert r.returncode == 0, r.stderr[-3000:]
    store, elsewhere = swept["store"], swept["elsewhere"]
    assert not (elsewhere / "mlruns").exists(), "MLflow wrote artifacts into the working directory"
    client = _client(swept["uri"])
    exp = client.get_experiment_by_name("diverge")
    assert exp.artifact_location == (store / "mlartifacts" / "diverge").resolve().as_uri()
    parent = client.search_runs([exp.experiment_id], "tags.`rethink.role` = 'sweep'")[0]
    names = {a.path for a in client.list_artifacts(parent.info.run_id, "report")}
    assert "report/report.html" in names
    local = client.download_artifacts(parent.info.run_id, "report/report.md", str(elsewhere))
    assert Path(local).read_text().startswith("#")
    assert list((store / "mlartifacts" / "diverge").rglob("report.html")), "the artifacts are not under the storage"


def test_the_experiment_opens_on_model_training(swept):
    for name in ("diverge",):
        exp = _client(swept["uri"]).get_experiment_by_name(name)
        assert exp.tags.get("mlflow.experimentKind") == "custom_model_development"
