"""The cluster launcher configs (cluster/*.yaml) and `ray job submit` on a real multi-node Ray.

1. Every config passes the validation `ray up` runs (Ray's own prepare_config + validate_config
   against ray-schema.json; the provider's network bootstrap is left out), installs this package
   with its FFCV extra and apt packages, pins Ray, uses token authentication, and binds no
   service to a public interface.
2. A sweep submitted with `ray job submit` (a script executed on the head, the same path as
   `ray submit`) to a two-node Ray with token authentication ships the user's own code to both
   nodes and logs every epoch once. Tune's storage is a folder on this machine, which both nodes
   share (on a cloud it is the bucket). Nodes lost mid-sweep, with and without notice, on Ray's
   own autoscaler: tests/test_elastic.py.
"""

from __future__ import annotations

import copy
import ipaddress
import json
import os
import re
import shlex
import shutil
import signal
import subprocess
import tempfile
import time
import urllib.error
import urllib.request
from pathlib import Path

import pytest
import yaml

from conftest import REPO, VENV_BIN, free_port, kill_node, node_ports, process_tree

CLUSTER = REPO / "cluster"
# The configs of `ray up`; cluster/laptop.yaml (Ray's local autoscaler, started by `ray start`) has
# its own tests below and in tests/test_elastic.py.
LAPTOP = CLUSTER / "laptop.yaml"
CONFIGS = sorted(p for p in CLUSTER.glob("*.yaml") if p != LAPTOP)
CLOUDS = {"aws", "gcp"}


def ray_up_config(path: Path) -> dict:
    """The config as `ray up` sees it after its checks: defaults filled, setup commands merged.

    This is ray.autoscaler._private.commands._bootstrap_config without the provider's bootstrap
    (which calls the cloud's API): prepare_config fills the provider defaults and merges
    setup_commands into head_/worker_setup_commands; validate_config checks ray-schema.json.
    """
    from ray.autoscaler._private.util import prepare_config, validate_config

    config = prepare_config(yaml.safe_load(path.read_text()))
    validate_config(config)
    return config


def all_commands(config: dict) -> list[str]:
    keys = ("initialization_commands", "head_setup_commands", "worker_setup_commands",
            "head_start_ray_commands", "worker_start_ray_commands")
    cmds = [c for k in keys for c in config.get(k, [])]
    for node_type in config["available_node_types"].values():
        cmds += node_type.get("initialization_commands", []) + node_type.get("worker_setup_commands", [])
    return cmds


# The system packages FFCV builds against; the Makefile's APT_PACKAGES holds them too (with others
# only the test machine needs, e.g. the report test's browser).
FFCV_APT_PACKAGES = ["pkg-config", "libopencv-dev", "libturbojpeg0-dev"]


def makefile_apt_packages() -> list[str]:
    m = re.search(r"^APT_PACKAGES\s*:?=\s*(.+)$", (REPO / "Makefile").read_text(), re.M)
    assert m, "Makefile has no APT_PACKAGES line"
    return m.group(1).split()


def repo_mounts(config: dict) -> list[str]:
    """Remote paths that file_mounts fills with this checkout (local side: the repository root,
    relative to the repository root where `ray up` runs)."""
    return [remote for remote, local in config.get("file_mounts", {}).items()
            if (REPO / os.path.expanduser(local)).resolve() == REPO]


def installs_package(cmds: list[str], mounts: list[str]) -> bool:
    """Some command pip-installs one of the mounted checkouts with the ffcv extra."""
    for cmd in cmds:
        if "pip install" not in cmd:
            continue
        for word in shlex.split(cmd.split("pip install", 1)[1]):
            m = re.fullmatch(r"(.+)\[([\w,\s-]+)\]", word)
            if not m or "ffcv" not in [e.strip() for e in m.group(2).split(",")]:
                continue
            target = m.group(1).replace("$HOME", "~").rstrip("/")
            if any(target == mount.rstrip("/") for mount in mounts):
                return True
    return False


def installs_apt(cmds: list[str], packages: list[str]) -> bool:
    return any("apt-get install" in c and all(re.search(rf"(^|\s){re.escape(p)}(\s|$)", c) for p in packages)
               for c in cmds)


HEAD_IP_VAR = "RETHINK_HEAD_IP"
LOOPBACK = {"127.0.0.1", "localhost"}


