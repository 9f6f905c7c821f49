"""The headline commands run for real: `ray up`, `ray submit`, `ray exec` and `ray down` on
cluster/local.yaml, with this machine as the lab cluster's head.

The head is reached over SSH like any lab machine: an sshd of this test's own on 127.0.0.1:22
(Ray's launcher has no SSH port setting), a dedicated user made for the test (key login, sudo
for apt-get alone, which the config's setup needs; removed afterwards), so that the config's
own Ray shutdown lines can reach only that user's processes. cluster/local.yaml is rendered for
127.0.0.1: the head's address, no workers, the SSH user and the shared folder are replaced,
nothing else. Then, as docs/cluster.md says:

1. `ray up`: the checkout rsynced to the head, the apt packages, the venv and
   `pip install -e "$HOME/rethink-dist[ffcv]"`, Ray with token authentication, the MLflow server.
   The server answers its cluster's address and an SSH tunnel to localhost, and refuses other
   Host headers.
2. `ray submit ... sweeps/quick.py -- --smoke` with the documented flags, the head's MLflow server
   as tracking URI: every epoch lands exactly once in Parquet and in that server.
3. `ray submit ... --tmux`: the submitting client and its SSH connections are killed mid-sweep;
   the sweep finishes on the head with every epoch once.
4. `ray exec ... 'ray status'`, then `ray down`: Ray and the MLflow server stop; what is left
   (the tmux session's shell) is ended by process id.

The head's venv is seeded with the packages of the venv running the suite (one .pth file, and their
console scripts), as a lab machine's venv is after a first `ray up`: the config's `pip install`
runs for real, resolves every dependency as installed and installs this package (seconds rather
than minutes of torch). Needs root (CI runs as root) and openssh-server, rsync and sudo
(`make system-deps`); without them it fails with the reason.
"""

from __future__ import annotations

import json
import os
import pwd
import re
import shutil
import signal
import socket
import subprocess
import sys
import sysconfig
import tempfile
import time
import urllib.error
import urllib.request
from pathlib import Path

import pytest

from conftest import REPO, VENV_BIN, free_port, stop_process

CONFIG = REPO / "cluster" / "local.yaml"
CLUSTER_NAME = "rethink-dist-lab"  # cluster/local.yaml's
MARKER = "rethink-dist lab-cluster test head"  # the GECOS field of the users this test makes
SSH_PORT = 22  # Ray's launcher connects to port 22 (it has no port setting)
MLFLOW_PORT = 5000  # cluster/local.yaml's
# The fixed ports the head takes (the config's and `ray start --head`'s defaults).
HEAD_PORTS = {6379: "Ray's GCS", MLFLOW_PORT: "MLflow", 8265: "the Ray dashboard", 10001: "the Ray client server"}
DETACHED_EPOCHS = 80
DETACHED_SWEEP = f'''"""Two digits trials of {DETACHED_EPOCHS} epochs: long enough to lose the client mid-sweep."""
from rethink_dist.config import TrialConfig

NAME = "detached"


def trials(data_root=None):
    return [
        TrialConfig.from_dict({{"data": {{"name": "digits", "max_train": 512}}, "model": {{"name": "mlp_1x512"}},
                                "corruption": {{"kind": kind, "level": level}},
                                "optim": {{"epochs": {DETACHED_EPOCHS}}}, "device": "cpu"}})
        for kind, level in (("none", 0.0), ("labels", 1.0))
    ]


if __name__ == "__main__":
    from rethink_dist.commands.sweep import main

    raise SystemExit(main(__file__))
'''
# The flags docs/cluster.md gives `ray submit` (single quotes: the head's variables, expanded there).
SWEEP_FLAGS = ["--storage", "$RETHINK_STORAGE", "--results-dir", "$HOME/results",
               "--tracking-uri", "$MLFLOW_TRACKING_URI"]


