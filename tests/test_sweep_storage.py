"""Storage that refuses writes, for real: small tmpfs file systems (CI runs as root), a file system
turned read-only mid-run, and a file-size limit (RLIMIT_FSIZE).

- A sweep whose storage clearly cannot hold it is refused before anything is written (exit 2).
- A storage that fills, or turns read-only, while the sweep runs stops it once, gracefully, with one
  line (exit 1); once there is room, `--resume` finishes it with every epoch exactly once, even when
  Tune's own experiment state was left unreadable.
- `rethink-dist train --json` whose write fails after training says so in one line naming the path.
"""

from __future__ import annotations

import ctypes
import os
import resource
import shutil
import subprocess
import sys
import time
from pathlib import Path

import pandas as pd
import pytest
from conftest import wait_for

REPO = Path(__file__).resolve().parents[1]
ENV = {**os.environ, "PYTHONPATH": str(REPO)}
CLI = [sys.executable, "-m", "rethink_dist.cli"]
EPOCHS = 40
SWEEP = f"""
NAME = "space"

def trials(data_root=None):
    return [{{"model": {{"name": "mlp_1x512"}}, "corruption": {{"kind": "labels", "level": level}},
             "optim": {{"epochs": {EPOCHS}}}}} for level in (0.0, 1.0)]
"""


@pytest.fixture
def tmpfs(tmp_path):
    """Mount small tmpfs file systems under tmp_path (unmounted at the end); CI runs as root."""
    mounted = []

    def mount(name: str, size: str) -> Path:
        point = tmp_path / name
        point.mkdir()
        p = subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={size}", "tmpfs", str(point)], capture_output=True,
                           text=True)
        assert p.returncode == 0, f"these tests mount a tmpfs (as root, as CI runs): {p.stderr.strip()}"
        mounted.append(point)
        return point

    yield mount
    for point in reversed(mounted):
        subprocess.run(["umount", "-l", str(point)], capture_output=True)


def _fill(point: Path, leave_bytes: int) -> Path:
    """Take all but ``leave_bytes`` of the file system (the sweep writes meanwhile: measure again)."""
    filler = point / "filler"
    with open(filler, "wb") as f:
        for _ in range(20):
            size = os.fstat(f.fileno()).st_size + shutil.disk_usage(point).free - leave_bytes
            try:
                os.posix_fallocate(f.fileno(), 0, max(0, size))
                return filler
            except OSError:  # the sweep took some of it between the two calls
                time.sleep(0.05)
    raise AssertionError(f"could not fill {point}")


def _mount_read_only_over(point: Path) -> None:
    """Put a read-only bind mount of ``point`` over it, in one step, while the sweep writes there.

    A tmpfs with files open for writing cannot be remounted read-only itself, and neither can a bind
    mount once a writer has opened a file through it: ``mount --bind`` then ``mount -o
    remount,bind,ro`` fails with EBUSY when the sweep opens a file between the two. So the bind
    mount is made read-only while it is still detached, where nothing can have opened a file
    (open_tree, mount_setattr), and then moved over the folder (move_mount); new files there are
    refused (EROFS) from that moment on.
    """
    libc = ctypes.CDLL(None, use_errno=True)
    open_tree, move_mount, mount_setattr = 428, 429, 442  # the same numbers on every architecture
    at_fdcwd, at_empty_path, at_recursive = -100, 0x1000, 0x8000
    open_tree_clone, move_mount_f_empty_path, mount_attr_rdonly = 1, 0x4, 0x1

    class MountAttr(ctypes.Structure):
        _fields_ = [("attr_set", ctypes.c_uint64), ("attr_clr", ctypes.c_uint64),
                    ("propagation", ctypes.c_uint64), ("userns_fd", ctypes.c_uint64)]

    def check(ret: int, what: str) -> int:
        if ret < 0:
            err = ctypes.get_errno()
            raise OSError(err, f"{what} {point}: {os.strerror(err)}")
        return ret

    syscall = libc.syscall
    syscall.restype = ctypes.c_long
    fd = check(syscall(ctypes.c_long(open_tree), ctypes.c_int(at_fdcwd), str(point).encode(),
                       ctypes.c_uint(open_tree_clone | os.O_CLOEXEC | at_recursive)), "open_tree")
    try:
        attr = MountAttr(attr_set=mount_attr_rdonly)
        check(syscall(ctypes.c_long(mount_setattr), ctypes.c_int(fd), b"", ctypes.c_uint(at_empty_path),
                      ctypes.byref(attr), ctypes.c_size_t(ctypes.sizeof(attr))), "mount_setattr")
        check(syscall(ctypes.c_long(move_mount), ctypes.c_int(fd), b"", ctypes.c_int(at_fdcwd), str(point).encode(),
                      ctypes.c_uint(move_mount_f_empty_path)), "move_mount")
    finally:
        os.close(fd)


def _rows(parquet: Path) -> int:
    try:
        return len(pd.read_parquet(parquet))
    except (OSError, ValueError):
        return 0


