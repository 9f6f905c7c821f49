"""Data-parallel (ImageNet-style) trials: Ray Train inside a Ray Tune trial, for real.

One sweep of one trial runs on a local Ray (gloo, 2 CPU workers) and logs to a real MLflow
server: Inception V3 at 75x75 on an ImageNet-layout folder of JPEG files written here, through
FFCV .beton files, with random labels, augmentation, dropout and weight decay. While it runs the
test kills one of its Ray Train workers (rank 1, by the pid the worker recorded in its
checkpoint). Then:

- both ranks hold identical weights (digests computed in each worker process);
- the ranks' shards of each epoch are disjoint and cover the training set;
- top-1 and top-5 (and the best top-1 so far) are in the Parquet table and in MLflow, every epoch once;
- the killed trial resumed from its checkpoint (new processes, started from a later epoch) and finished;
- the random labels each rank trained on equal those a single process sees for the same seed.

``rethink-dist train ... --ddp-workers 2 --json OUT`` runs one such trial through the same Tune
path and writes the summary with top-5 and the best test accuracy; bad input exits 2 before Ray.
"""

from __future__ import annotations

import glob
import json
import os
import signal
import textwrap
import threading
import time
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch

from rethink_dist.sweep import load_sweep, run_sweep

EPOCHS = 4
WORKERS = 2
N_TRAIN, N_TEST, CLASSES = 48, 20, ("n0001", "n0002", "n0003", "n0004")
SWEEP = """
NAME = "ddp_imagenet"

def trials(data_root=None):
    from rethink_dist.config import imagenet_trial

    return [imagenet_trial(data_root, augment=True, dropout=True, weight_decay=True, random_labels=True, seed=3,
                           image_size=75, resources={"ddp_workers": WORKERS, "cpus": 1.0, "gpus": 0.0},
                           **{"optim.batch_size": 16, "optim.epochs": EPOCHS, "optim.lr": 0.02, "device": "cpu"})]
"""