def _run(cmd: list[str], timeout: float, **kw) -> subprocess.CompletedProcess:
    """Run ``cmd`` as a process group of its own; on timeout its whole group is killed and the test fails."""
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                            start_new_session=True, **kw)
    try:
        out, _ = proc.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)
        out, _ = proc.communicate()
        pytest.fail(f"{' '.join(cmd)} did not end within {timeout:.0f} s: {out[-4000:]}")
    return subprocess.CompletedProcess(cmd, proc.returncode, out, None)


def _check(cmd: list[str], what: str, timeout: float = 60, **kw) -> str:
    p = _run(cmd, timeout, **kw)
    if p.returncode != 0:
        pytest.fail(f"{what}: {' '.join(cmd)} exited {p.returncode}: {p.stdout[-3000:]}")
    return p.stdout


def _port_taken(host: str, port: int) -> bool:
    with socket.socket() as s:
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            s.bind((host, port))
        except OSError:
            return True
    return False


def _answers(host: str, port: int) -> bool:
    try:
        socket.create_connection((host, port), timeout=2).close()
        return True
    except OSError:
        return False


def _http(url: str, host_header: str | None = None) -> tuple[int, str]:
    req = urllib.request.Request(url, headers={"Host": host_header} if host_header else {})
    try:
        with urllib.request.urlopen(req, timeout=30) as r:
            return r.status, r.read().decode(errors="replace")
    except urllib.error.HTTPError as e:
        return e.code, e.read().decode(errors="replace")


def _user_procs(uid: int) -> list:
    import psutil

    procs = []
    for p in psutil.process_iter(["uids", "cmdline", "name"]):
        try:
            if p.info["uids"] and p.info["uids"].real == uid:
                procs.append(p)
        except psutil.Error:
            pass
    return procs


def _describe(procs) -> list[str]:
    import psutil

    out = []
    for p in procs:
        try:
            out.append(f"{p.pid} {' '.join(p.cmdline())[:160] or p.name()}")
        except psutil.Error:
            pass
    return out


def _kill_pids(procs, grace: float = 10) -> None:
    """SIGTERM each process (by its pid), then SIGKILL whatever is left after ``grace`` seconds."""
    import psutil

    for p in procs:
        try:
            p.terminate()
        except psutil.Error:
            pass
    _, alive = psutil.wait_procs(procs, timeout=grace)
    for p in alive:
        try:
            p.kill()
        except psutil.Error:
            pass
    psutil.wait_procs(alive, timeout=10)


def _ssh_control_dir() -> str:
    """Where Ray's launcher keeps its SSH control sockets for this user and cluster (as its SSHCommandRunner)."""
    import getpass
    import hashlib

    from ray.autoscaler._private.command_runner import HASH_MAX_LENGTH

    return "/tmp/ray_ssh_{}/{}".format(hashlib.sha256(getpass.getuser().encode()).hexdigest()[:HASH_MAX_LENGTH],
                                       hashlib.sha256(CLUSTER_NAME.encode()).hexdigest()[:HASH_MAX_LENGTH])


def _ssh_clients(user: str) -> list:
    """This machine's ssh clients of ``user``@127.0.0.1: the launcher's commands, the test's tunnel, and Ray's
    multiplexing masters (they outlive each command by ControlPersist's 10 s; their command line is
    their control socket, in the folder Ray keeps for this launcher user and cluster)."""
    import psutil

    control = _ssh_control_dir()
    found = []
    for p in psutil.process_iter(["name", "cmdline"]):
        try:
            cmd = p.info["cmdline"] or []
            if p.info["name"] == "ssh" and (f"{user}@127.0.0.1" in cmd or control in " ".join(cmd)):
                found.append(p)
        except psutil.Error:
            pass
    return found


def _parquet_rows(path: Path) -> list[dict]:
    import pyarrow.parquet as pq

    try:
        return pq.read_table(path).to_pylist()
    except (OSError, ValueError):  # not written yet, or being replaced
        return []


def _epochs_once(rows: list[dict], trial_ids: list[str]) -> dict[str, list[int]]:
    """Each trial's epochs in Parquet, checked: 1..n once each, the last row alone marked finished."""
    epochs = {}
    for tid in trial_ids:
        mine = sorted((r for r in rows if r["trial_id"] == tid), key=lambda r: r["epoch"])
        got = [r["epoch"] for r in mine]
        assert got and got == list(range(1, len(got) + 1)), (tid, got)
        assert mine[-1]["finished"] is True and not any(r["finished"] for r in mine[:-1]), tid
        epochs[tid] = got
    return epochs


