"""A data-parallel trial that resizes, on a real autoscaler (cluster/laptop.yaml), with gloo.

One sweep of one data-parallel trial (digits through a real .beton, 1 to 2 Ray Train workers of
0.9 CPU, so that each one-CPU gpu_1x node holds one worker and the node of the first also holds
the Tune trial's 0.1 CPU). Once Parquet has epochs at world size 2, the node of the worker that
shares no node with the Tune trial is SIGKILLed, and the autoscaler may add no node (gpu_1x
max_workers lowered to the one node left: a spot market with no capacity). The trial must go on
from its checkpoint at world size 1 on the node left, without waiting for a replacement, and
finish there with every epoch exactly once in Parquet and in MLflow. (Growing back when capacity
returns is Ray Train's resize of a running group, docs/imagenet.md; the suite does not wait for
it: the coordinator's 20 s view of the cluster makes it a minute more.)
"""

from __future__ import annotations

import subprocess
import time

import pytest
import yaml
from laptop_cluster import LaptopCluster, _cmdline, _environ, _rows
from test_sweep import child_runs, mlflow_runs

from conftest import VENV_BIN

EPOCHS = 20
MAX_TRAIN, BATCH = 1280, 16  # 80 steps an epoch at either world size


def _sweep_file(path, beton, epochs: int):
    path.write_text(f'''"""One data-parallel trial on 1 to 2 workers."""
from rethink_dist.config import TrialConfig

NAME = "elastic_ddp"


def trials(data_root=None):
    return [TrialConfig.from_dict({{
        "data": {{"name": "digits", "loader": "ffcv", "beton_dir": {str(beton)!r}, "max_train": {MAX_TRAIN}}},
        "model": {{"name": "mlp_3x512"}}, "optim": {{"epochs": {epochs}, "batch_size": {BATCH}}}, "device": "cpu",
        "resources": {{"ddp_workers": 2, "ddp_min_workers": 1, "cpus": 0.9, "ddp_resize_check_s": 2.0}}}})]
''')
    return path


def _set_max_workers(cluster: LaptopCluster, node_type: str, n: int) -> None:
    """The autoscaler reads its config again every update: the capacity the 'cloud' has now."""
    config = yaml.safe_load(cluster.config_path.read_text())
    config["available_node_types"][node_type]["max_workers"] = n
    cluster.config_path.write_text(yaml.safe_dump(config))


def _nodes_of(cluster: LaptopCluster, title: str) -> set[str]:
    """The nodes whose processes run a Ray actor of this title (e.g. ``TrainController``)."""
    out = set()
    for pid in cluster.own_pids():
        if f"ray::{title}" in _cmdline(pid):
            node = _environ(pid).get("RAY_OVERRIDE_NODE_ID_FOR_TESTING")
            if node:
                out.add(node)
    return out


@pytest.fixture(scope="module")
def digits_beton(tmp_path_factory):
    from rethink_dist.data.ffcv_writer import prepare

    out = tmp_path_factory.mktemp("digits") / "beton"
    prepare("digits", None, out, workers=2)
    return out