def bind_problems(config: dict) -> list[str]:
    """Services that would listen on a public or every interface; [] when there are none."""
    problems = []
    cmds = all_commands(config)
    for cmd in cmds:
        for bad in ("0.0.0.0", "[::]", "--host ::", "--host=::"):
            if bad in cmd:
                problems.append(f"{bad!r} in: {cmd}")
        for m in re.finditer(r"--(?:dashboard-host|host|node-ip-address)[= ]+(\"?)([^\s\"]+)\1", cmd):
            value = m.group(2)
            if value in LOOPBACK or value == f"${HEAD_IP_VAR}":
                continue
            try:
                if ipaddress.ip_address(value).is_private:
                    continue
            except ValueError:
                pass
            problems.append(f"{m.group(0)!r} is neither loopback, a private address nor ${HEAD_IP_VAR}: {cmd}")
        if re.search(r"\bray start\b.*--head", cmd) and not re.search(r"--dashboard-host[= ](127\.0\.0\.1|localhost)\b",
                                                                      cmd):
            problems.append(f"the head's dashboard is not bound to 127.0.0.1 (Ray's default is 0.0.0.0 in its "
                            f"cloud defaults): {cmd}")
        if "mlflow server" in cmd and not re.search(r"--host[= ]", cmd):
            problems.append(f"mlflow server without --host: {cmd}")
    if any(f"${HEAD_IP_VAR}" in c for c in cmds):
        defs = [c for c in config.get("head_setup_commands", []) if f"export {HEAD_IP_VAR}=" in c]
        if not defs or not all("ray.util.get_node_ip_address()" in c for c in defs):
            problems.append(f"${HEAD_IP_VAR} is not set from ray.util.get_node_ip_address() in head_setup_commands")
    provider = config["provider"]
    for ip in [provider.get("head_ip")] + list(provider.get("worker_ips", [])):
        if ip is not None and not ipaddress.ip_address(ip).is_private:
            problems.append(f"provider address {ip} is public")
    return problems


def keys_without_comment(text: str) -> list[str]:
    """Block-mapping keys whose line is not directly below a comment line."""
    lines = text.splitlines()
    missing = []

    def walk(node):
        if isinstance(node, yaml.MappingNode):
            for key, value in node.value:
                if not node.flow_style:
                    i = key.start_mark.line - 1
                    while i >= 0 and not lines[i].strip():
                        i -= 1
                    if i < 0 or not lines[i].strip().startswith("#"):
                        missing.append(f"line {key.start_mark.line + 1}: {key.value}")
                walk(value)
        elif isinstance(node, yaml.SequenceNode):
            for item in node.value:
                walk(item)

    walk(yaml.compose(text))
    return missing


# ------------------------------------------------------------------------------------------
# 1. The configs
# ------------------------------------------------------------------------------------------
def test_the_three_configs_exist():
    assert {p.stem for p in CONFIGS} >= {"aws", "gcp", "local"}


@pytest.mark.parametrize("path", CONFIGS, ids=lambda p: p.name)
def test_config_passes_ray_up_validation(path):
    config = ray_up_config(path)
    assert config["head_node_type"] in config["available_node_types"]


def test_laptop_config_mirrors_the_aws_node_types():
    """cluster/laptop.yaml passes Ray's schema, offers no CPU on the head, and has aws.yaml's worker
    types with their min/max counts (CPU-sized), so a sweep autoscales on a laptop as on AWS."""
    from ray.autoscaler._private.util import validate_config

    laptop, aws = yaml.safe_load(LAPTOP.read_text()), yaml.safe_load((CLUSTER / "aws.yaml").read_text())
    validate_config(laptop)
    assert laptop["provider"]["type"] == "fake_multinode"
    head = laptop["available_node_types"][laptop["head_node_type"]]
    assert head["resources"]["CPU"] == 0 and "--num-cpus=0" in LAPTOP.read_text()
    workers = {k: v for k, v in laptop["available_node_types"].items() if k != laptop["head_node_type"]}
    aws_workers = {k: v for k, v in aws["available_node_types"].items() if k != aws["head_node_type"]}
    assert set(workers) == set(aws_workers)
    for name, spec in workers.items():
        assert (spec["min_workers"], spec["max_workers"]) == (aws_workers[name]["min_workers"],
                                                              aws_workers[name]["max_workers"]), name
        assert "GPU" not in spec["resources"] and spec["resources"]["CPU"] >= 1, name
    assert laptop["max_workers"] == aws["max_workers"]
    assert keys_without_comment(LAPTOP.read_text()) == []