def _mlflow_epochs_once(tracking_uri: str, experiment: str, epochs: dict[str, list[int]]) -> None:
    """One finished MLflow run per trial, in the head's server, with each Parquet epoch logged once."""
    from mlflow.tracking import MlflowClient

    client = MlflowClient(tracking_uri=tracking_uri)
    exp = client.get_experiment_by_name(experiment)
    assert exp is not None, f"no experiment {experiment!r} at {tracking_uri}"
    runs = client.search_runs([exp.experiment_id], filter_string="tags.`rethink.role` = 'trial'", max_results=100)
    assert sorted(r.data.tags["rethink.trial_id"] for r in runs) == sorted(epochs)
    for run in runs:
        tid = run.data.tags["rethink.trial_id"]
        assert run.info.status == "FINISHED", tid
        steps = sorted(m.step for m in client.get_metric_history(run.info.run_id, "train_loss"))
        assert steps == epochs[tid], (tid, steps, epochs[tid])


def render_config(text: str, user: str, key: Path, shared: Path) -> str:
    """cluster/local.yaml for a head on 127.0.0.1: the addresses, the SSH user and key (ssh reads '~' as
    the real home folder, not $HOME) and the shared folder replaced, every other line as it is."""
    subs = [(r"(?m)^( *head_ip: *)\S+ *$", r"\g<1>127.0.0.1"),
            (r"(?m)^( *worker_ips: *)\[[^\]\n]*\] *$", r"\g<1>[]"),
            (r"(?m)^( *ssh_user: *)\S+ *$", rf"\g<1>{user}"),
            (r"(?m)^( *ssh_private_key: *)\S+ *$", rf"\g<1>{key}"),
            (r"RETHINK_SHARED=[^\s']+", f"RETHINK_SHARED={shared}")]
    out = text
    for pattern, repl in subs:
        out, n = re.subn(pattern, repl, out)
        if n != 1:
            pytest.fail(f"cannot render cluster/local.yaml for this machine: {pattern!r} matches {n} times, not once")
    before, after = text.splitlines(), out.splitlines()
    changed = [b for b, a in zip(before, after) if b != a]
    assert len(before) == len(after) and len(changed) == len(subs), changed
    return out


