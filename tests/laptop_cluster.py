"""A real autoscaling Ray cluster on this machine, for the elastic tests: cluster/laptop.yaml.

The head is a `ray start --head` with Ray's local (fake multi-node) provider and its autoscaler;
every worker node the autoscaler launches is a real raylet on this machine that it starts and
ends. Ray's ``cluster_utils.AutoscalingCluster`` is not used: its start and shutdown end every
Ray process of the machine, not only its own.

Everything this class starts carries an environment variable with a value of its own (the head
and its autoscaler inherit it, and so does every node the autoscaler launches and every worker
those start), so :meth:`LaptopCluster.shutdown` finds exactly its own processes and ends them
by process id, and :meth:`LaptopCluster.raylet_pid` finds a node's raylet to kill it.
"""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import tempfile
import time
import uuid
from pathlib import Path
from typing import Any

import yaml

from conftest import REPO, VENV_BIN, free_port

MARK = "RETHINK_TEST_CLUSTER"
HEAD_NODE_ID = "f" * 51 + "00000"  # the fake provider's head


def _gcs_port() -> int:
    """A free port outside Ray's default worker-port range (10002-19999), which the head's own
    GCS port may not fall into."""
    while True:
        port = free_port()
        if not 10002 <= port <= 19999:
            return port


def _environ(pid: int) -> dict[str, str]:
    try:
        raw = Path(f"/proc/{pid}/environ").read_bytes()
    except OSError:
        return {}
    return dict(kv.split("=", 1) for kv in raw.decode(errors="replace").split("\0") if "=" in kv)


def _cmdline(pid: int) -> str:
    try:
        return Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
    except OSError:
        return ""


