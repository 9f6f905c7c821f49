"""The writer's MLflow thread (rethink_dist/sweep/results.py, MlflowLane): calls run in the order they
were asked for, off the caller's thread; drain() waits for all of them; a call that raises does not
stop the ones after it; the caller never waits: a full lane (by the epochs its calls carry) leaves
out only the calls marked droppable (a report's live epochs, which the trial's end writes again)."""

from __future__ import annotations

import threading
import time

import pytest

from rethink_dist.sweep.results import MlflowLane


def test_calls_run_in_order_on_another_thread_and_drain_waits_for_them():
    lane, seen, caller = MlflowLane(), [], threading.get_ident()

    def call(i):
        time.sleep(0.002)
        seen.append((i, threading.get_ident()))

    for i in range(200):
        lane.submit(lambda i=i: call(i))
    lane.drain()
    assert [i for i, _ in seen] == list(range(200))
    assert {t for _, t in seen} != {caller} and len({t for _, t in seen}) == 1
    assert lane.busy_s > 0


def test_a_call_that_raises_is_reported_and_the_next_ones_still_run(capfd):
    lane, seen = MlflowLane(), []

    def broken():
        raise RuntimeError("store on fire")

    lane.submit(lambda: seen.append(1))
    lane.submit(broken)
    lane.submit(lambda: seen.append(2))
    lane.drain()
    assert seen == [1, 2]
    assert "an MLflow write failed unexpectedly (RuntimeError: store on fire)" in capfd.readouterr().err


def test_a_full_lane_never_makes_the_caller_wait_and_leaves_out_only_droppable_calls(capfd):
    lane, gate, seen = MlflowLane(limit=2), threading.Event(), []
    lane.submit(gate.wait)  # the thread is held here: the next calls queue up
    t = time.perf_counter()
    took = [lane.submit(lambda i=i: seen.append(i), droppable=True) for i in range(5)]
    kept = [lane.submit(lambda i=i: seen.append(i)) for i in range(5, 8)]  # closing calls: always queued
    assert time.perf_counter() - t < 0.5, "the caller waited for a held lane"
    assert took == [True, False, False, False, False] and kept == [True] * 3
    assert lane.dropped == 4
    gate.set()
    lane.drain()
    assert seen == [0, 5, 6, 7]
    assert lane.weight == 0
    err = capfd.readouterr().err
    assert err.count("MLflow is behind") == 1 and "when each trial ends" in err


def test_drain_of_an_unused_lane_returns_at_once():
    t = time.perf_counter()
    MlflowLane().drain()
    assert time.perf_counter() - t < 0.5


def test_what_waits_is_bounded_by_the_epochs_it_carries_not_by_the_count_of_calls():
    """Memory held for a slow MLflow: droppable calls that carry many epochs fill the lane sooner than
    empty ones, so the epochs waiting stay within the limit, whatever the sweep's size."""
    lane, seen, waiting, gate = MlflowLane(limit=100), [], [], threading.Event()
    lane.submit(gate.wait)

    for i in range(40):  # 40 reports of 30 epochs each: 1,240 of weight if all were queued
        lane.submit(lambda i=i: seen.append(i), weight=31, droppable=True)
        waiting.append(lane.weight)
    assert max(waiting) <= 100 and lane.heaviest <= 100
    assert lane.dropped == 40 - 3  # three fit beside the held call
    light = [lane.submit(lambda: None, droppable=True) for _ in range(6)]  # ... calls that carry nothing still fit
    assert all(light)
    gate.set()
    lane.drain()
    assert seen == [0, 1, 2] and lane.weight == 0


def test_the_limit_comes_from_the_environment_and_a_bad_value_is_refused(monkeypatch):
    from rethink_dist.errors import SweepError

    monkeypatch.setenv(MlflowLane.LIMIT_ENV, "250")
    assert MlflowLane.limit_from_env() == 250
    monkeypatch.delenv(MlflowLane.LIMIT_ENV)
    assert MlflowLane.limit_from_env() == MlflowLane.LIMIT
    for bad in ("0", "-3", "lots", "1.5"):
        monkeypatch.setenv(MlflowLane.LIMIT_ENV, bad)
        with pytest.raises(SweepError, match=f"RETHINK_MLFLOW_LANE_EPOCHS must be a whole number of epochs > 0, got '{bad}'"):
            MlflowLane.limit_from_env()


def test_a_sweep_whose_mlflow_is_behind_gives_every_run_every_epoch_once_at_its_end(tmp_path):
    """A real sweep (synthetic trials, a real Ray and SQLite store) with a lane too small for any
    report (RETHINK_MLFLOW_LANE_EPOCHS=1): every live report is left out, and each trial's end gives
    its run every epoch once, its facts, its summary and its final status."""
    import os
    import subprocess
    import sys
    from pathlib import Path

    from mlflow.tracking import MlflowClient

    repo = Path(__file__).resolve().parents[1]
    trials, epochs = 3, 15
    (tmp_path / "behind.py").write_text(
        'NAME = "behind"\n\ndef trials(data_root=None):\n'
        f'    return [{{"kind": "synthetic", "params": {{"epochs": {epochs}, "epoch_seconds": 0.02, "seed": i, '
        f'"cpus": 0.25}}}} for i in range({trials})]\n')
    store = tmp_path / "store"
    env = {**os.environ, "PYTHONPATH": str(repo), MlflowLane.LIMIT_ENV: "1"}
    p = subprocess.run([sys.executable, "-m", "rethink_dist.cli", "sweep", str(tmp_path / "behind.py"), "--storage",
                        str(store), "--ray-address", "local", "--num-cpus", "2"], capture_output=True, text=True,
                       env=env, timeout=600)
    assert p.returncode == 0, p.stdout[-3000:] + p.stderr[-3000:]
    assert p.stderr.count("MLflow is behind") == 1, p.stderr[-3000:]
    client = MlflowClient(f"sqlite:///{store / 'mlflow.db'}")
    exp = client.get_experiment_by_name("behind")
    runs = [r for r in client.search_runs([exp.experiment_id]) if r.data.tags.get("rethink.role") == "trial"]
    assert len(runs) == trials
    for r in runs:
        steps = sorted(m.step for m in client.get_metric_history(r.info.run_id, "train_loss"))
        assert steps == list(range(1, epochs + 1)), (r.data.tags.get("rethink.trial_id"), steps)
        assert r.info.status == "FINISHED" and r.data.params.get("meta.synthetic") == "True"
        assert any(k.startswith("summary.") for k in r.data.metrics), sorted(r.data.metrics)