def test_validation_refuses_a_misspelled_key():
    """The check above can fail: Ray's schema refuses keys it does not know."""
    import jsonschema
    from ray.autoscaler._private.util import prepare_config, validate_config

    raw = yaml.safe_load((CLUSTER / "aws.yaml").read_text())
    raw["idle_timeout_minute"] = raw.pop("idle_timeout_minutes")
    with pytest.raises(jsonschema.ValidationError):
        validate_config(prepare_config(raw))


@pytest.mark.parametrize("path", CONFIGS, ids=lambda p: p.name)
def test_setup_installs_this_package_with_ffcv(path):
    config = ray_up_config(path)
    mounts = repo_mounts(config)
    assert mounts, f"{path.name}: no file_mounts entry ships this checkout ('.')"
    packages = FFCV_APT_PACKAGES
    assert set(packages) <= set(makefile_apt_packages()), "the Makefile and the cluster disagree on FFCV's packages"
    for role in ("head_setup_commands", "worker_setup_commands"):
        cmds = config[role]
        assert installs_package(cmds, mounts), f"{path.name}: {role} never pip-installs {mounts}[ffcv]"
        assert installs_apt(cmds, packages), f"{path.name}: {role} never apt-get installs {packages}"


def test_install_check_can_fail():
    config = ray_up_config(CLUSTER / "aws.yaml")
    mounts = repo_mounts(config)
    no_extra = [c.replace("[ffcv]", "") for c in config["head_setup_commands"]]
    assert not installs_package(no_extra, mounts)
    assert not installs_package(config["head_setup_commands"], ["~/elsewhere"])


@pytest.mark.parametrize("path", CONFIGS, ids=lambda p: p.name)
def test_services_bind_private_addresses_only(path):
    assert bind_problems(ray_up_config(path)) == []


def test_bind_check_catches_rays_own_cloud_defaults():
    """Ray's AWS defaults start the dashboard on 0.0.0.0: the check must refuse them."""
    config = ray_up_config(CLUSTER / "aws.yaml")
    from ray.autoscaler._private.util import _get_default_config

    config["head_start_ray_commands"] = _get_default_config({"type": "aws"})["head_start_ray_commands"]
    assert any("0.0.0.0" in p for p in bind_problems(config))
    bad = copy.deepcopy(ray_up_config(CLUSTER / "local.yaml"))
    bad["head_start_ray_commands"] = [c.replace('--host "$RETHINK_HEAD_IP"', "--host 8.8.8.8")
                                      for c in bad["head_start_ray_commands"]]
    assert any("8.8.8.8" in p for p in bind_problems(bad))


def test_head_ip_expression_gives_a_private_address():
    """The expression the configs bind MLflow to, run here: a private (or loopback) address."""
    out = subprocess.run([str(VENV_BIN / "python"), "-c", "import ray.util; print(ray.util.get_node_ip_address())"],
                         capture_output=True, text=True, timeout=60, check=True).stdout.strip()
    assert ipaddress.ip_address(out).is_private, out


@pytest.mark.parametrize("path", CONFIGS, ids=lambda p: p.name)
def test_token_authentication_everywhere(path):
    config = ray_up_config(path)
    assert "~/.ray/auth_token" in config["file_mounts"], "the cluster's token must reach every node"
    starts = [c for c in config["head_start_ray_commands"] + config["worker_start_ray_commands"] if "ray start" in c]
    assert len(starts) == 2
    assert all("RAY_AUTH_MODE=token" in c for c in starts), starts
    assert any("RAY_AUTH_MODE=token" in c for c in config["setup_commands"]), "clients on the nodes need it too"


@pytest.mark.parametrize("path", CONFIGS, ids=lambda p: p.name)
def test_every_key_has_a_comment_above(path):
    assert keys_without_comment(path.read_text()) == []


