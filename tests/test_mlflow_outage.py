"""A tracking server that goes away during a sweep: the trials keep training, every epoch still
lands in Parquet, and the MLflow runs are back-filled (every epoch exactly once) when the server
answers again: at the sweep's end, or later with ``--resume``.

A real `mlflow server` (its own process, stopped by its handle at the end) sits behind a TCP gate
of the test's own: closing the gate stops listening on the sweep's port and drops its open
connections (what a client sees of a server that went away: refused connections), opening it
listens again. A restarted server would take 15-30 s to answer again, long enough on a fast
machine for the sweep to end first."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path

import pandas as pd

from conftest import free_port, start_mlflow_server, stop_process

REPO = Path(__file__).resolve().parents[1]
CLI = [sys.executable, "-m", "rethink_dist.cli"]
SWEEP = """
NAME = "outage"

def trials(data_root=None):
    return [{{"model": {{"name": "mlp_3x512"}}, "corruption": {{"kind": "labels", "level": level}},
              "optim": {{"epochs": {epochs}}}}} for level in (0.0, 1.0)]
"""


def _epochs(parquet: Path) -> int:
    try:
        return int(pd.read_parquet(parquet).groupby("trial_id")["epoch"].max().min())
    except Exception:  # not written yet, or being replaced
        return 0


def _wait(cond, timeout: float, what: str):
    deadline = time.time() + timeout
    while time.time() < deadline:
        if cond():
            return
        time.sleep(0.3)
    raise AssertionError(f"timed out waiting for {what}")


def _check_complete(uri: str, parquet: Path, epochs: int) -> None:
    from mlflow.tracking import MlflowClient

    df = pd.read_parquet(parquet)
    assert not df.duplicated(["trial_id", "epoch"]).any()
    assert all(sorted(g) == list(range(1, epochs + 1)) for _, g in df.groupby("trial_id")["epoch"])
    client = MlflowClient(uri)
    exp = client.get_experiment_by_name("outage")
    runs = client.search_runs([exp.experiment_id], "tags.`rethink.role` = 'trial'")
    assert len(runs) == 2
    for run in runs:
        steps = [m.step for m in client.get_metric_history(run.info.run_id, "train_loss")]
        assert sorted(steps) == list(range(1, epochs + 1)), "MLflow lacks or repeats an epoch"
        assert run.info.status == "FINISHED"
        assert "meta.params" in run.data.params


class Gate:
    """A TCP forwarder on 127.0.0.1 to ``target_port``. Open, it passes bytes both ways; closed, it does
    not listen and has dropped every connection it held."""

    def __init__(self, target_port: int):
        self.target, self.port = target_port, free_port()
        self.lock = threading.Lock()
        self.conns: set[socket.socket] = set()
        self.listener: socket.socket | None = None
        self.open()

    def open(self) -> str:
        sock = socket.socket()
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.bind(("127.0.0.1", self.port))
        sock.listen(64)
        self.listener = sock
        threading.Thread(target=self._accept, args=(sock,), daemon=True).start()
        return f"http://127.0.0.1:{self.port}"

    def close(self) -> None:
        sock, self.listener = self.listener, None
        if sock is not None:
            try:
                sock.shutdown(socket.SHUT_RDWR)  # wakes the accepting thread (close alone would not)
            except OSError:
                pass
            sock.close()
        with self.lock:
            conns, self.conns = self.conns, set()
        for c in conns:
            try:
                c.shutdown(socket.SHUT_RDWR)
            except OSError:
                pass
            c.close()

    def _accept(self, sock: socket.socket) -> None:
        while True:
            try:
                client, _ = sock.accept()
            except OSError:  # closed
                return
            try:
                upstream = socket.create_connection(("127.0.0.1", self.target))
            except OSError:
                client.close()
                continue
            with self.lock:
                self.conns |= {client, upstream}
            for a, b in ((client, upstream), (upstream, client)):
                threading.Thread(target=self._pump, args=(a, b), daemon=True).start()

    def _pump(self, src: socket.socket, dst: socket.socket) -> None:
        try:
            while data := src.recv(65536):
                dst.sendall(data)
        except OSError:
            pass
        finally:  # one side ended: end both (the other pump then ends too)
            for c in (src, dst):
                try:
                    c.shutdown(socket.SHUT_RDWR)
                except OSError:
                    pass
            src.close()
            with self.lock:
                self.conns.discard(src)


class Outage:
    """A server of our own behind a gate and a sweep logging through it; the gate closes once the
    trials train."""

    def __init__(self, tmp: Path, epochs: int):
        self.root, self.epochs = tmp / "mlflow", epochs
        self.root.mkdir()
        self.server, server_uri = start_mlflow_server(self.root)
        self.gate = Gate(int(server_uri.rsplit(":", 1)[1]))
        uri = f"http://127.0.0.1:{self.gate.port}"
        (tmp / "outage.py").write_text(SWEEP.format(epochs=epochs))
        self.file, self.store = tmp / "outage.py", tmp / "store"
        self.parquet = self.store / "outage" / "trials.parquet"
        self.sweep = subprocess.Popen(
            CLI + ["sweep", str(self.file), "--storage", str(self.store), "--tracking-uri", uri,
                   "--ray-address", "local", "--num-cpus", "2", "--report-seconds", "0"],
            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env={**os.environ, "PYTHONPATH": str(REPO)})
        try:
            _wait(lambda: _epochs(self.parquet) >= 3, 300, "3 epochs of each trial")
            self.gate.close()  # the tracking server goes away mid-sweep
        except BaseException:
            self.close()
            raise

    def start_server(self) -> str:
        return self.gate.open()

    def finish(self) -> tuple[str, str]:
        out, err = self.sweep.communicate(timeout=600)
        assert self.sweep.returncode == 0, out[-3000:] + err[-3000:]
        return out, err

    def close(self) -> None:
        if self.sweep.poll() is None:
            self.sweep.kill()
            self.sweep.wait()
        self.gate.close()
        stop_process(self.server)


def test_server_back_during_the_sweep(tmp_path):
    o = Outage(tmp_path, epochs=160)  # long enough to restart the server while the trials train
    try:
        at_stop = _epochs(o.parquet)
        _wait(lambda: _epochs(o.parquet) >= at_stop + 10, 300, "training to go on without MLflow")
        assert _epochs(o.parquet) < o.epochs, "the sweep ended before the server could come back: make it longer"
        uri = o.start_server()  # and comes back
        _, err = o.finish()
        assert "MLflow at" in err and "back-filled" in err
        _check_complete(uri, o.parquet, o.epochs)
    finally:
        o.close()


def test_server_back_after_the_sweep_backfilled_by_resume(tmp_path):
    o = Outage(tmp_path, epochs=30)  # gone for the rest of the sweep
    try:
        _, err = o.finish()
        assert "--resume" in err
        df = pd.read_parquet(o.parquet)
        assert df["finished"].sum() == 2 and len(df) == 2 * o.epochs  # every epoch landed without MLflow
        uri = o.start_server()
        again = subprocess.run(CLI + ["sweep", str(o.file), "--storage", str(o.store), "--tracking-uri", uri,
                                      "--ray-address", "local", "--num-cpus", "2", "--resume"],
                               capture_output=True, text=True, env={**os.environ, "PYTHONPATH": str(REPO)},
                               timeout=600)
        assert again.returncode == 0, again.stdout[-3000:] + again.stderr[-3000:]
        _check_complete(uri, o.parquet, o.epochs)
    finally:
        o.close()
