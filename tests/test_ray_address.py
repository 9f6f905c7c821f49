"""A cluster address Ray cannot use is bad input like any other: one line naming the address, the
cause and what to do, exit code 2, within seconds, and nothing written (no results folder, no
sweep.json, no MLflow store, no Tune folder, no lease). Through the real command, against a port
nobody listens on, sockets that are not Ray, a real Ray head with token authentication, a GCS
that reports another Ray version, and addresses that do not parse."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import tempfile
import threading
import time
from concurrent import futures
from pathlib import Path

import pytest

from conftest import REPO, VENV_BIN, free_port, kill_node, node_ports, one_line_error

CLI = [sys.executable, "-m", "rethink_dist.cli"]
QUICK = REPO / "sweeps" / "quick.py"
LIMIT_S = 15.0  # what a refusal may take, the interpreter's start and Ray's import included


def client_env(home: Path, **extra: str) -> dict[str, str]:
    """The command's environment: its own HOME (no token of this machine's), no Ray address or
    token settings but ``extra``."""
    env = {k: v for k, v in os.environ.items()
           if k not in ("RAY_ADDRESS", "RAY_AUTH_MODE", "RAY_AUTH_TOKEN", "RAY_AUTH_TOKEN_PATH")}
    home.mkdir(exist_ok=True)
    return {**env, "HOME": str(home), "PYTHONPATH": str(REPO), "RAY_USAGE_STATS_ENABLED": "0", **extra}


def refused(tmp_path: Path, address: str | None, *needles: str, env: dict[str, str] | None = None) -> str:
    """Run a smoke sweep at ``address`` (None: $RAY_ADDRESS of ``env``) from an empty folder; assert
    the one-line refusal naming ``needles``, within LIMIT_S, with nothing written. Returns the line."""
    work = tmp_path / "work"
    work.mkdir()
    storage = work / "storage"
    args = [str(QUICK), "--smoke", "--storage", str(storage)] + (["--ray-address", address] if address else [])
    start = time.monotonic()
    p = subprocess.run(CLI + ["sweep"] + args, capture_output=True, text=True, timeout=120, cwd=work,
                       env=env or client_env(tmp_path / "home"))
    took = time.monotonic() - start
    line = one_line_error(p, *needles)
    assert took < LIMIT_S, f"the refusal took {took:.1f} s: {line}"
    assert not storage.exists(), f"written before the address was known to work: {sorted(storage.rglob('*'))}"
    assert list(work.iterdir()) == [], list(work.iterdir())
    print(f"{took:.2f} s: {line}")
    return line


def probe(address: str, env: dict[str, str]) -> subprocess.CompletedProcess:
    """The probe alone, in a process of its own with ``env``: what a sweep would find at ``address``."""
    code = "import sys; from rethink_dist.sweep.address import probe_ray_address; probe_ray_address(sys.argv[1])"
    return subprocess.run([sys.executable, "-c", code, address], capture_output=True, text=True, timeout=60,
                          env=env)


# ------------------------------------------------------------------ nothing listens
@pytest.mark.parametrize("via", ["flag", "env"])
def test_nobody_listening_is_refused_at_once(tmp_path, via):
    address = f"127.0.0.1:{free_port()}"
    if via == "flag":
        refused(tmp_path, address, f"--ray-address {address}", "nothing answers", "refused")
    else:
        env = client_env(tmp_path / "home", RAY_ADDRESS=address)
        refused(tmp_path, None, f"RAY_ADDRESS={address}", "nothing answers", "refused", env=env)


# ------------------------------------------------------------------ something listens that is not Ray
class SilentServer:
    """A TCP port that accepts connections and never says a word."""

    def __init__(self):
        self.sock = socket.socket()
        self.sock.bind(("127.0.0.1", 0))
        self.sock.listen(8)
        self.sock.settimeout(0.2)
        self.port = self.sock.getsockname()[1]
        self.held: list[socket.socket] = []
        self.stop = threading.Event()
        self.thread = threading.Thread(target=self._accept, daemon=True)
        self.thread.start()

    def _accept(self):
        while not self.stop.is_set():
            try:
                self.held.append(self.sock.accept()[0])
            except OSError:
                pass

    def close(self):
        self.stop.set()
        self.thread.join(5)
        for s in self.held:
            s.close()
        self.sock.close()


class HttpServer:
    """A plain HTTP/1 server (what a dashboard's or MLflow's port answers)."""

    def __init__(self):
        from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), BaseHTTPRequestHandler)
        self.port = self.server.server_address[1]
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)
        self.thread.start()

    def close(self):
        self.server.shutdown()
        self.server.server_close()
        self.thread.join(5)


@pytest.mark.parametrize("server", [SilentServer, HttpServer])
def test_a_port_that_is_not_ray_is_refused(tmp_path, server):
    s = server()
    try:
        address = f"127.0.0.1:{s.port}"
        refused(tmp_path, address, f"--ray-address {address}", "does not answer as a Ray cluster", "GCS")
    finally:
        s.close()


# ------------------------------------------------------------------ a real head that wants a token
class TokenHead:
    """One `ray start --head --block` (no dashboard, no worker) with token authentication, in its own
    session, HOME and --temp-dir inside the test's folder; ended by its process ids."""

    def __init__(self, root: Path):
        self.home = root / "head-home"
        self.home.mkdir()
        self.log = root / "head.log"
        env = {**client_env(self.home), "RAY_AUTH_MODE": "token"}
        subprocess.run([str(VENV_BIN / "ray"), "get-auth-token", "--generate"], env=env, check=True,
                       capture_output=True, timeout=60)
        self.token = (self.home / ".ray" / "auth_token").read_text().strip()
        self.port = free_port()
        self.address = f"127.0.0.1:{self.port}"
        self.ray_tmp = Path(tempfile.mkdtemp(prefix="rd-ray-"))  # Unix socket paths: a short folder
        with open(self.log, "w") as log:
            self.proc = subprocess.Popen(
                [str(VENV_BIN / "ray"), "start", "--head", f"--port={self.port}", "--node-ip-address=127.0.0.1",
                 "--num-cpus=1", "--object-store-memory=100000000", "--include-dashboard=false",
                 "--dashboard-host=127.0.0.1", f"--dashboard-port={free_port()}",
                 f"--ray-client-server-port={free_port()}", f"--temp-dir={self.ray_tmp}", "--disable-usage-stats",
                 "--block"] + node_ports(),
                env=env, stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
        deadline = time.time() + 120
        while "Ray runtime started" not in self.log.read_text():
            if self.proc.poll() is not None or time.time() > deadline:
                self.shutdown()
                raise RuntimeError(f"the head did not start: {self.log.read_text()[-2000:]}")
            time.sleep(0.5)

    def shutdown(self):
        import shutil

        kill_node(self.proc)
        shutil.rmtree(self.ray_tmp, ignore_errors=True)


@pytest.fixture(scope="module")
def token_head(tmp_path_factory):
    head = TokenHead(tmp_path_factory.mktemp("head"))
    try:
        yield head
    finally:
        head.shutdown()


def test_the_head_answers_the_probe_with_its_token(token_head, tmp_path):
    """The control: with RAY_AUTH_MODE=token and the cluster's token, from the environment or from
    the token file in HOME, the address passes; the refusals below are the token's alone."""
    p = probe(token_head.address, client_env(tmp_path / "a", RAY_AUTH_MODE="token", RAY_AUTH_TOKEN=token_head.token))
    assert p.returncode == 0 and not p.stderr, p.stderr
    home = tmp_path / "b"
    (home / ".ray").mkdir(parents=True)
    (home / ".ray" / "auth_token").write_text(token_head.token)
    p = probe(token_head.address, client_env(home, RAY_AUTH_MODE="token"))
    assert p.returncode == 0 and not p.stderr, p.stderr


def test_a_client_without_token_mode_is_told_the_cluster_wants_a_token(token_head, tmp_path):
    line = refused(tmp_path, token_head.address, f"--ray-address {token_head.address}", "wants a token",
                   "RAY_AUTH_MODE=token", "ray get-auth-token")
    assert token_head.token not in line


@pytest.mark.parametrize("where", ["env", "file"])
def test_a_wrong_token_is_refused(token_head, tmp_path, where):
    home = tmp_path / "home"
    wrong = "0" * len(token_head.token)
    if where == "env":
        env = client_env(home, RAY_AUTH_MODE="token", RAY_AUTH_TOKEN=wrong)
    else:
        (home / ".ray").mkdir(parents=True)
        (home / ".ray" / "auth_token").write_text(wrong)
        env = client_env(home, RAY_AUTH_MODE="token")
    line = refused(tmp_path, token_head.address, f"--ray-address {token_head.address}", "refused the token",
                   env=env)
    assert wrong not in line and token_head.token not in line


def test_token_mode_without_any_token_is_refused(token_head, tmp_path):
    env = client_env(tmp_path / "home", RAY_AUTH_MODE="token")
    refused(tmp_path, token_head.address, f"--ray-address {token_head.address}", "RAY_AUTH_MODE=token",
            "token", "missing", env=env)


# ------------------------------------------------------------------ a GCS of another version
class FakeGcs:
    """A gRPC server on 127.0.0.1 with the GCS's key-value service alone, reporting ``metadata`` as
    the cluster's (what a head writes when it starts: its Ray and Python versions)."""

    def __init__(self, metadata: dict):
        import grpc

        from ray.core.generated import gcs_service_pb2, gcs_service_pb2_grpc

        class KV(gcs_service_pb2_grpc.InternalKVGcsServiceServicer):
            def InternalKVGet(self, request, context):
                if request.key == b"CLUSTER_METADATA" and request.namespace == b"cluster":
                    return gcs_service_pb2.InternalKVGetReply(value=json.dumps(metadata).encode())
                return gcs_service_pb2.InternalKVGetReply()

        self.server = grpc.server(futures.ThreadPoolExecutor(max_workers=2))
        gcs_service_pb2_grpc.add_InternalKVGcsServiceServicer_to_server(KV(), self.server)
        self.port = self.server.add_insecure_port("127.0.0.1:0")
        self.server.start()

    def close(self):
        self.server.stop(grace=None).wait(5)


def _versions(ray_version: str | None = None, python: str | None = None) -> dict:
    import ray

    return {"ray_version": ray_version or ray.__version__,
            "python_version": python or ".".join(map(str, sys.version_info[:3])), "ray_init_cluster": False}


def test_the_fake_gcs_of_this_version_passes(tmp_path):
    """The control for the version test: the same fake, reporting this machine's versions, passes."""
    gcs = FakeGcs(_versions())
    try:
        p = probe(f"127.0.0.1:{gcs.port}", client_env(tmp_path / "home"))
        assert p.returncode == 0 and not p.stderr, p.stderr
    finally:
        gcs.close()


@pytest.mark.parametrize("other", [{"ray_version": "2.9.3"}, {"python": "3.10.14"}])
def test_a_cluster_of_another_version_is_refused(tmp_path, other):
    import ray

    gcs = FakeGcs(_versions(**other))
    try:
        address = f"127.0.0.1:{gcs.port}"
        line = refused(tmp_path, address, f"--ray-address {address}", "runs Ray", f"this machine Ray {ray.__version__}")
        assert other.get("ray_version", other.get("python")) in line
    finally:
        gcs.close()


# ------------------------------------------------------------------ addresses that do not parse
@pytest.mark.parametrize("address, needle", [
    ("nohost", "expected HOST:PORT"),
    ("127.0.0.1:notaport", "'notaport' is not a number"),
    ("127.0.0.1:70000", "'70000' is not a number"),
    (":6379", "expected HOST:PORT"),
    ("ray://127.0.0.1:x", "'x' is not a number"),
])
def test_a_malformed_address_is_refused(tmp_path, address, needle):
    refused(tmp_path, address, f"--ray-address {address}", "is not a Ray address", needle)


def test_an_unknown_host_is_refused(tmp_path):
    refused(tmp_path, "no-such-host.invalid:6379", "--ray-address no-such-host.invalid:6379", "is not known")