@pytest.mark.parametrize("name", sorted(CLOUDS))
def test_cloud_layout(name):
    """CPU head on demand; a 1-GPU and an 8-GPU worker type on spot; pinned Ray image; a bucket."""
    import ray

    raw = yaml.safe_load((CLUSTER / f"{name}.yaml").read_text())
    config = ray_up_config(CLUSTER / f"{name}.yaml")
    types = config["available_node_types"]
    head = types[config["head_node_type"]]
    assert head["resources"].get("GPU", 0) == 0

    def spot(node_config):
        if name == "aws":
            return node_config.get("InstanceMarketOptions", {}).get("MarketType") == "spot"
        return node_config.get("scheduling", {}).get("provisioningModel") == "SPOT"

    assert not spot(head["node_config"])
    workers = {k: v for k, v in types.items() if k != config["head_node_type"]}
    assert sorted(v["resources"].get("GPU") for v in workers.values()) == [1, 8]
    assert all(spot(v["node_config"]) for v in workers.values())
    assert all(v["min_workers"] == 0 and v["max_workers"] >= 1 for v in workers.values())
    assert "idle_timeout_minutes" in raw and "max_workers" in raw
    for key in ("image", "head_image"):
        assert config["docker"][key].startswith(f"rayproject/ray:{ray.__version__}-"), config["docker"][key]
    scheme = {"aws": "s3://", "gcp": "gs://"}[name]
    assert any(f"RETHINK_BUCKET={scheme}" in c for c in config["setup_commands"])
    assert any("RETHINK_STORAGE=$RETHINK_BUCKET" in c for c in config["setup_commands"])
    mlflow = [c for c in config["head_start_ray_commands"] if "mlflow server" in c]
    assert len(mlflow) == 1 and "--artifacts-destination \"$RETHINK_BUCKET" in mlflow[0]


@pytest.mark.parametrize("path", CONFIGS, ids=lambda p: p.name)
def test_every_command_is_valid_bash(path):
    config = ray_up_config(path)
    for cmd in all_commands(config):
        r = subprocess.run(["bash", "-n", "-c", cmd], capture_output=True, text=True, timeout=30)
        assert r.returncode == 0, f"{cmd}: {r.stderr}"


@pytest.mark.parametrize("name", sorted(CLOUDS))
def test_data_copy_command_runs(name, tmp_path):
    """The setup command that copies the datasets to a node, run here with local folders for the
    bucket: CIFAR-10 arrives, ImageNet does not (no 8 GPUs here), a missing dataset is no error."""
    config = ray_up_config(CLUSTER / f"{name}.yaml")
    [copy] = [c for c in config["setup_commands"] if "copy_files" in c]
    src = tmp_path / "bucket"
    (src / "cifar10" / "cifar-10-batches-py").mkdir(parents=True)
    (src / "cifar10" / "cifar-10-batches-py" / "data_batch_1").write_bytes(b"x")
    (src / "imagenet").mkdir()
    (src / "imagenet" / "train.beton").write_bytes(b"x")
    (tmp_path / ".rethink_env").write_text(f"export RETHINK_DATA_URI={src} RETHINK_DATA={tmp_path}/data\n")
    env = {**os.environ, "HOME": str(tmp_path), "PATH": f"{VENV_BIN}:{os.environ['PATH']}"}
    r = subprocess.run(["bash", "-c", copy], env=env, capture_output=True, text=True, timeout=120)
    assert r.returncode == 0, r.stderr
    assert (tmp_path / "data" / "cifar10" / "cifar-10-batches-py" / "data_batch_1").read_bytes() == b"x"
    assert not (tmp_path / "data" / "imagenet").exists()
    (tmp_path / ".rethink_env").write_text(f"export RETHINK_DATA_URI={tmp_path}/empty RETHINK_DATA={tmp_path}/d2\n")
    r = subprocess.run(["bash", "-c", copy], env=env, capture_output=True, text=True, timeout=120)
    assert r.returncode == 0 and "no cifar10 under" in r.stdout, r.stdout + r.stderr


def mlflow_server_command(config: dict) -> str:
    [cmd] = [c for c in config["head_start_ray_commands"] if "mlflow server" in c]
    return cmd


def allowed_hosts_problems(config: dict) -> list[str]:
    """The head's MLflow server must accept its cluster's address and port and an SSH tunnel's
    localhost, and nothing else; [] when it does."""
    cmd = mlflow_server_command(config)
    port = re.search(r"--port[= ](\d+)", cmd)
    hosts = re.search(r'--allowed-hosts[= ]"([^"]+)"', cmd)
    if not port or not hosts:
        return [f"no --port or no --allowed-hosts: {cmd}"]
    want = [f"${HEAD_IP_VAR}:{port.group(1)}", "localhost:*", "127.0.0.1:*"]
    problems = [] if hosts.group(1).split(",") == want else [
        f"--allowed-hosts {hosts.group(1)!r}, not {','.join(want)!r}"]
    uri = f"MLFLOW_TRACKING_URI=http://${HEAD_IP_VAR}:{port.group(1)}"
    if not any(uri in c for c in config["head_setup_commands"]):
        problems.append(f"the head's {uri} is not set: the driver would not reach the server on its port")
    return problems