@pytest.fixture(scope="module")
def resized(tmp_path_factory, mlflow_server, digits_beton):
    root = tmp_path_factory.mktemp("elastic_ddp")
    cluster = LaptopCluster(root / "cluster", overrides={"idle_timeout_minutes": 0.2},
                            node_types={"gpu_8x": {"max_workers": 0}, "gpu_1x": {"max_workers": 2}},
                            # A worker group that waits for a node Ray Train's resource view still
                            # lists gives up after 15 s (default 60) and starts at the size there is.
                            env={"RAY_TRAIN_WORKER_GROUP_START_TIMEOUT_S": "15"})
    out: dict = {"t0": time.time()}
    try:
        sweep = _sweep_file(root / "elastic_ddp.py", digits_beton, EPOCHS)
        store = root / "store"
        parquet = store / "elastic_ddp" / "trials.parquet"
        log = open(root / "driver.log", "w")
        driver = subprocess.Popen(
            [str(VENV_BIN / "rethink-dist"), "sweep", str(sweep), "--ray-address", cluster.address,
             "--storage", str(store), "--tracking-uri", mlflow_server],
            env=cluster.env, stdout=log, stderr=subprocess.STDOUT, cwd=root, start_new_session=True)

        def rows(where=lambda df: df):
            assert driver.poll() is None, f"the driver ended early: {(root / 'driver.log').read_text()[-3000:]}"
            df = _rows(parquet)
            return None if df is None else where(df)

        def at_two():
            df = rows()
            return df is not None and (df["world_size"] == 2).sum() >= 2 and (df,)

        df = cluster.wait(at_two, 240, "epochs at world size 2")[0]
        out["t_two"] = time.time()
        workers = cluster.workers_alive()
        trial_nodes = _nodes_of(cluster, "TrainController")
        assert len(workers) == 2 and len(trial_nodes) == 1, (workers, trial_nodes)
        victim = next(n for n in workers if n not in trial_nodes)
        out["victim_rank0"] = victim in set(df[df["world_size"] == 2]["node_id"])
        out["last_epoch_before_kill"] = int(rows()["epoch"].max())
        # Room after the fault for the epochs at world size 1 the test waits for (three, and the one
        # whose report may be under way) before the trial ends.
        assert out["last_epoch_before_kill"] <= EPOCHS - 8, "the trial is too far along before the fault"
        assert cluster.kill_node(victim)
        out["t_kill"] = time.time()
        out["victim"] = victim
        # No capacity for a replacement until the trial has gone on without it. Lowered once the GCS
        # has the node dead (3 s) and before the autoscaler takes it for lost (5 s): of the two
        # gpu_1x nodes it then lists, it ends the one used longest ago (the lost one), not the other.
        cluster.wait(lambda: victim not in cluster.workers_alive(), 30, "the GCS to find the node dead")
        _set_max_workers(cluster, "gpu_1x", 1)

        def at_one_after_kill():
            df = rows()
            return df is not None and ((df["world_size"] == 1) & (df["ended_at"] > out["t_kill"])).sum() >= 3

        cluster.wait(at_one_after_kill, 120, "epochs at world size 1 after the node was lost")
        out["t_one"] = time.time()
        out["workers_while_one"] = cluster.workers_alive()
        while driver.poll() is None:
            assert time.time() < out["t0"] + 600, "the sweep did not finish within 10 minutes"
            time.sleep(0.5)
        out["t_end"] = time.time()
        log.close()
        out["driver_rc"] = driver.returncode
        out["driver_log"] = (root / "driver.log").read_text()
        out["parquet"] = _rows(parquet).sort_values("epoch")
        out["monitor_log"] = cluster.monitor_log(20000)
        return out
    finally:
        cluster.shutdown()


def test_lost_node_shrinks_the_trial_which_finishes_at_the_smaller_size(resized, mlflow_server):
    r = resized
    assert r["driver_rc"] == 0, r["driver_log"][-4000:]
    assert "1/1 trials with results, 0 failed" in r["driver_log"], r["driver_log"][-3000:]
    df = r["parquet"]
    # Every epoch exactly once, in order, at the world size of the attempt that trained it.
    assert df["epoch"].tolist() == list(range(1, EPOCHS + 1)), "a gap or a repeated epoch"
    assert df["step"].is_monotonic_increasing and df["ended_at"].is_monotonic_increasing
    assert set(df["world_size"]) == {1, 2}
    sizes = df["world_size"].tolist()
    runs = [s for i, s in enumerate(sizes) if i == 0 or sizes[i - 1] != s]
    # 2 before the fault (after, possibly, a start at 1 while the second node booted), then 1 to the end.
    assert runs[-2:] == [2, 1], runs
    after_kill = df[df["ended_at"] > r["t_kill"]]
    shrunk = after_kill[after_kill["world_size"] == 1]
    # The trial went on at world size 1 while no replacement could start: the one node left held it.
    assert r["workers_while_one"] == [n for n in r["workers_while_one"] if n != r["victim"]]
    assert len(r["workers_while_one"]) == 1, r["workers_while_one"]
    assert r["victim"] not in set(shrunk["node_id"])
    # It went on from its last checkpoint: the first epoch at world size 1 follows the last one Parquet
    # had when the node was lost, or the one whose report was under way then.
    assert int(shrunk["epoch"].min()) - r["last_epoch_before_kill"] in (1, 2), (shrunk["epoch"].min(), r)
    assert int(shrunk["epoch"].max()) == EPOCHS
    # The global batch stayed optim.batch_size: the same number of steps per epoch at every size.
    assert set(df["step"].diff().dropna()) == {MAX_TRAIN // BATCH}, df["step"].diff().value_counts()
    assert df["finished"].sum() == 1 and bool(df["finished"].iloc[-1])

    client, runs_ = mlflow_runs(mlflow_server, "elastic_ddp")
    children = child_runs(runs_)
    assert len(children) == 1 and children[0].info.status == "FINISHED"
    for key in ("train_loss", "test_acc"):
        steps = [m.step for m in client.get_metric_history(children[0].info.run_id, key)]
        assert sorted(steps) == list(range(1, EPOCHS + 1)), f"MLflow {key}: a gap or a repeated epoch"
    print(f"\nelastic ddp: world 2 at {r['t_two'] - r['t0']:.0f} s, node lost at {r['t_kill'] - r['t0']:.0f} s "
          f"(rank 0's node: {r['victim_rank0']}), world 1 rows by {r['t_one'] - r['t0']:.0f} s, "
          f"end {r['t_end'] - r['t0']:.0f} s; sizes {runs}")