class LaptopCluster:
    """cluster/laptop.yaml started for a test: no worker node until trials wait for one.

    ``overrides``: top-level keys of the config to replace (e.g. ``idle_timeout_minutes``);
    ``node_types``: replacement ``available_node_types`` entries (merged by name); ``env``: more
    environment variables for every process of the cluster.
    """

    def __init__(self, root: Path, overrides: dict[str, Any] | None = None,
                 node_types: dict[str, dict[str, Any]] | None = None, env: dict[str, str] | None = None):
        self.root = root
        root.mkdir(parents=True, exist_ok=True)
        self.mark = uuid.uuid4().hex
        self.port = _gcs_port()
        self.address = f"127.0.0.1:{self.port}"
        config = yaml.safe_load((REPO / "cluster" / "laptop.yaml").read_text())
        config["provider"]["gcs_address"] = self.address
        config.update(overrides or {})
        for name, spec in (node_types or {}).items():
            config["available_node_types"][name] = {**config["available_node_types"].get(name, {}), **spec}
        self.config_path = root / "laptop.yaml"
        self.config_path.write_text(yaml.safe_dump(config))
        self.home = root / "home"
        self.home.mkdir(exist_ok=True)
        self.env = {**os.environ, "HOME": str(self.home), MARK: self.mark, "RAY_FAKE_CLUSTER": "1",
                    "RAY_AUTH_MODE": "disabled", "RAY_USAGE_STATS_ENABLED": "0", "MLFLOW_DISABLE_TELEMETRY": "true",
                    "PYTHONUNBUFFERED": "1",
                    # The autoscaler reacts within a second, and takes a node whose raylet no longer
                    # answers for lost after 5 s (default 30) ...
                    "AUTOSCALER_UPDATE_INTERVAL_S": "1", "AUTOSCALER_HEARTBEAT_TIMEOUT_S": "5",
                    # ... and the GCS declares it dead after 3 missed health checks of 1 s.
                    "RAY_health_check_period_ms": "1000", "RAY_health_check_failure_threshold": "3"}
        self.env.update(env or {})
        self.env.pop("RAY_ADDRESS", None)
        # Ray's session folder holds Unix sockets (paths of at most 107 bytes): a short folder of its own.
        self.ray_tmp = Path(tempfile.mkdtemp(prefix="rd-as-"))
        self.log = root / "head.log"
        with open(self.log, "w") as log:
            started = subprocess.run(
                [str(VENV_BIN / "ray"), "start", "--head", f"--port={self.port}", "--node-ip-address=127.0.0.1",
                 "--num-cpus=0", f"--autoscaling-config={self.config_path}", f"--temp-dir={self.ray_tmp}",
                 "--include-dashboard=false", "--disable-usage-stats", f"--ray-client-server-port={_gcs_port()}",
                 f"--node-manager-port={free_port()}", f"--object-manager-port={free_port()}",
                 f"--dashboard-agent-listen-port={free_port()}", f"--dashboard-agent-grpc-port={free_port()}",
                 f"--runtime-env-agent-port={free_port()}", f"--metrics-export-port={free_port()}",
                 "--object-store-memory=100000000"],
                env=self.env, stdout=log, stderr=subprocess.STDOUT, timeout=180, start_new_session=True)
        if started.returncode != 0:
            self.shutdown()
            raise RuntimeError(f"ray start --head failed ({started.returncode}): {self.log.read_text()[-3000:]}")
        self.wait(lambda: len(self.alive()) == 1, 120, "the head to answer")

    # ------------------------------------------------------------------ what Ray knows
    def nodes(self) -> dict[str, dict[str, Any]]:
        """Every node the GCS has seen: {node id: {"alive", "resources"}}."""
        import ray._raylet

        client = ray._raylet.GcsClient(address=self.address)
        out = {}
        for node_id, info in client.get_all_node_info(timeout=10).items():
            out[node_id.hex()] = {"alive": info.state == 0, "resources": dict(info.resources_total)}
        return out

    def alive(self) -> list[str]:
        try:
            return sorted(n for n, v in self.nodes().items() if v["alive"])
        except Exception:  # the GCS not up yet
            return []

    def workers_alive(self) -> list[str]:
        return [n for n in self.alive() if n != HEAD_NODE_ID]

    def wait(self, ready, timeout: float, what: str):
        deadline = time.time() + timeout
        while time.time() < deadline:
            value = ready()
            if value:
                return value
            time.sleep(0.5)
        raise AssertionError(f"timed out after {timeout:.0f} s waiting for {what}; autoscaler: {self.monitor_log()}")

    def monitor_log(self, chars: int = 3000) -> str:
        logs = sorted(self.ray_tmp.glob("session_*/logs/monitor.log"))
        lines = [ln for ln in (logs[-1].read_text().splitlines() if logs else [])
                 if "fetch the list of non-terminated" not in ln and "complete the update iteration" not in ln]
        return "\n".join(lines)[-chars:]

    # ------------------------------------------------------------------ faults
    def own_pids(self) -> list[int]:
        """Every live process this cluster started (it carries this cluster's mark)."""
        return [int(p) for p in os.listdir("/proc") if p.isdigit() and _environ(int(p)).get(MARK) == self.mark]

    def raylet_pid(self, node_id: str) -> int:
        """The raylet process of one of this cluster's nodes."""
        for pid in self.own_pids():
            env = _environ(pid)
            if env.get("RAY_OVERRIDE_NODE_ID_FOR_TESTING") == node_id and "/raylet/raylet " in _cmdline(pid) + " ":
                return pid
        raise LookupError(f"no raylet of node {node_id} among this cluster's processes")

    def kill_node(self, node_id: str) -> bool:
        """A spot node reclaimed: its raylet SIGKILLed (its workers die with it). False if the node had
        already ended (the autoscaler ends a drained node once its trials have left it)."""
        try:
            os.kill(self.raylet_pid(node_id), signal.SIGKILL)
        except (LookupError, ProcessLookupError):
            return False
        return True

    def drain(self, node_id: str, deadline_s: float, message: str = "spot interruption") -> None:
        """A spot interruption notice: the node is drained with reason PREEMPTION and a deadline."""
        done = subprocess.run(
            [str(VENV_BIN / "ray"), "drain-node", "--address", self.address, "--node-id", node_id,
             "--reason", "DRAIN_NODE_REASON_PREEMPTION", "--reason-message", message,
             "--deadline-remaining-seconds", str(int(deadline_s))],
            env=self.env, capture_output=True, text=True, timeout=60)
        assert done.returncode == 0, done.stdout + done.stderr

    # ------------------------------------------------------------------ the end
    def shutdown(self) -> None:
        """SIGKILL every process this cluster started (found by its mark), until none is left."""
        for _ in range(20):
            pids = self.own_pids()
            if not pids:
                break
            for pid in pids:
                try:
                    os.kill(pid, signal.SIGKILL)
                except ProcessLookupError:
                    pass
            time.sleep(0.5)
        shutil.rmtree(self.ray_tmp, ignore_errors=True)


# ------------------------------------------------------------------------------------------
# The spot scenario: the elastic test's and bench/elastic.py's one run
# ------------------------------------------------------------------------------------------
# Three trials that differ in their name only: the one no fault reaches is the unfaulted run the
# other two must equal, epoch by epoch.
SPOT_TRIALS = ("spot-a", "spot-b", "spot-c")


def spot_sweep_file(path: Path, epochs: int, max_train: int) -> Path:
    """Three digits trials, one CPU each (one per gpu_1x node), long enough to lose nodes mid-run."""
    path.write_text(f'''"""Three digits trials on an autoscaling cluster whose nodes are lost mid-run."""
from rethink_dist.config import TrialConfig

NAME = "spot"


def trials(data_root=None):
    return [TrialConfig.from_dict({{"data": {{"name": "digits", "max_train": {max_train}}},
                                    "model": {{"name": "mlp_3x512"}}, "corruption": {{"kind": "labels", "level": 0.5}},
                                    "optim": {{"epochs": {epochs}}}, "device": "cpu", "name": name}})
            for name in {SPOT_TRIALS!r}]
''')
    return path


def _rows(parquet: Path):
    import pandas as pd

    try:
        return pd.read_parquet(parquet)
    except (OSError, ValueError):  # not written yet, or being replaced
        return None


