"""A sweep's driver stopped by SIGTERM and SIGHUP (as `kill`, a VM's shutdown or a closed terminal
stop it) at several moments, a second driver of the same sweep, and a driver that died leaving its
lease: each stop ends with 128 + the signal's number and one line that says how to continue, and the
`--resume`s that follow finish the sweep with every epoch exactly once in Parquet and in MLflow.
Real drivers, real signals (to the driver's pid alone), real Ray, the SQLite MLflow store."""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import pandas as pd
import pytest
from conftest import wait_for, wait_until_it_handles_signals

from rethink_dist.sweep.lease import LEASE_FILE, STALE_S, Lease

REPO = Path(__file__).resolve().parents[1]
ENV = {**os.environ, "PYTHONPATH": str(REPO)}
EPOCHS = 150  # long enough that a second driver can be started and refused while the first runs
SWEEP = f"""
NAME = "stops"

def trials(data_root=None):
    return [{{"model": {{"name": "mlp_1x512"}}, "corruption": {{"kind": "labels", "level": level}},
             "optim": {{"epochs": {EPOCHS}}}}} for level in (0.0, 0.5, 1.0)]
"""


def _parquet(path: Path) -> pd.DataFrame | None:
    try:
        return pd.read_parquet(path)
    except (OSError, ValueError):
        return None


class Driver:
    def __init__(self, tmp: Path, name: str, cmd: list[str]):
        self.log_path = tmp / f"{name}.log"
        self.log = open(self.log_path, "w")
        self.proc = subprocess.Popen(cmd, stdout=self.log, stderr=subprocess.STDOUT, env=ENV)

    def stop(self, sig: int) -> None:
        self.proc.send_signal(sig)  # the driver alone, by its handle

    def wait(self, timeout: float = 180) -> tuple[int, str]:
        try:
            self.proc.wait(timeout=timeout)
        finally:
            if self.proc.poll() is None:
                self.proc.kill()
                self.proc.wait()
            self.log.close()
        return self.proc.returncode, self.log_path.read_text()


def _stop_line(log: str) -> str:
    """The line that says how the sweep ended."""
    lines = [ln for ln in log.splitlines() if ln.startswith(("sweep 'stops'", "rethink-dist: sweep 'stops'"))]
    assert lines, log[-3000:]
    return lines[-1]