class Lab:
    """A dedicated user with key login, an sshd on 127.0.0.1:22 for it alone, and the launcher's own
    HOME (the cluster's token, the SSH key) and TMPDIR (Ray's local-provider state) on this machine."""

    def __init__(self):
        self.procs: list[subprocess.Popen] = []
        self.user = None
        self.root = Path(tempfile.mkdtemp(prefix="rd-lab-"))  # short: Ray's Unix sockets live below it
        self.root.chmod(0o755)
        self.sudoers = None
        self.closed = False

    # ---- set-up ----------------------------------------------------------------------------
    def preflight(self) -> None:
        if os.geteuid() != 0:
            pytest.fail("the lab-cluster test needs root: it creates a user and starts sshd on 127.0.0.1:22 "
                        "(CI runs as root)")
        missing = [t for t in ("/usr/sbin/sshd", "ssh", "ssh-keygen", "rsync", "sudo", "visudo", "useradd", "runuser")
                   if shutil.which(t) is None]
        if missing:
            pytest.fail(f"missing {', '.join(missing)}: `make system-deps` installs openssh-server, rsync and sudo")
        for user in self._stale_users():
            subprocess.run(["userdel", "--remove", user], capture_output=True, timeout=60)
            Path(f"/etc/sudoers.d/{user}").unlink(missing_ok=True)
        if _port_taken("127.0.0.1", SSH_PORT):
            pytest.fail(f"127.0.0.1:{SSH_PORT} is taken: the lab-cluster test's sshd needs it (Ray's launcher "
                        f"connects to port 22 only)")
        for port, what in HEAD_PORTS.items():
            if _port_taken("0.0.0.0", port):
                pytest.fail(f"port {port} is taken on this machine: cluster/local.yaml's head needs it for {what}")

    @staticmethod
    def _stale_users() -> list[str]:
        """Users an earlier, interrupted run of this test made and left, with no process running."""
        return [u.pw_name for u in pwd.getpwall()
                if u.pw_gecos == MARKER and not _user_procs(u.pw_uid)]

    def make_user(self) -> None:
        self.user = f"rdlab{os.getpid()}"
        _check(["useradd", "--create-home", "--shell", "/bin/bash", "--comment", MARKER, self.user], "useradd")
        # '*': no password, yet not locked (sshd refuses key logins to locked accounts without PAM)
        _check(["usermod", "--password", "*", self.user], "usermod")
        pw = pwd.getpwnam(self.user)
        self.uid, self.gid, self.home = pw.pw_uid, pw.pw_gid, Path(pw.pw_dir)
        # Passwordless sudo for apt-get only: the config's setup installs FFCV's packages and tmux.
        sudoers = Path(f"/etc/sudoers.d/{self.user}")
        sudoers.write_text(f"{self.user} ALL=(root) NOPASSWD:SETENV: /usr/bin/apt-get\n")
        sudoers.chmod(0o440)
        self.sudoers = sudoers
        _check(["visudo", "-c", "-f", str(sudoers)], "the sudoers rule")

        # The launcher's side: its own HOME (the SSH key, the cluster's token) and TMPDIR (Ray's
        # local-provider state files).
        self.launcher_home = self.root / "launcher"
        (self.launcher_home / ".ssh").mkdir(parents=True, mode=0o700)
        self.launcher_home.chmod(0o700)
        self.key = self.launcher_home / ".ssh" / "id_ed25519"
        _check(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-C", "rethink-dist lab test", "-f", str(self.key)],
               "ssh-keygen")
        ssh_dir = self.home / ".ssh"
        ssh_dir.mkdir(mode=0o700, exist_ok=True)
        (ssh_dir / "authorized_keys").write_text(self.key.with_suffix(".pub").read_text())
        (ssh_dir / "authorized_keys").chmod(0o600)
        self.launcher_tmp = self.launcher_home / "tmp"
        self.launcher_tmp.mkdir()
        self.env = {**os.environ, "HOME": str(self.launcher_home), "TMPDIR": str(self.launcher_tmp),
                    "PATH": f"{VENV_BIN}:{os.environ['PATH']}", "RAY_USAGE_STATS_ENABLED": "0"}
        for var in ("RAY_ADDRESS", "MLFLOW_TRACKING_URI"):
            self.env.pop(var, None)
        _check([str(VENV_BIN / "ray"), "get-auth-token", "--generate"], "ray get-auth-token", env=self.env)

        # The head's side: the shared folder, and a TMPDIR of its own (Ray's session folder and the
        # address file `ray status` reads, apart from any other Ray on this machine).
        self.shared = self.root / "shared"
        self.head_tmp = self.root / "t"
        for d in (self.shared, self.head_tmp):
            d.mkdir()
        self._chown(self.home, self.shared, self.head_tmp)

    def _chown(self, *paths: Path) -> None:
        for top in paths:
            for dirpath, dirnames, filenames in os.walk(top):
                for name in [dirpath] + [os.path.join(dirpath, n) for n in dirnames + filenames]:
                    os.lchown(name, self.uid, self.gid)

    def as_user(self, script: str, what: str, timeout: float = 120) -> str:
        return _check(["runuser", "--login", self.user, "--command", script], what, timeout=timeout)

    def seed_venv(self) -> None:
        """~/rethink-venv as a first `ray up` leaves it: the config's own `python3 -m venv`, and the packages
        of the venv running this suite (a .pth file pointing at its site-packages, and its console
        scripts, ray and mlflow among them, made for this venv's python)."""
        seed = Path(sysconfig.get_paths()["purelib"]).resolve()
        py = f"{sys.version_info.major}.{sys.version_info.minor}"
        # without a pip of its own: the suite's (a current pip; Debian's 23.0 takes half a minute
        # over the requirements that are already installed)
        self.as_user("python3 -m venv --without-pip ~/rethink-venv", "the head's venv")
        head_py = self.as_user("~/rethink-venv/bin/python -c 'import sys; print(*sys.version_info[:2])'",
                               "the head's python").split()
        if ".".join(head_py) != py:
            pytest.fail(f"the head's python3 is {'.'.join(head_py)}, the suite's {py}: its packages cannot be shared")
        if not self._readable(seed):
            # a folder above it is closed to other users (a clone under /root): a copy of hard links,
            # outside it (seconds; the files keep their modes)
            copy = self.root / "site-packages"
            made = _run(["cp", "-al", str(seed), str(copy)], 300)
            if made.returncode != 0 or not self._readable(copy):
                pytest.fail(f"the dedicated user cannot read {seed} (a folder above it is closed to other users) "
                            f"and it cannot be hard-linked to {copy}: {made.stdout[-500:]}")
            seed = copy
        venv = self.home / "rethink-venv"
        (venv / "lib" / f"python{py}" / "site-packages" / "rethink-dist-suite.pth").write_text(f"{seed}\n")
        bin_dir = Path(sys.prefix) / "bin"
        skip = {"rethink-dist"}  # the config's pip install makes this one
        for script in sorted(bin_dir.iterdir()):
            target = venv / "bin" / script.name
            if script.name in skip or target.exists() or not script.is_file():
                continue
            first = script.read_bytes()[:300].split(b"\n", 1)[0]
            if not re.fullmatch(rb"#!\S*/bin/python[\d.]*", first):
                continue
            body = script.read_text().split("\n", 1)[1]
            target.write_text(f"#!{venv}/bin/python\n{body}")
            target.chmod(0o755)
        self._chown(venv)

    def _readable(self, site_packages: Path) -> bool:
        probe = site_packages / "ray" / "__init__.py"
        return _run(["runuser", "-u", self.user, "--", "test", "-r", str(probe)], 30).returncode == 0

    def start_sshd(self) -> None:
        d = self.root / "sshd"
        d.mkdir(mode=0o700)
        _check(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-f", str(d / "host_key")], "the sshd host key")
        (d / "sshd_config").write_text(f"""\
ListenAddress 127.0.0.1
Port {SSH_PORT}
HostKey {d}/host_key
PidFile {d}/sshd.pid
AllowUsers {self.user}
PermitRootLogin no
PubkeyAuthentication yes
PasswordAuthentication no
KbdInteractiveAuthentication no
UsePAM no
AuthorizedKeysFile .ssh/authorized_keys
AllowTcpForwarding local
X11Forwarding no
MaxSessions 50
MaxStartups 50:30:100
SetEnv TMPDIR={self.head_tmp}
LogLevel VERBOSE
""")
        Path("/run/sshd").mkdir(mode=0o755, exist_ok=True)  # sshd's privilege-separation folder
        _check(["/usr/sbin/sshd", "-t", "-f", str(d / "sshd_config")], "sshd's config")
        self.sshd_log = d / "sshd.log"
        self.sshd = self.start(["/usr/sbin/sshd", "-D", "-e", "-f", str(d / "sshd_config")], self.sshd_log)
        deadline = time.time() + 30
        while not _answers("127.0.0.1", SSH_PORT):
            if self.sshd.poll() is not None or time.time() > deadline:
                pytest.fail(f"sshd did not start: {self.sshd_log.read_text()[-2000:]}")
            time.sleep(0.2)
        out = _run(self.ssh_cmd() + ["echo", "key login works"], 60)
        if "key login works" not in out.stdout:
            pytest.fail(f"no key login to {self.user}@127.0.0.1: {out.stdout[-1500:]} | "
                        f"{self.sshd_log.read_text()[-1500:]}")

    def ssh_cmd(self, *extra: str) -> list[str]:
        return ["ssh", "-F", "/dev/null", "-i", str(self.key), "-p", str(SSH_PORT), "-o", "IdentitiesOnly=yes",
                "-o", "StrictHostKeyChecking=no", "-o", "UserKnownHostsFile=/dev/null", "-o", "BatchMode=yes",
                "-o", "LogLevel=ERROR", *extra, f"{self.user}@127.0.0.1"]

    def start(self, cmd: list[str], log: Path, **kw) -> subprocess.Popen:
        with open(log, "a") as f:
            proc = subprocess.Popen(cmd, stdout=f, stderr=subprocess.STDOUT, start_new_session=True, **kw)
        self.procs.append(proc)
        return proc

    # ---- the launcher ------------------------------------------------------------------------
    def ray(self, *args: str, timeout: float = 300) -> tuple[subprocess.CompletedProcess, float]:
        """A `ray` launcher command from the repository root (the config ships '.'), and its seconds."""
        t0 = time.time()
        p = _run([str(VENV_BIN / "ray"), *args], timeout, env=self.env, cwd=REPO)
        return p, time.time() - t0

    def pane(self) -> str:
        """The end of what the driver in the head's tmux session printed."""
        out = _run(["runuser", "--login", self.user, "--command", "tmux capture-pane -p -S -200"], 60)
        return out.stdout[-3000:]

    def head_env(self) -> dict[str, str]:
        """The variables the config's setup wrote to the head's ~/.rethink_env."""
        out = self.as_user("source ~/.rethink_env && env", "the head's environment")
        return dict(line.split("=", 1) for line in out.splitlines() if "=" in line)

    # ---- tear-down ---------------------------------------------------------------------------
    def leftovers(self) -> list:
        return _user_procs(self.uid) if self.user else []

    def close(self) -> None:
        """End everything this test started, by process id, then remove the user and the folders."""
        import psutil

        if self.closed:
            return
        self.closed = True
        for proc in reversed(self.procs):
            if proc is not getattr(self, "sshd", None) and proc.poll() is None:
                try:
                    os.killpg(proc.pid, signal.SIGKILL)
                except ProcessLookupError:
                    pass
                proc.wait(10)
        if self.user:
            _kill_pids(_ssh_clients(self.user), grace=5)
            _kill_pids(self.leftovers())
        sshd = getattr(self, "sshd", None)
        if sshd is not None and sshd.poll() is None:
            sshd.terminate()
            try:
                sshd.wait(15)
            except subprocess.TimeoutExpired:
                sshd.kill()
                sshd.wait(10)
        if self.user:
            # the sessions' own sshd processes (root's privileged halves) end with their connections
            psutil.wait_procs([p for p in psutil.process_iter(["cmdline"])
                               if p.info["cmdline"] and p.info["cmdline"][0].startswith(f"sshd: {self.user}")],
                              timeout=10)
            _kill_pids(self.leftovers())
            subprocess.run(["userdel", "--remove", self.user], capture_output=True, timeout=60)
        if self.sudoers is not None:
            self.sudoers.unlink(missing_ok=True)
        shutil.rmtree(self.root, ignore_errors=True)
        try:
            os.rmdir(_ssh_control_dir())  # Ray's, for this launcher user and cluster: gone once empty
        except OSError:
            pass


@pytest.fixture
def lab():
    lab = Lab()
    try:
        lab.preflight()
        lab.make_user()
        lab.seed_venv()
        lab.start_sshd()
        yield lab
    finally:
        lab.close()


def _wait_until(cond, timeout: float, what, interval: float = 1.0):
    """cond()'s first true value; the test fails with ``what`` (a string, or a function giving one) after
    ``timeout`` seconds."""
    deadline = time.time() + timeout
    while True:
        value = cond()
        if value:
            return value
        if time.time() > deadline:
            pytest.fail(f"{what() if callable(what) else what} within {timeout:.0f} s")
        time.sleep(interval)


def test_ray_up_submit_exec_down_on_the_lab_config(lab):
    import psutil

    config = lab.root / "local.yaml"
    config.write_text(render_config(CONFIG.read_text(), lab.user, lab.key, lab.shared))
    timings = {}

    # 1. ray up
    up, timings["ray up"] = lab.ray("up", str(config), "--yes", timeout=420)
    assert up.returncode == 0, up.stdout[-6000:]
    env = lab.head_env()
    head_ip = env["RETHINK_HEAD_IP"]
    tracking = env["MLFLOW_TRACKING_URI"]
    assert tracking == f"http://{head_ip}:{MLFLOW_PORT}", tracking
    assert Path(env["RETHINK_STORAGE"]) == lab.shared / "runs"
    # the config's pip install put this checkout's package in the head's venv
    where = lab.as_user("cd /tmp && source ~/.rethink_env && "
                        "python -c 'import rethink_dist; print(rethink_dist.__file__)'", "import on the head")
    assert where.strip() == str(lab.home / "rethink-dist" / "rethink_dist" / "__init__.py"), where
    pid_file = lab.home / "mlflow" / "server.pid"
    server = psutil.Process(int(pid_file.read_text()))  # the server itself, not a shell around it
    assert server.uids().real == lab.uid and Path(server.cmdline()[1]).name == "mlflow", server.cmdline()

    # The head's MLflow server: its own address and port are accepted, any other Host header refused
    # (DNS rebinding), and it listens on the head's address alone.
    api = f"{tracking}/api/2.0/mlflow/experiments/search?max_results=1"
    assert _http(api)[0] == 200, _http(api)
    for bad in (f"rebind.example:{MLFLOW_PORT}", f"{head_ip}:{MLFLOW_PORT + 1}"):
        status, body = _http(api, host_header=bad)
        assert status == 403 and "DNS rebinding" in body, (bad, status, body[:300])
    if head_ip != "127.0.0.1":
        assert not _answers("127.0.0.1", MLFLOW_PORT), "the head's MLflow server listens on 127.0.0.1 too"

    # 2. ray submit, the documented flags, the head's MLflow server as tracking URI
    submit, timings["ray submit"] = lab.ray("submit", str(config), str(REPO / "sweeps" / "quick.py"), "--",
                                            "--smoke", *SWEEP_FLAGS, timeout=600)
    assert submit.returncode == 0, submit.stdout[-6000:]
    assert "4/4 trials with results, 0 failed" in submit.stdout, submit.stdout[-4000:]
    folder = lab.shared / "runs" / "quick-smoke"
    trial_ids = [t["trial_id"] for t in json.loads((folder / "sweep.json").read_text())["trials"]]
    assert len(trial_ids) == 4
    epochs = _epochs_once(_parquet_rows(folder / "trials.parquet"), trial_ids)
    _mlflow_epochs_once(tracking, "quick-smoke", epochs)

    # The MLflow UI through an SSH tunnel to the head's address, as docs/cluster.md shows it.
    local = free_port()
    tunnel = lab.start(lab.ssh_cmd("-N", "-o", "ExitOnForwardFailure=yes", "-L", f"{local}:{head_ip}:{MLFLOW_PORT}"),
                       lab.root / "tunnel.log")
    _wait_until(lambda: _answers("127.0.0.1", local), 30, "the SSH tunnel did not open")
    by_name = f"http://127.0.0.1:{local}/api/2.0/mlflow/experiments/get-by-name?experiment_name=quick-smoke"
    for host in (f"127.0.0.1:{local}", f"localhost:{local}"):
        status, body = _http(by_name, host_header=host)
        assert status == 200 and "quick-smoke" in body, (host, status, body[:300])
    # SIGTERM, then SIGKILL if ssh is still closing its forwarded channels after 30 s (seen under load).
    stop_process(tunnel, 30)

    # 3. The --tmux form: the client and its SSH connections are killed mid-sweep. (`ray submit --tmux`
    # returns once tmux holds the driver; what is left of it and Ray's SSH masters are killed when the
    # first epochs are in.)
    sweep_file = lab.root / "detached.py"
    sweep_file.write_text(DETACHED_SWEEP)
    t0 = time.time()
    client = lab.start([str(VENV_BIN / "ray"), "submit", str(config), str(sweep_file), "--tmux", "--", *SWEEP_FLAGS],
                       lab.root / "tmux-submit.log", env=lab.env, cwd=REPO)
    parquet = lab.shared / "runs" / "detached" / "trials.parquet"
    rows = _wait_until(lambda: _parquet_rows(parquet), 300, lambda: f"the detached sweep wrote no epoch: {lab.pane()}",
                       interval=0.5)
    killed_at = len(rows)
    if client.poll() is None:
        os.killpg(client.pid, signal.SIGKILL)
    _kill_pids(_ssh_clients(lab.user), grace=0)
    assert killed_at < 2 * DETACHED_EPOCHS, "the sweep was over before the client was killed"
    print(f"\nclient killed with {killed_at}/{2 * DETACHED_EPOCHS} epochs in")
    plan = json.loads((lab.shared / "runs" / "detached" / "sweep.json").read_text())
    detached_ids = [t["trial_id"] for t in plan["trials"]]

    def finished():
        done = [r for r in _parquet_rows(parquet) if r["finished"]]
        return len(done) == len(detached_ids)

    _wait_until(finished, 300, lambda: f"the detached sweep did not finish on the head: {lab.pane()}")
    timings["detached sweep"] = time.time() - t0
    epochs = _epochs_once(_parquet_rows(parquet), detached_ids)
    assert all(e[-1] == DETACHED_EPOCHS for e in epochs.values()), {k: v[-1] for k, v in epochs.items()}

    # the driver in tmux ends its sweep (its parent run closes) after the last trial's results
    def parent_closed():
        from mlflow.tracking import MlflowClient

        client_ = MlflowClient(tracking_uri=tracking)
        exp = client_.get_experiment_by_name("detached")
        runs = client_.search_runs([exp.experiment_id], filter_string="tags.`rethink.role` = 'sweep'")
        return runs and all(r.info.status == "FINISHED" for r in runs)

    _wait_until(parent_closed, 120, "the detached sweep's driver did not close its MLflow run")
    _mlflow_epochs_once(tracking, "detached", epochs)
    pane = lab.pane()
    assert "2/2 trials with results, 0 failed" in pane, pane

    # 4. ray exec 'ray status', then ray down
    status, timings["ray exec 'ray status'"] = lab.ray("exec", str(config), "ray status", timeout=180)
    assert status.returncode == 0, status.stdout[-3000:]
    # the head, idle now: the cluster's one node (worker_ips is empty)
    assert len(re.findall(r"(?m)^ *1 local\.cluster\.node *$", status.stdout)) == 1, status.stdout[-3000:]

    down, timings["ray down"] = lab.ray("down", str(config), "--yes", timeout=300)
    assert down.returncode == 0, down.stdout[-4000:]

    def only_tmux_left():
        left = [p for p in lab.leftovers() if not (p.info.get("name") or "").startswith("sshd")]
        names = {(p.info.get("name") or "") for p in left}
        return left if names <= {"tmux: server", "bash", "tmux"} else None

    left = _wait_until(only_tmux_left, 60, lambda: "the head still runs more than the tmux session after `ray "
                                                   f"down`: {_describe(lab.leftovers())}")
    assert not psutil.pid_exists(server.pid) or server.status() == psutil.STATUS_ZOMBIE, "MLflow still runs"
    watch = (lab.home / "mlflow" / "watch.log").read_text()
    assert f"MLflow server {server.pid} stopped" in watch, watch
    print(f"\nleft after `ray down`: {_describe(left)}")
    print("lab cluster timings (s): " + ", ".join(f"{k} {v:.0f}" for k, v in timings.items()))

    # Nothing of this test runs after it: every process of the user, the ssh clients, the sshd.
    uid, user, sshd = lab.uid, lab.user, lab.sshd
    lab.close()
    assert not _user_procs(uid), _describe(_user_procs(uid))
    assert not _ssh_clients(user), _describe(_ssh_clients(user))
    assert sshd.poll() is not None
    assert user not in {u.pw_name for u in pwd.getpwall()}, "the dedicated user was not removed"