def spot_scenario(root: Path, tracking_uri: str, epochs: int = 400, max_train: int = 512,
                  report_seconds: float = 3.0, notice_s: float = 8.0) -> dict[str, Any]:
    """Run the spot sweep on a fresh laptop cluster (gpu_1x nodes only, idle timeout 12 s):

    1. the driver starts with no worker node; the autoscaler adds one per waiting trial;
    2. once every trial has run a few epochs on its node: trial 0's node is SIGKILLed (a spot
       node lost without notice), and trial 1's node is drained with reason PREEMPTION and a
       deadline of ``notice_s`` seconds, then SIGKILLed at the deadline (a spot interruption
       with notice);
    3. the sweep finishes; the idle nodes are ended.

    Returns the folders, the driver's exit code and log, every node the GCS saw (with when it was
    first and last seen alive) and the moments of each step, for the test to check and
    bench/elastic.py to print."""
    cluster = LaptopCluster(root / "cluster", overrides={"idle_timeout_minutes": 0.2},
                            node_types={"gpu_8x": {"max_workers": 0}})
    seen: dict[str, dict[str, float]] = {}
    out: dict[str, Any] = {"epochs": epochs, "report_seconds": report_seconds, "notice_s": notice_s}

    def look() -> list[str]:
        now = time.time()
        alive = cluster.workers_alive()
        for n in alive:
            seen.setdefault(n, {"first": now})["last"] = now
        return alive

    try:
        sweep = spot_sweep_file(root / "spot.py", epochs, max_train)
        store = root / "store"
        parquet = store / "spot" / "trials.parquet"
        log = open(root / "driver.log", "w")
        out["t_submit"] = time.time()
        driver = subprocess.Popen(
            [str(VENV_BIN / "rethink-dist"), "sweep", str(sweep), "--ray-address", cluster.address,
             "--storage", str(store), "--tracking-uri", tracking_uri, "--report-seconds", str(report_seconds)],
            env=cluster.env, stdout=log, stderr=subprocess.STDOUT, cwd=root, start_new_session=True)

        def running_everywhere():
            look()
            assert driver.poll() is None, f"the driver ended early: {(root / 'driver.log').read_text()[-3000:]}"
            df = _rows(parquet)
            if df is None or df["trial_id"].nunique() < len(SPOT_TRIALS) or df.groupby("trial_id")["epoch"].max().min() < 2:
                return None
            return (df,)

        df = cluster.wait(running_everywhere, 300, "every trial to run 2 epochs")[0]
        out["t_all_running"] = time.time()
        out["first_epoch_at"] = float(df["ended_at"].min())
        out["nodes_before_faults"] = look()
        last = df.sort_values("epoch").groupby("trial_id").last()
        # The two trials furthest from their end (the autoscaler started their nodes last).
        lost, preempted = list(last.sort_values("epoch").index[:2])
        assert last.loc[preempted, "epoch"] < 0.75 * epochs, "the trials are nearly done before any fault: make them longer"
        unfaulted = next(t for t in last.index if t not in (lost, preempted))
        out.update(lost_trial=lost, preempted_trial=preempted, unfaulted_trial=unfaulted,
                   lost_node=str(last.loc[lost, "node_id"]), preempted_node=str(last.loc[preempted, "node_id"]))
        assert out["lost_node"] != out["preempted_node"], "two trials on one node: gpu_1x has one CPU"
        out["lost_at_epoch"] = int(last.loc[lost, "epoch"])
        # A spot node is lost at any moment between two checkpoints: half the interval after the
        # report that showed the trials running (on average what a random moment costs).
        time.sleep(report_seconds / 2)
        assert cluster.kill_node(out["lost_node"]), "the node to lose had ended already"
        out["t_kill"] = time.time()
        out["t_drain"] = time.time()
        cluster.drain(out["preempted_node"], notice_s, "spot interruption notice")
        while time.time() < out["t_drain"] + notice_s:
            look()
            time.sleep(0.5)
        out["preempted_node_ended_before_deadline"] = not cluster.kill_node(out["preempted_node"])
        out["t_preempted_kill"] = time.time()

        def resumed():
            look()
            rows = _rows(parquet)
            if rows is None:
                return None
            moved = {t: rows[(rows["trial_id"] == t) & (rows["node_id"] != out[f"{k}_node"])]
                     for t, k in ((lost, "lost"), (preempted, "preempted"))}
            return all(len(m) for m in moved.values()) and moved

        moved = cluster.wait(resumed, 300, "both trials to resume on other nodes")
        out["resumed_at"] = {t: float(m["ended_at"].min()) for t, m in moved.items()}
        while driver.poll() is None:
            look()
            assert time.time() < out["t_submit"] + 900, "the sweep did not finish within 15 minutes"
            time.sleep(0.5)
        out["t_driver_end"] = time.time()
        out["driver_rc"] = driver.returncode
        log.close()
        out["driver_log"] = (root / "driver.log").read_text()
        cluster.wait(lambda: not look(), 120, "the idle worker nodes to be ended")
        out["t_idle_ended"] = time.time()
        out["nodes_seen"] = seen
        out["folder"] = store / "spot"
        out["monitor_log"] = cluster.monitor_log(20000)
        return out
    finally:
        cluster.shutdown()