def test_sigterm_and_sighup_stop_a_sweep_that_resume_finishes(tmp_path):
    path = tmp_path / "stops.py"
    path.write_text(SWEEP)
    store = tmp_path / "store"
    parquet = store / "stops" / "trials.parquet"
    cmd = [sys.executable, "-m", "rethink_dist.cli", "sweep", str(path), "--storage", str(store),
           "--ray-address", "local", "--num-cpus", "1", "--max-concurrent", "1", "--report-seconds", "0"]

    # 1. SIGTERM before Ray has started (the driver is still importing its libraries)
    d = Driver(tmp_path, "1-before-ray", cmd)
    wait_until_it_handles_signals(d.proc)
    time.sleep(0.5)
    d.stop(signal.SIGTERM)
    rc, log = d.wait()
    assert rc == 143, (rc, log[-3000:])
    last = log.strip().splitlines()[-1]
    assert last.startswith("rethink-dist: ") and "stopped by SIGTERM" in last, log[-3000:]
    assert "SIGTERM received" not in log and "Traceback" not in log, log[-3000:]

    # 2. SIGHUP while the trials run; meanwhile a second driver of the same sweep is refused. (A stop
    # that came before sweep.json was written left nothing to resume: the line then named no --resume.)
    began = (store / "stops" / "sweep.json").exists()
    assert began == ("--resume" in last), log[-3000:]
    d = Driver(tmp_path, "2-running", cmd + (["--resume"] if began else []))
    wait_for(lambda: (t := _parquet(parquet)) is not None and t["epoch"].max() >= 3, 300, "epochs in Parquet")
    second = subprocess.run(cmd + ["--resume"], capture_output=True, text=True, env=ENV, timeout=120)
    assert second.returncode == 2, (second.returncode, second.stderr[-3000:])
    refusal = second.stderr.strip().splitlines()
    assert len(refusal) == 1 and f"pid {d.proc.pid} on {socket.gethostname()}" in refusal[0], second.stderr
    d.stop(signal.SIGHUP)
    rc, log = d.wait()
    assert rc == 129, (rc, log[-3000:])
    assert "unfinished (stopped by SIGHUP: continue with --resume)" in _stop_line(log), log[-3000:]
    assert "Failed to fetch metrics" not in log and "Tuner.restore(" not in log, log[-3000:]
    assert not (store / "stops" / LEASE_FILE).exists(), "the stopped driver left its lease"

    # 3. SIGTERM just as a result is written, then a second SIGTERM while the driver stops
    d = Driver(tmp_path, "3-writing", cmd + ["--resume"])
    assert "resume: " in wait_for(lambda: "resume: " in d.log_path.read_text() and d.log_path.read_text(), 120,
                                "the resume's line")
    mtime = parquet.stat().st_mtime_ns
    wait_for(lambda: parquet.stat().st_mtime_ns != mtime, 300, "a Parquet write")
    d.stop(signal.SIGTERM)
    time.sleep(0.3)
    d.stop(signal.SIGTERM)
    rc, log = d.wait()
    assert rc == 143, (rc, log[-3000:])
    assert "stopped by SIGTERM" in _stop_line(log) and "--resume" in _stop_line(log), log[-3000:]
    assert "SIGTERM received" not in log, log[-3000:]

    # 4. what is left finishes: every epoch of every trial exactly once, in Parquet and in MLflow
    rc, log = Driver(tmp_path, "4-finish", cmd + ["--resume"]).wait(timeout=600)
    assert rc == 0, log[-3000:]
    assert "resume: " in log and "3/3 trials with results, 0 failed" in log, log[-3000:]
    table = pd.read_parquet(parquet)
    assert not table.duplicated(["trial_id", "epoch"]).any()
    assert table.groupby("trial_id")["finished"].any().all() and table["trial_id"].nunique() == 3
    from mlflow.tracking import MlflowClient

    client = MlflowClient(f"sqlite:///{store / 'mlflow.db'}")
    exp = client.get_experiment_by_name("stops")
    trials = [r for r in client.search_runs([exp.experiment_id]) if r.data.tags.get("rethink.role") == "trial"]
    assert len(trials) == 3
    for run in trials:
        epochs = table[table["trial_id"] == run.data.tags["rethink.trial_id"]]["epoch"]
        steps = [m.step for m in client.get_metric_history(run.info.run_id, "train_loss")]
        assert sorted(steps) == sorted(epochs) == list(range(1, int(epochs.max()) + 1)), run.data.tags
        assert run.info.status == "FINISHED"


def test_a_lease_left_by_a_dead_driver_does_not_block(tmp_path):
    """A driver that died (SIGKILL, a lost node) leaves driver.lease: on this host a dead pid frees it,
    and so does a pid that was reused by a younger process; on another host only its age does."""
    dead = subprocess.Popen([sys.executable, "-c", "pass"])
    dead.wait()
    host = socket.gethostname()
    now = time.time()
    cases = {
        "dead pid": ({"host": host, "pid": dead.pid, "since": now - 5, "renewed": now - 1}, True),
        "reused pid": ({"host": host, "pid": os.getpid(), "since": now - 10**6, "renewed": now}, True),
        "alive": ({"host": host, "pid": os.getppid(), "since": now, "renewed": now}, False),
        "other host, renewed": ({"host": "elsewhere", "pid": 1, "since": now - 100, "renewed": now - 1}, False),
        "other host, silent": ({"host": "elsewhere", "pid": 1, "since": now - 999, "renewed": now - STALE_S - 5}, True),
    }
    for name, (holder, free) in cases.items():
        folder = tmp_path / name.replace(" ", "_").replace(",", "")
        folder.mkdir()
        (folder / LEASE_FILE).write_text(json.dumps(holder))
        lease = Lease(folder, "s")
        if free:
            with lease:
                assert json.loads((folder / LEASE_FILE).read_text())["pid"] == os.getpid(), name
            assert not (folder / LEASE_FILE).exists(), name
        else:
            from rethink_dist.errors import SweepError

            with pytest.raises(SweepError, match=f"pid {holder['pid']} on {holder['host']}"):
                lease.acquire()
            assert json.loads((folder / LEASE_FILE).read_text()) == holder, f"{name}: a refused lease changed it"