@pytest.mark.parametrize("path", CONFIGS, ids=lambda p: p.name)
def test_mlflow_accepts_its_cluster_and_a_tunnel_only(path):
    assert allowed_hosts_problems(ray_up_config(path)) == []


def test_allowed_hosts_check_can_fail():
    config = ray_up_config(CLUSTER / "aws.yaml")
    for old, new in ((',localhost:*', ''), ('"$RETHINK_HEAD_IP:5000,', '"*,'), ("--port 5000", "--port 5001")):
        bad = copy.deepcopy(config)
        bad["head_start_ray_commands"] = [c.replace(old, new) for c in bad["head_start_ray_commands"]]
        assert allowed_hosts_problems(bad), (old, new)


@pytest.mark.parametrize("path", CONFIGS, ids=lambda p: p.name)
def test_mlflow_pid_file_names_the_server(path, tmp_path):
    """The config's MLflow start command, run here with a stand-in `mlflow` on PATH: the pid file
    holds the server's own process (what the next `ray up` and `ray down` stop), not a shell
    around it, and the command returns at once."""
    import psutil

    config = ray_up_config(path)
    fake = tmp_path / "bin" / "mlflow"
    fake.parent.mkdir()
    fake.write_text("#!/bin/sh\nexec sleep 60\n")
    fake.chmod(0o755)
    (tmp_path / ".rethink_env").write_text(
        f"export RETHINK_HEAD_IP=127.0.0.1 RETHINK_BUCKET={tmp_path}/bucket RETHINK_SHARED={tmp_path}/shared\n")
    (tmp_path / "mlflow").mkdir()
    env = {**os.environ, "HOME": str(tmp_path), "PATH": f"{fake.parent}:{os.environ['PATH']}"}
    t0 = time.time()
    shell = subprocess.Popen(["bash", "-c", mlflow_server_command(config)], env=env, stdout=subprocess.DEVNULL,
                             stderr=subprocess.DEVNULL, start_new_session=True)
    try:
        assert shell.wait(30) == 0 and time.time() - t0 < 10, "the start command did not return at once"
        proc = psutil.Process(int((tmp_path / "mlflow" / "server.pid").read_text()))
        deadline = time.time() + 10
        while proc.cmdline()[:1] != ["sleep"] and time.time() < deadline:  # nohup, then mlflow, exec'd in turn
            time.sleep(0.1)
        assert proc.cmdline()[:2] == ["sleep", "60"], proc.cmdline()  # the stand-in server itself
    finally:
        os.killpg(shell.pid, signal.SIGKILL)  # the command's whole session, the stand-in included
        shell.wait(10)


def test_no_credentials_in_configs():
    pattern = re.compile(r"AKIA[0-9A-Z]{16}|aws_secret_access_key|BEGIN [A-Z ]*PRIVATE KEY|private_key_id", re.I)
    for path in CONFIGS:
        assert not pattern.search(path.read_text()), path.name


