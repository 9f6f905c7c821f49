"""Shared fixtures: a real `mlflow server` on 127.0.0.1 and a real multi-node Ray cluster.

Everything a fixture starts, it stops by its own handle or process id.
"""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import pytest

os.environ.setdefault("MLFLOW_DISABLE_TELEMETRY", "true")
os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")

REPO = Path(__file__).resolve().parents[1]
VENV_BIN = Path(sys.executable).parent


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def stop_process(proc: subprocess.Popen, timeout: float = 30.0) -> None:
    """SIGTERM the process (and its session, which only it started), then SIGKILL if needed."""
    if proc.poll() is not None:
        return
    try:
        os.killpg(proc.pid, signal.SIGTERM)
    except ProcessLookupError:
        return
    try:
        proc.wait(timeout)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait(10)


def node_ports() -> list[str]:
    """Every port a node would otherwise take at a fixed default (shared machine: never collide)."""
    return [f"--{name}={free_port()}" for name in (
        "node-manager-port", "object-manager-port", "dashboard-agent-listen-port", "dashboard-agent-grpc-port",
        "runtime-env-agent-port", "metrics-export-port")]


def process_tree(proc: subprocess.Popen) -> list:
    import psutil

    try:
        root = psutil.Process(proc.pid)
        return [root] + root.children(recursive=True)
    except psutil.NoSuchProcess:
        return []


def kill_node(proc: subprocess.Popen) -> None:
    """SIGKILL a Ray node a test started: its `ray start --block`, every process under it, its group."""
    import psutil

    for p in process_tree(proc):
        try:
            p.kill()
        except psutil.NoSuchProcess:
            pass
    try:
        os.killpg(proc.pid, signal.SIGKILL)
    except ProcessLookupError:
        pass
    proc.wait(30)


def start_mlflow_server(root: Path, port: int | None = None) -> tuple[subprocess.Popen, str]:
    """A real `mlflow server` (SQLite store and artifacts under ``root``) on 127.0.0.1; (process, http URI)
    once it answers /health. Stop it with :func:`stop_process`."""
    port = port or free_port()
    log = open(root / "server.log", "a")
    proc = subprocess.Popen(
        [str(VENV_BIN / "mlflow"), "server", "--backend-store-uri", f"sqlite:///{root}/mlflow.db",
         "--artifacts-destination", str(root / "artifacts"), "--host", "127.0.0.1", "--port", str(port),
         "--workers", "1"],
        stdout=log, stderr=subprocess.STDOUT, start_new_session=True, cwd=root,
    )
    log.close()  # the child keeps its own handle
    uri = f"http://127.0.0.1:{port}"
    deadline = time.time() + 120
    while True:
        if proc.poll() is not None:
            raise RuntimeError(f"mlflow server exited: {(root / 'server.log').read_text()[-2000:]}")
        try:
            with urllib.request.urlopen(uri + "/health", timeout=2) as r:
                if r.status == 200:
                    return proc, uri
        except OSError:
            pass
        if time.time() > deadline:
            stop_process(proc)
            raise RuntimeError("mlflow server did not answer /health within 120 s")
        time.sleep(0.5)


@pytest.fixture(scope="session")
def mlflow_server(tmp_path_factory):
    """A real `mlflow server` (SQLite store) on 127.0.0.1; yields its http URI."""
    proc, uri = start_mlflow_server(tmp_path_factory.mktemp("mlflow"))
    yield uri
    stop_process(proc)


@pytest.fixture(scope="module")
def ray_two_nodes():
    """A real Ray cluster of two nodes on this machine (1 CPU each, custom resources node_a/node_b)."""
    import ray
    from ray.cluster_utils import Cluster

    cluster = Cluster(
        initialize_head=True,
        head_node_args={"num_cpus": 1, "resources": {"node_a": 1}, "include_dashboard": False},
    )
    worker = cluster.add_node(num_cpus=1, resources={"node_b": 1})
    cluster.wait_for_nodes()
    ray.init(address=cluster.address)
    yield cluster, worker
    ray.shutdown()
    cluster.shutdown()


def one_line_error(p, *needles):
    """A command's bad-input exit: code 2 and one line on stderr naming each of ``needles``."""
    lines = p.stderr.strip().splitlines()
    assert p.returncode == 2, (p.returncode, p.stderr[-2000:])
    assert len(lines) == 1 and lines[0].startswith("rethink-dist: error: "), p.stderr
    for n in needles:
        assert n in lines[0], (n, lines[0])
    return lines[0]


def wait_until_it_handles_signals(proc: subprocess.Popen, timeout: float = 60.0) -> None:
    """Wait until ``proc`` catches SIGTERM and SIGHUP (its /proc status's SigCgt mask): the command
    installs its handlers for SIGINT, SIGTERM and SIGHUP together as it starts. Before that moment
    no program can answer a signal (the interpreter itself is still starting), so a test's "moment"
    of a signal counts from here, the same on a quiet and on a loaded machine."""
    wanted = (1 << (signal.SIGTERM - 1)) | (1 << (signal.SIGHUP - 1))
    deadline = time.time() + timeout
    while time.time() < deadline:
        assert proc.poll() is None, f"the command ended (exit {proc.returncode}) before it handled signals"
        try:
            status = Path(f"/proc/{proc.pid}/status").read_text()
        except OSError:
            status = ""
        caught = next((int(ln.split()[1], 16) for ln in status.splitlines() if ln.startswith("SigCgt:")), 0)
        if caught & wanted == wanted:
            return
        time.sleep(0.01)
    raise AssertionError(f"the command did not install its signal handlers within {timeout:.0f} s")


def wait_for(pred, timeout: float, what: str, interval: float = 0.2):
    """``pred()``'s first true value, polled every ``interval`` s; fails after ``timeout`` s naming ``what``."""
    deadline = time.time() + timeout
    while time.time() < deadline:
        value = pred()
        if value:
            return value
        time.sleep(interval)
    raise AssertionError(f"timed out after {timeout:.0f} s waiting for {what}")