def _every_epoch_once(store: Path, tracking_uri: str, said: str = "") -> None:
    """Every epoch once in Parquet and in MLflow; ``said``: the sweep's output, shown on a failure."""
    from mlflow.tracking import MlflowClient

    table = pd.read_parquet(store / "space" / "trials.parquet")
    assert not table.duplicated(["trial_id", "epoch"]).any() and table["trial_id"].nunique() == 2
    assert table.groupby("trial_id")["finished"].any().all()
    client = MlflowClient(tracking_uri)
    exp = client.get_experiment_by_name("space")
    runs = [r for r in client.search_runs([exp.experiment_id]) if r.data.tags.get("rethink.role") == "trial"]
    assert len(runs) == 2
    for run in runs:
        epochs = sorted(table[table["trial_id"] == run.data.tags["rethink.trial_id"]]["epoch"])
        assert epochs == list(range(1, epochs[-1] + 1))
        logged = sorted(m.step for m in client.get_metric_history(run.info.run_id, "train_loss"))
        assert logged == epochs, (run.data.tags["rethink.trial_id"], logged, said[-6000:])


def test_a_storage_too_small_is_refused_before_anything_is_written(tmpfs):
    small = tmpfs("small", "3m")
    for cmd in (CLI + ["sweep", str(REPO / "sweeps" / "quick.py"), "--smoke", "--storage", str(small / "S")],
                [sys.executable, str(REPO / "sweeps" / "quick.py"), "--storage", str(small / "S")]):
        p = subprocess.run(cmd, capture_output=True, text=True, env=ENV, timeout=300)
        lines = p.stderr.strip().splitlines()
        assert p.returncode == 2 and len(lines) == 1, (p.returncode, p.stderr[-3000:])
        assert "MiB free" in lines[0] and "needs at least" in lines[0] and str(small) in lines[0], lines
        assert list(small.iterdir()) == [], "a refused sweep wrote something"


def test_train_json_that_cannot_be_written_says_so_in_one_line(tmp_path, tmpfs):
    """Two instances of a refused result write after training: a full file system (ENOSPC) and a
    file-size limit (EFBIG): one line naming the path and the OS error, exit 1, nothing left."""
    full = tmpfs("full", "1m")
    cases = {"No space left on device": (full / "h.json", None),
             "File too large": (tmp_path / "big" / "h.json", 2048)}
    (tmp_path / "big").mkdir()
    for why, (out, limit) in cases.items():
        def limited(limit=limit):
            if limit:
                resource.setrlimit(resource.RLIMIT_FSIZE, (limit, limit))

        if limit is None:
            _fill(full, 0)
        p = subprocess.run(CLI + ["train", "--arch", "mlp_1x512", "--epochs", "2", "--quiet", "--json", str(out)],
                           capture_output=True, text=True, env=ENV, timeout=300, preexec_fn=limited)
        lines = p.stderr.strip().splitlines()
        assert p.returncode == 1 and len(lines) == 1, (why, p.returncode, p.stderr[-3000:])
        assert lines[0] == f"rethink-dist: error: could not write {str(out)!r}: {why}", lines
        assert [f.name for f in out.parent.iterdir() if f.name != "filler"] == [], f"{why}: a half-written file"