# ------------------------------------------------------------------------------------------
# 2. `ray job submit` to a two-node Ray with token authentication
# ------------------------------------------------------------------------------------------
class TokenCluster:
    """A head (with dashboard and job API on 127.0.0.1) and one worker, each a `ray start --block`
    in its own session, token authentication on, HOME and --temp-dir inside the test's folder."""

    def __init__(self, root: Path):
        self.root = root
        self.home = root / "home"
        self.home.mkdir()
        self.env = {**os.environ, "HOME": str(self.home), "RAY_AUTH_MODE": "token", "RAY_USAGE_STATS_ENABLED": "0",
                    "MLFLOW_DISABLE_TELEMETRY": "true", "PYTHONUNBUFFERED": "1",
                    # a lost node is noticed in a few seconds rather than the default ~30
                    "RAY_health_check_period_ms": "1000", "RAY_health_check_failure_threshold": "3"}
        self.env.pop("RAY_ADDRESS", None)
        self.procs: list[subprocess.Popen] = []
        subprocess.run([str(VENV_BIN / "ray"), "get-auth-token", "--generate"], env=self.env, check=True,
                       capture_output=True, timeout=60)
        self.token = (self.home / ".ray" / "auth_token").read_text().strip()
        self.port, self.dashboard_port = free_port(), free_port()
        self.api = f"http://127.0.0.1:{self.dashboard_port}"
        # Ray's session folder holds Unix sockets (paths of at most 107 bytes): a short folder of its own.
        self.ray_tmp = Path(tempfile.mkdtemp(prefix="rd-ray-"))
        # (Ray turns --node-ip-address=127.0.0.1 into this machine's address for its own GCS and
        # raylet ports; the services the test chooses, the dashboard and MLflow, stay on 127.0.0.1.)
        common = ["--node-ip-address=127.0.0.1", "--num-cpus=1", "--object-store-memory=100000000",
                  f"--temp-dir={self.ray_tmp}", "--disable-usage-stats", "--block"]
        self.head = self._start("head", ["--head", f"--port={self.port}", "--include-dashboard=true",
                                         "--dashboard-host=127.0.0.1", f"--dashboard-port={self.dashboard_port}",
                                         f"--ray-client-server-port={free_port()}"] + common)
        self._wait(lambda: self.get("/api/version") is not None, 120, "the head's dashboard")
        self.worker = self._start("worker", [f"--address=127.0.0.1:{self.port}"] + common)
        self._wait(lambda: len(self.alive_nodes()) == 2, 120, "the worker node to join")

    def _start(self, name: str, args: list[str]) -> subprocess.Popen:
        log = open(self.root / f"{name}.log", "w")
        proc = subprocess.Popen([str(VENV_BIN / "ray"), "start"] + args + node_ports(), env=self.env, stdout=log,
                                stderr=subprocess.STDOUT, start_new_session=True)
        self.procs.append(proc)
        return proc

    def _wait(self, ready, timeout: float, what: str) -> None:
        deadline = time.time() + timeout
        while not ready():
            for p in self.procs:
                if p.poll() is not None:
                    raise RuntimeError(f"a ray start exited ({p.returncode}) while waiting for {what}: "
                                       f"{self.logs()}")
            if time.time() > deadline:
                raise TimeoutError(f"{what} not ready within {timeout} s: {self.logs()}")
            time.sleep(0.5)

    def logs(self) -> str:
        return " | ".join(f"{p.name}: {p.read_text()[-1500:]}" for p in sorted(self.root.glob("*.log")))

    def get(self, path: str, token: bool = True):
        """JSON from the dashboard's HTTP API (None while it does not answer)."""
        req = urllib.request.Request(self.api + path, headers={"Authorization": f"Bearer {self.token}"} if token else {})
        try:
            with urllib.request.urlopen(req, timeout=10) as r:
                return json.loads(r.read() or b"null")
        except urllib.error.HTTPError as e:
            return {"http_error": e.code}
        except (OSError, ValueError):
            return None

    def alive_nodes(self) -> list[dict]:
        out = self.get("/api/v0/nodes?limit=100") or {}
        nodes = (out.get("data") or {}).get("result", {}).get("result", []) if isinstance(out, dict) else []
        return [n for n in nodes if n.get("state") == "ALIVE"]

    def job(self, submission_id: str) -> dict:
        return self.get(f"/api/jobs/{submission_id}") or {}

    def shutdown(self) -> None:
        for proc in reversed(self.procs):
            kill_node(proc)
        shutil.rmtree(self.ray_tmp, ignore_errors=True)


@pytest.fixture(scope="module")
def token_cluster(tmp_path_factory):
    """One two-node cluster for this module's job test."""
    cluster = TokenCluster(tmp_path_factory.mktemp("cluster"))
    try:
        yield cluster
    finally:
        cluster.shutdown()


def _parquet_rows(path: Path) -> list[dict]:
    import pyarrow.parquet as pq

    try:
        return pq.read_table(path).to_pylist()
    except (OSError, ValueError):  # not written yet, or being replaced
        return []