def _jpeg_tree(root: Path) -> None:
    """train/<wnid>/*.JPEG and val/<wnid>/*.JPEG: smooth random images of assorted sizes."""
    from PIL import Image

    rng = np.random.default_rng(11)
    for split, per_class in (("train", N_TRAIN // len(CLASSES)), ("val", N_TEST // len(CLASSES))):
        for wnid in CLASSES:
            (root / split / wnid).mkdir(parents=True, exist_ok=True)
            for k in range(per_class):
                h, w = (int(v) for v in rng.integers(80, 112, 2))
                base = rng.integers(0, 256, (h // 8 + 1, w // 8 + 1, 3)).astype(np.uint8)
                Image.fromarray(base).resize((w, h), Image.BILINEAR).save(root / split / wnid / f"{wnid}_{k}.JPEG",
                                                                          quality=90)


@pytest.fixture(scope="module")
def beton(tmp_path_factory) -> Path:
    from rethink_dist.data.ffcv_writer import prepare

    root = tmp_path_factory.mktemp("imagenet")
    _jpeg_tree(root / "raw")
    prepare("imagenet", str(root / "raw"), root / "beton", max_resolution=96, write_mode="jpg", workers=2)
    return root / "beton"


@pytest.fixture(scope="module")
def local_ray():
    import ray

    os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")
    # A new local Ray of our own (address="local": never join another session's cluster on this machine).
    ray.init(address="local", num_cpus=3, include_dashboard=False, log_to_driver=False)  # 2 workers x 1 CPU + 0.1
    yield
    ray.shutdown()


def _checkpoints(store: Path) -> list[Path]:
    return sorted(Path(p).parent for p in glob.glob(str(store / "ddp_imagenet" / "tune" / "*" / "checkpoint_*" / "ddp.json")))


def _read_json(path: Path):
    try:
        return json.loads(path.read_text())
    except (OSError, ValueError):  # Tune keeps two checkpoints and removes older ones
        return None


@pytest.fixture(scope="module")
def ddp_run(local_ray, mlflow_server, beton, tmp_path_factory):
    """The sweep, with rank 1 killed once the first epoch is checkpointed."""
    tmp = tmp_path_factory.mktemp("ddp")
    path = tmp / "ddp_imagenet.py"
    path.write_text(textwrap.dedent(SWEEP).replace("WORKERS", str(WORKERS)).replace("EPOCHS", str(EPOCHS)))
    sweep = load_sweep(path, data_root=str(beton))
    store = tmp / "store"
    result: dict = {}
    runner = threading.Thread(target=lambda: result.update(
        run_sweep(sweep, storage=str(store), tracking_uri=mlflow_server, verbose=0)))
    runner.start()
    victim = None
    try:
        deadline = time.time() + 400
        while victim is None and time.time() < deadline and runner.is_alive():
            for ck in _checkpoints(store):
                audit = _read_json(ck / "ddp.json")
                if audit and audit["epoch"] >= 1:
                    victim = {"pid": audit["ranks"][1]["pid"], "epoch": audit["epoch"]}
                    break
            time.sleep(0.5)
        assert victim is not None, f"no checkpoint within the time limit: {result}"
        assert victim["epoch"] < EPOCHS, "the trial finished before it could be killed: make it longer"
        os.kill(victim["pid"], signal.SIGKILL)  # rank 1, a Ray Train worker this test's sweep started
    finally:
        runner.join(timeout=600)
    assert not runner.is_alive(), "the sweep did not finish"
    assert result.get("errors") == 0, result
    final = max(_checkpoints(store), key=lambda p: _read_json(p / "ddp.json")["epoch"])
    return {"sweep": sweep, "store": store, "result": result, "victim": victim, "final": final,
            "audit": _read_json(final / "ddp.json"), "uri": mlflow_server,
            "parquet": pd.read_parquet(store / "ddp_imagenet" / "trials.parquet").sort_values("epoch")}


# ---------------------------------------------------------------------------------------------
def test_ranks_hold_identical_weights(ddp_run):
    audit = ddp_run["audit"]
    assert audit["epoch"] == EPOCHS and audit["world_size"] == WORKERS and audit["backend"] == "gloo"
    ranks = audit["ranks"]
    assert [r["rank"] for r in ranks] == list(range(WORKERS))
    assert len({r["pid"] for r in ranks}) == WORKERS, "the ranks were not separate processes"
    assert len({r["weights_sha256"] for r in ranks}) == 1, ranks
    # The digest is of the weights in the checkpoint rank 0 wrote.
    import hashlib

    state = torch.load(ddp_run["final"] / "state.pt", map_location="cpu", weights_only=False)
    h = hashlib.sha256()
    for name, t in state["model"].items():
        h.update(name.encode())
        h.update(t.reshape(-1).contiguous().view(torch.uint8).numpy().tobytes())
    assert h.hexdigest() == ranks[0]["weights_sha256"]


def test_shards_are_disjoint_and_cover_the_epoch(ddp_run):
    checked = 0
    for ck in _checkpoints(ddp_run["store"]):  # the last two epochs' checkpoints
        shards = np.load(ck / "shards.npz")
        idx = [shards[f"rank{r}_index"] for r in range(WORKERS)]
        assert [len(i) for i in idx] == [N_TRAIN // WORKERS] * WORKERS
        assert not set(idx[0].tolist()) & set(idx[1].tolist()), "two ranks trained on the same sample"
        assert sorted(np.concatenate(idx).tolist()) == list(range(N_TRAIN)), "the shards do not cover the epoch"
        checked += 1
    assert checked == 2
    a = np.load(_checkpoints(ddp_run["store"])[0] / "shards.npz")["rank0_index"]
    b = np.load(_checkpoints(ddp_run["store"])[1] / "shards.npz")["rank0_index"]
    assert not np.array_equal(a, b), "the shard order did not change between epochs"


def test_top1_top5_reported_and_logged_in_mlflow(ddp_run):
    df = ddp_run["parquet"]
    assert list(df["epoch"]) == list(range(1, EPOCHS + 1))
    for col in ("train_acc", "test_acc", "test_top5", "best_test_acc", "train_loss"):
        assert df[col].notna().all(), col
    assert (df["test_top5"] >= df["test_acc"]).all()
    assert (df["test_top5"] == 1.0).all()  # 4 classes: the top 5 holds every class
    assert np.allclose(df["best_test_acc"], np.maximum.accumulate(df["test_acc"]))
    # accuracies are counts over the whole split, summed across the ranks
    assert all(abs(v * N_TEST - round(v * N_TEST)) < 1e-9 for v in df["test_acc"])
    assert all(abs(v * N_TRAIN - round(v * N_TRAIN)) < 1e-9 for v in df["train_acc"])

    from mlflow.tracking import MlflowClient

    client = MlflowClient(ddp_run["uri"])
    exp = client.get_experiment_by_name("ddp_imagenet")
    runs = [r for r in client.search_runs([exp.experiment_id]) if r.data.tags.get("rethink.role") == "trial"]
    assert len(runs) == 1 and runs[0].info.status == "FINISHED"
    run = runs[0]
    for key in ("test_acc", "test_top5", "best_test_acc", "train_acc"):
        hist = client.get_metric_history(run.info.run_id, key)
        assert sorted(m.step for m in hist) == list(range(1, EPOCHS + 1)), f"{key}: a gap or a repeated epoch"
        by_step = {m.step: m.value for m in hist}
        assert np.allclose([by_step[e] for e in range(1, EPOCHS + 1)], df[key]), key
    p = run.data.params
    assert p["resources.ddp_workers"] == str(WORKERS) and p["meta.ddp_backend"] == "gloo"
    assert p["meta.recipe"] == "imagenet-sync-sgd-v1" and p["meta.batch_per_worker"] == "8"
    assert float(p["optim.lr_decay"]) == pytest.approx(0.94 ** 0.5) and p["optim.batch_size"] == "16"
    assert float(p["reg.dropout"]) == 0.2 and float(p["reg.weight_decay"]) == 4e-5 and p["reg.augment"] == "True"
    assert run.data.metrics["summary.test_top5"] == 1.0
    assert run.data.metrics["summary.best_test_acc"] == pytest.approx(df["best_test_acc"].iloc[-1])


def test_killed_worker_resumes_from_checkpoint(ddp_run):
    victim, audit, df = ddp_run["victim"], ddp_run["audit"], ddp_run["parquet"]
    assert victim["pid"] not in {r["pid"] for r in audit["ranks"]}, "the killed worker is still in the final group"
    assert audit["started_from_epoch"] >= victim["epoch"] >= 1, \
        "the restarted workers did not resume from the checkpoint"
    assert list(df["epoch"]) == list(range(1, EPOCHS + 1)) and df["step"].is_monotonic_increasing
    history = json.loads((ddp_run["final"] / "history.json").read_text())
    assert [h["epoch"] for h in history] == list(range(1, EPOCHS + 1))
    # Ray Train restarted the worker group itself: the Tune trial never failed.
    from mlflow.tracking import MlflowClient

    client = MlflowClient(ddp_run["uri"])
    exp = client.get_experiment_by_name("ddp_imagenet")
    run = [r for r in client.search_runs([exp.experiment_id]) if r.data.tags.get("rethink.role") == "trial"][0]
    assert "rethink.last_error" not in run.data.tags


def test_random_labels_per_rank_equal_single_process(ddp_run, beton):
    """The labels each rank trained on are the single-process loader's for the same corruption seed."""
    from rethink_dist.config import TrialConfig
    from rethink_dist.data.ffcv_loader import build_ffcv_loader
    from rethink_dist.train import labels_fingerprint

    cfg = TrialConfig.from_dict(ddp_run["sweep"].trials[0].config)
    single_cfg = cfg.replace(**{"resources.ddp_workers": 0, "optim.batch_size": 8})
    loader, _ = build_ffcv_loader(single_cfg, torch.device("cpu"))  # one process, no process group
    for _ in loader.train_batches(8, torch.Generator().manual_seed(0)):
        pass
    single = dict(zip(*(a.tolist() for a in loader.last_epoch)))  # index -> label, as one process trains on it
    assert sorted(single) == list(range(N_TRAIN))
    changed = sum(single[i] != int(loader.true_train_y[i]) for i in single)
    assert changed >= N_TRAIN // 2, "random labels left most labels unchanged"
    shards = np.load(ddp_run["final"] / "shards.npz")
    for r in range(WORKERS):
        idx, lab = shards[f"rank{r}_index"], shards[f"rank{r}_label"]
        assert [single[int(i)] for i in idx] == lab.tolist(), f"rank {r} saw other labels"
    assert set(ddp_run["parquet"]["labels_fingerprint"]) == {labels_fingerprint(loader.train_y)}


def test_cli_train_ddp_writes_summary(local_ray, beton, tmp_path):
    from rethink_dist.cli import main

    out = tmp_path / "out.json"
    code = main(["train", "--dataset", "imagenet", "--beton-dir", str(beton), "--arch", "inception_v3",
                 "--image-size", "75", "--ddp-workers", "2", "--epochs", "1", "--json", str(out), "--quiet"])
    assert code == 0
    result = json.loads(out.read_text())
    summary = result["summary"]
    assert {"train_acc", "test_acc", "test_top5", "best_test_acc", "steps_to_fit", "epochs", "steps", "fitted",
            "seconds"} <= set(summary)
    assert summary["epochs"] == 1 and summary["test_top5"] == 1.0 and summary["best_test_acc"] == summary["test_acc"]
    assert [h["epoch"] for h in result["history"]] == [1]
    assert result["meta"]["ddp_workers"] == 2 and result["meta"]["batch_per_worker"] == 64
    assert result["config"]["data"]["loader"] == "ffcv" and result["config"]["data"]["image_size"] == 75


@pytest.mark.parametrize("flags, message", [
    (["--batch-size", "15"], "must be a multiple of resources.ddp_workers=2"),
    (["--loader", "memory", "--dataset", "digits"], "needs data.loader='ffcv'"),
    (["--gpus", "0.5"], "each data-parallel worker needs whole GPUs"),
])
def test_cli_bad_ddp_input_exits_2(tmp_path, capsys, flags, message):
    from rethink_dist.cli import main

    code = main(["train", "--dataset", "imagenet", "--beton-dir", str(tmp_path), "--ddp-workers", "2", *flags])
    err = capsys.readouterr().err.strip()
    assert code == 2 and len(err.splitlines()) == 1 and message in err, err
