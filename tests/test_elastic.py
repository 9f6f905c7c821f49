"""The elastic half, on a real autoscaler: cluster/laptop.yaml (Ray's fake multi-node provider,
real raylets it starts and ends), real Tune, a real `mlflow server`.

One sweep of three trials starts with no worker node. The autoscaler adds a node per waiting
trial; mid-run one node is SIGKILLed (a spot node lost without notice) and another is drained
with reason PREEMPTION and a deadline, then SIGKILLed at the deadline (a spot interruption with
notice). The sweep must finish with every epoch exactly once in Parquet and MLflow, the two
faulted trials equal, epoch by epoch, to the third (the same training, which no fault reached),
the preempted trial having trained no finished epoch twice, and the nodes ended once idle
(tests/laptop_cluster.py's spot_scenario, which bench/elastic.py runs to measure the same).
"""

from __future__ import annotations

import pytest
from laptop_cluster import HEAD_NODE_ID, spot_scenario
from test_sweep import child_runs, mlflow_runs

from rethink_dist.sweep.results import read_faults

EPOCHS = 400


@pytest.fixture(scope="module")
def spot(tmp_path_factory, mlflow_server):
    return spot_scenario(tmp_path_factory.mktemp("spot"), mlflow_server, epochs=EPOCHS)


def test_the_autoscaler_adds_nodes_for_waiting_trials_and_ends_them_idle(spot):
    import pandas as pd

    assert spot["driver_rc"] == 0, spot["driver_log"][-4000:]
    assert "3/3 trials with results, 0 failed" in spot["driver_log"], spot["driver_log"][-3000:]
    df = pd.read_parquet(spot["folder"] / "trials.parquet")
    # The head offers no CPU: every epoch ran on a node the autoscaler launched.
    assert HEAD_NODE_ID not in set(df["node_id"])
    assert set(df["node_id"]) <= set(spot["nodes_seen"]), "an epoch ran on a node the GCS never listed"
    # One node per trial at first, then a replacement for each of the two lost ones.
    assert len(spot["nodes_before_faults"]) == 3, spot["nodes_before_faults"]
    assert len(spot["nodes_seen"]) >= 5, (spot["nodes_seen"], spot["monitor_log"][-3000:])
    # Every node was ended once idle (the scenario waited for it), after the sweep's end.
    assert all(v["last"] >= spot["t_all_running"] for v in spot["nodes_seen"].values() if v["first"] > spot["t_kill"])
    assert "Removing" in spot["monitor_log"] or "idle" in spot["monitor_log"], spot["monitor_log"][-3000:]


def test_every_epoch_is_written_exactly_once(spot, mlflow_server):
    import pandas as pd

    df = pd.read_parquet(spot["folder"] / "trials.parquet")
    for tid, rows in df.groupby("trial_id"):
        assert sorted(rows["epoch"]) == list(range(1, EPOCHS + 1)), f"{tid}: a gap or a repeated epoch"
        assert rows["finished"].sum() == 1 and bool(rows.sort_values("epoch")["finished"].iloc[-1])
    client, runs = mlflow_runs(mlflow_server, "spot")
    children = child_runs(runs)
    assert len(children) == 3 and {r.info.status for r in children} == {"FINISHED"}
    for run in children:
        steps = [m.step for m in client.get_metric_history(run.info.run_id, "train_loss")]
        assert sorted(steps) == list(range(1, EPOCHS + 1)), "MLflow has a gap or a repeated epoch"


def test_lost_and_preempted_trials_resume_on_new_nodes_and_record_the_fault(spot):
    import pandas as pd

    df = pd.read_parquet(spot["folder"] / "trials.parquet")
    faults = {f["trial_id"]: f for f in read_faults(spot["folder"])}
    assert set(faults) == {spot["lost_trial"], spot["preempted_trial"]}, faults
    lost, preempted = faults[spot["lost_trial"]], faults[spot["preempted_trial"]]
    assert lost["kind"] == "node lost" and lost["node_id"] == spot["lost_node"], lost
    assert preempted["kind"] == "preempted" and preempted["node_id"] == spot["preempted_node"], preempted
    # With notice the trial checkpointed the epoch it had finished and stopped: nothing to train again.
    assert preempted["retrained_epochs"] == 0, preempted
    assert lost["retrained_epochs"] is not None and lost["retrained_epochs"] >= 0, lost
    for key in ("lost", "preempted"):
        rows = df[df["trial_id"] == spot[f"{key}_trial"]].sort_values("epoch")
        nodes = list(dict.fromkeys(rows["node_id"]))
        assert nodes[0] == spot[f"{key}_node"] and len(nodes) == 2, (key, nodes)
        first_moved = int(rows[rows["node_id"] != nodes[0]]["epoch"].min())
        # It went on from its checkpoint, not from the start.
        assert first_moved == faults[spot[f"{key}_trial"]]["checkpoint_epoch"] + 1 > 1, (key, first_moved)


def test_the_reports_timeline_marks_both_losses(spot):
    import pandas as pd

    from rethink_dist.report.timeline import cluster_timeline

    timeline = cluster_timeline(pd.read_parquet(spot["folder"] / "trials.parquet"))
    moves = {m["trial_id"]: m for m in timeline["moves"]}
    assert set(moves) == {spot["lost_trial"], spot["preempted_trial"]}, moves
    for key in ("lost", "preempted"):
        move = moves[spot[f"{key}_trial"]]
        assert move["from"] == spot[f"{key}_node"] and move["to"] != move["from"] and move["node_lost"], move
    labels = [n["label"] for n in timeline["nodes"]]
    assert len(set(labels)) == len(labels) == len({s["lane"] for s in timeline["segments"]}), labels


def test_faulted_trials_equal_the_unfaulted_run(spot):
    """The resumed trials are exact: the same losses, accuracies and step of fit, epoch by epoch, as
    the sweep's third trial, the same training (the trials differ in their name only) that no
    fault reached."""
    import pandas as pd

    df = pd.read_parquet(spot["folder"] / "trials.parquet")
    keys = ["train_loss", "train_acc", "train_acc_corrupted", "test_acc", "steps_to_fit", "labels_fingerprint"]
    want = df[df["trial_id"] == spot["unfaulted_trial"]].sort_values("epoch")[keys].reset_index(drop=True)
    assert want["train_loss"].nunique() > 10, "the unfaulted run did not train"
    for tid in (spot["lost_trial"], spot["preempted_trial"]):
        got = df[df["trial_id"] == tid].sort_values("epoch")[keys].reset_index(drop=True)
        pd.testing.assert_frame_equal(got, want, check_exact=True, obj=f"trial {tid} against the unfaulted run")