def _wait_job(cluster: TokenCluster, submission: str, timeout: float) -> str:
    deadline = time.time() + timeout
    while cluster.job(submission).get("status") not in ("SUCCEEDED", "FAILED", "STOPPED"):
        assert time.time() < deadline, f"the job did not finish: {cluster.get(f'/api/jobs/{submission}/logs')}"
        time.sleep(1)
    return (cluster.get(f"/api/jobs/{submission}/logs") or {}).get("logs", "")


def test_job_submit_ships_the_users_own_model_and_data(token_cluster, mlflow_server, tmp_path):
    """sweeps/own_code.py (a user's model and data set from a package that is not installed, and a
    torchvision ResNet-18) submitted with `ray job submit --working-dir`: the sweep's RUNTIME_ENV
    ships the package to both nodes, and every epoch lands once in Parquet and in MLflow."""
    cluster = token_cluster
    assert cluster.get("/api/jobs/", token=False) == {"http_error": 401}, "the job API must refuse a missing token"
    work = tmp_path / "work"  # what a laptop would submit: the sweep file and the user's package
    shutil.copytree(REPO / "examples" / "own_code", work / "examples" / "own_code",
                    ignore=shutil.ignore_patterns("__pycache__"))
    (work / "sweeps").mkdir()
    shutil.copy(REPO / "sweeps" / "own_code.py", work / "sweeps" / "own_code.py")
    not_here = subprocess.run([str(VENV_BIN / "python"), "-c", "import my_research"], env=cluster.env, cwd=tmp_path,
                              capture_output=True, text=True, timeout=60)
    assert not_here.returncode != 0 and "No module named 'my_research'" in not_here.stderr, "the package is installed"

    storage = tmp_path / "storage"
    submission = "own-code-sweep"
    submit = subprocess.run(
        [str(VENV_BIN / "ray"), "job", "submit", "--address", cluster.api, "--submission-id", submission,
         "--working-dir", str(work), "--no-wait", "--", str(VENV_BIN / "python"), "sweeps/own_code.py", "--smoke",
         "--storage", str(storage), "--tracking-uri", mlflow_server, "--report-seconds", "0"],
        env=cluster.env, capture_output=True, text=True, timeout=120, cwd=tmp_path)
    assert submit.returncode == 0, submit.stderr[-3000:]
    worker_pids: set[int] = set()
    deadline = time.time() + 300
    while cluster.job(submission).get("status") not in ("SUCCEEDED", "FAILED", "STOPPED"):
        worker_pids |= {p.pid for p in process_tree(cluster.worker)}
        assert time.time() < deadline, f"the job did not finish: {cluster.get(f'/api/jobs/{submission}/logs')}"
        time.sleep(0.5)
    logs = _wait_job(cluster, submission, 10)
    assert cluster.job(submission)["status"] == "SUCCEEDED", logs[-5000:]
    assert "4/4 trials with results, 0 failed" in logs, logs[-3000:]

    plan = json.loads((storage / "own_code-smoke" / "sweep.json").read_text())
    trial_ids = [t["trial_id"] for t in plan["trials"]]
    models = sorted({t["config"]["model"]["name"] for t in plan["trials"]})
    assert models == ["my_research.nets:make_net", "torchvision:resnet18"], models
    assert {t["config"]["data"]["name"] for t in plan["trials"]} == {"my_research.data:gratings"}
    rows = _parquet_rows(storage / "own_code-smoke" / "trials.parquet")
    for tid in trial_ids:
        assert sorted(r["epoch"] for r in rows if r["trial_id"] == tid) == [1, 2], tid
    assert any(r["pid"] in worker_pids for r in rows), "no trial ran on the worker node"
    assert any(r["pid"] not in worker_pids for r in rows), "no trial ran on the head node"

    from mlflow.tracking import MlflowClient

    client = MlflowClient(tracking_uri=mlflow_server)
    experiment = client.get_experiment_by_name("own_code-smoke")
    runs = client.search_runs([experiment.experiment_id], filter_string="tags.`rethink.role` = 'trial'")
    assert sorted(r.data.tags["rethink.trial_id"] for r in runs) == sorted(trial_ids)
    for run in runs:
        assert run.info.status == "FINISHED"
        assert sorted(m.step for m in client.get_metric_history(run.info.run_id, "train_loss")) == [1, 2]
        adapted = run.data.params["meta.model_adapted"]
        if run.data.params["model.name"] == "torchvision:resnet18":
            assert adapted.startswith("stem: 3x3 stride-1 conv"), adapted
        else:
            assert adapted == "nothing"