@pytest.mark.parametrize("how", ["full", "read-only"])
def test_a_storage_that_refuses_writes_mid_sweep_stops_it_and_resume_finishes(tmp_path, tmpfs, how):
    """Two instances: the file system fills up (the free-space watch or the first refused write
    stops the sweep), or it turns read-only (no free-space sign: the refused writes stop it). After the full disk, Tune's own state is also cut short, and --resume must do without it."""
    point = tmpfs("disk", "96m")
    store = point / "store"
    sweep = tmp_path / "space.py"
    sweep.write_text(SWEEP)
    cmd = CLI + ["sweep", str(sweep), "--storage", str(store), "--ray-address", "local", "--num-cpus", "1",
                 "--max-concurrent", "1", "--report-seconds", "0"]
    parquet = store / "space" / "trials.parquet"

    log = open(tmp_path / "refused.log", "w")
    proc = subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT, env=ENV)
    filler = None
    try:
        wait_for(lambda: _rows(parquet) >= 3, 300, "the first epochs in Parquet")
        if how == "full":
            filler = _fill(point, 256 * 1024)
        else:  # a read-only bind mount over it: new files are refused (EROFS)
            _mount_read_only_over(point)
        proc.wait(timeout=300)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
        log.close()
        if how == "read-only":
            subprocess.run(["umount", str(point)], check=True)  # the bind mount: writable again
    out = (tmp_path / "refused.log").read_text()
    assert proc.returncode == 1, (proc.returncode, out[-3000:])
    said = [ln for ln in out.splitlines() if ln.startswith("rethink-dist: ") and "stopping the sweep" in ln]
    assert len(said) == 1 and str(point) in said[0] and "--resume" in said[0], out[-4000:]
    assert "unfinished (the storage refused writes: free some space or make it writable, then continue with --resume)" in out, out[-3000:]
    assert out.count("Traceback") <= 2, out[-4000:]  # no flood: at most a checkpoint caught mid-write
    kept = _rows(parquet)
    assert kept >= 3

    if how == "full":  # Tune's own state was cut short too (the worst case): the project's records suffice
        filler.unlink()
        for state in (store / "space" / "tune").glob("experiment_state-*.json"):
            state.write_bytes(state.read_bytes()[: state.stat().st_size // 2])
    p = subprocess.run(cmd + ["--resume"], capture_output=True, text=True, env=ENV, timeout=600)
    assert p.returncode == 0, p.stdout[-3000:] + p.stderr[-3000:]
    if how == "full":
        assert "cannot be read" in p.stderr and "continue from the project's own records" in p.stderr, p.stderr[-3000:]
    assert _rows(parquet) >= kept
    _every_epoch_once(store, f"sqlite:///{store / 'mlflow.db'}", out[-3000:] + "\n--- --resume:\n" + p.stderr)


def test_a_sweep_refused_by_its_mlflow_store_writes_nothing(tmp_path):
    """A refusal that comes after the sweep's folder is made (the store is not an MLflow database):
    the storage is left exactly as it was (the other such refusal, a second driver, is in
    test_sweep_stops.py)."""
    store = tmp_path / "S"
    store.mkdir()
    (store / "mlflow.db").write_bytes(b"this is not a database, just bytes\n" * 100)
    before = sorted(p.relative_to(store) for p in store.rglob("*"))
    p = subprocess.run(CLI + ["sweep", str(REPO / "sweeps" / "quick.py"), "--smoke", "--storage", str(store)],
                       capture_output=True, text=True, env=ENV, timeout=300)
    lines = p.stderr.strip().splitlines()
    assert p.returncode == 2 and len(lines) == 1 and "MLflow" in lines[0], (p.returncode, p.stderr[-3000:])
    assert sorted(p.relative_to(store) for p in store.rglob("*")) == before, "the refused sweep wrote files"


def test_a_finished_trial_whose_run_missed_its_closing_is_backfilled_by_a_resume_without_tunes_state(tmp_path):
    """The state a full disk can leave (above, when a trial ends just after the disk fills): the
    trial finished in Parquet, its MLflow run never got its epochs or its status, and Tune's own
    state is cut short. Made here by hand on a finished sweep (synthetic trials), by removing what
    the run's closing wrote from MLflow's SQLite store. ``--resume`` runs no trial again and gives
    that run every epoch once and its FINISHED status; the other run is left as it was."""
    import sqlite3

    from mlflow.tracking import MlflowClient

    epochs = 8
    sweep = tmp_path / "closing.py"
    sweep.write_text('NAME = "closing"\n\ndef trials(data_root=None):\n'
                     f'    return [{{"kind": "synthetic", "params": {{"epochs": {epochs}, "seed": i, "cpus": 0.5}}}} '
                     'for i in range(2)]\n')
    store = tmp_path / "store"
    cmd = CLI + ["sweep", str(sweep), "--storage", str(store), "--ray-address", "local", "--num-cpus", "1"]
    p = subprocess.run(cmd, capture_output=True, text=True, env=ENV, timeout=600)
    assert p.returncode == 0, p.stdout[-3000:] + p.stderr[-3000:]
    client = MlflowClient(f"sqlite:///{store / 'mlflow.db'}")
    exp = client.get_experiment_by_name("closing")

    def trial_runs():
        return {r.data.tags["rethink.trial_id"]: r for r in client.search_runs([exp.experiment_id])
                if r.data.tags.get("rethink.role") == "trial"}

    runs = trial_runs()
    lost, kept = sorted(runs)
    with sqlite3.connect(store / "mlflow.db") as db:  # the closing that never reached the store
        for table in ("metrics", "latest_metrics"):
            db.execute(f"DELETE FROM {table} WHERE run_uuid = ?", (runs[lost].info.run_id,))
        db.execute("UPDATE runs SET status = 'RUNNING', end_time = NULL WHERE run_uuid = ?",
                   (runs[lost].info.run_id,))
    assert client.get_metric_history(runs[lost].info.run_id, "train_loss") == []
    for state in (store / "closing" / "tune").glob("experiment_state-*.json"):
        state.write_bytes(state.read_bytes()[: state.stat().st_size // 2])
    rows_before = pd.read_parquet(store / "closing" / "trials.parquet")

    p = subprocess.run(cmd + ["--resume"], capture_output=True, text=True, env=ENV, timeout=600)
    assert p.returncode == 0, p.stdout[-3000:] + p.stderr[-3000:]
    assert "cannot be read" in p.stderr and "the 0 unfinished trials" in p.stderr, p.stderr[-3000:]
    after = trial_runs()
    assert set(after) == {lost, kept} and after[kept].info.end_time == runs[kept].info.end_time
    for tid in (lost, kept):
        steps = sorted(m.step for m in client.get_metric_history(after[tid].info.run_id, "train_loss"))
        assert steps == list(range(1, epochs + 1)), (tid, steps, p.stderr[-3000:])
        assert after[tid].info.status == "FINISHED" and any(k.startswith("summary.") for k in after[tid].data.metrics)
    assert after[lost].data.params.get("meta.synthetic") == "True"
    pd.testing.assert_frame_equal(pd.read_parquet(store / "closing" / "trials.parquet"), rows_before)
