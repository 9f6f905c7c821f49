"""Data-parallel trials: a Ray Train ``TorchTrainer`` inside a Ray Tune trial (the ImageNet runs).

The sweep's Tune trainable hands a trial with ``resources.ddp_workers = N > 0`` to
:func:`run_ddp_trial`, which runs in the Tune trial's process (0.1 CPU) and starts N Ray Train
workers (``resources.cpus`` CPUs and ``resources.gpus`` GPUs each; NCCL on GPUs, gloo on CPUs).
On every worker:

- data: the trial's FFCV loader with ``distributed=True``: the rank reads its own shard of each
  epoch's order (disjoint shards that cover the epoch; see ``rethink_dist.data.ffcv_loader``).
  The corruption runs inside FFCV per sample, a pure function of (corruption seed, split,
  sample index), so every rank sees the labels a single process would;
- model: the :class:`~rethink_dist.train.Trial` of the config, its model wrapped in
  ``DistributedDataParallel`` (gradients averaged over the ranks every step). ``optim.batch_size``
  is the global batch: each rank takes ``batch_size / N`` samples a step;
- evaluation: rank r evaluates samples ``r::N`` of each split; the counts are summed across
  ranks, so the accuracies (top-1, top-5, on clean and corrupted samples) are the whole split's;
- rank 0 writes each epoch's checkpoint: ``state.pt`` and ``history.json`` as any trial's, plus
  ``summary.json`` (meta and summary), ``ddp.json`` (per rank: process, node, a digest of its
  weights, its shard's size) and ``shards.npz`` (the sample indices and labels each rank trained
  on that epoch): the proof that the ranks agree and that their shards partition the epoch.

Each report reaches this Tune trial through a Train callback; the trial reports it to Tune
with its checkpoint (so Tune holds it like any trial's: the Parquet writer reads it, a Tune retry
resumes from it), then logs the epoch to MLflow (:class:`~rethink_dist.tracking.TrialRun`, the
same child run, keys and exactly-once rule as a single-process trial). A lost worker makes Ray
Train restart the worker group from the last checkpoint (``FailureConfig``); if that fails too,
Tune retries the whole trial from its own copy of the checkpoint.

The ImageNet recipe (:data:`IMAGENET_RECIPE`, :func:`imagenet_trial`) is documented in
docs/imagenet.md.
"""

from __future__ import annotations

import hashlib
import json
import math
import os
import shutil
import socket
import sys
import tempfile
import threading
import time
import traceback
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Iterator

from rethink_dist.config import ConfigError, TrialConfig

# Worker-group restarts Ray Train attempts after a lost worker before the Tune trial fails
# (and Tune, with its own FailureConfig, retries the trial from its checkpoint).
MAX_WORKER_FAILURES = 3

# ------------------------------------------------------------------------------------------
# The ImageNet recipe (docs/imagenet.md explains each choice)
# ------------------------------------------------------------------------------------------
RECIPE_NAME = "imagenet-sync-sgd-v1"
IMAGENET_RECIPE = {
    "optim.batch_size": 256,  # global: 8 workers x 32, the per-replica batch of Inception V3's training
    "optim.lr": 0.1,  # the paper's Inception learning rate; the usual SGD rate at batch 256
    "optim.momentum": 0.9,  # the paper's CIFAR-10 optimiser
    "optim.lr_decay": 0.94 ** 0.5,  # 0.94 every two epochs (Inception V3's schedule), applied per epoch
    "optim.epochs": 90,
}
IMAGENET_WEIGHT_DECAY = 4e-5  # Inception V3's coefficient, when weight decay is on
IMAGENET_DROPOUT = 0.2  # Inception V3's keep probability 0.8 before the classifier, when dropout is on
IMAGENET_IMAGE_SIZE = 299
IMAGENET_RESOURCES = {"ddp_workers": 8, "cpus": 10.0, "gpus": 1.0}  # one 8-GPU node per trial


def imagenet_trial(beton_dir: str, *, augment: bool, dropout: bool, weight_decay: bool, random_labels: bool = False,
                   seed: int = 0, image_size: int = IMAGENET_IMAGE_SIZE, resources: dict[str, Any] | None = None,
                   **changes: Any) -> TrialConfig:
    """One Inception V3 trial of Table 2 / Figure 2a with the recipe; ``changes`` are dotted overrides."""
    cfg = TrialConfig.from_dict({
        "data": {"name": "imagenet", "loader": "ffcv", "beton_dir": str(beton_dir), "image_size": image_size},
        "corruption": {"kind": "labels" if random_labels else "none", "level": 1.0 if random_labels else 0.0,
                       "seed": seed},
        "model": {"name": "inception_v3"},
        "reg": {"augment": augment, "dropout": IMAGENET_DROPOUT if dropout else 0.0,
                "weight_decay": IMAGENET_WEIGHT_DECAY if weight_decay else 0.0},
        "resources": dict(resources or IMAGENET_RESOURCES),
        "seed": seed,
    })
    return cfg.replace(**{**IMAGENET_RECIPE, **changes})


# ------------------------------------------------------------------------------------------
# Inside each Ray Train worker
# ------------------------------------------------------------------------------------------
class RankLoader:
    """This rank's view of the FFCV loader: its training shard at the per-rank batch size."""

    def __init__(self, inner: Any, batch_size: int):
        self.inner, self.batch_size = inner, batch_size
        self.num_train = inner.num_train
        self.input_shape = inner.input_shape
        self.changed = inner.changed  # over this rank's evaluation shard of the training set

    def train_batches(self, batch_size: int, generator) -> Iterator[Any]:
        # The Trial asks for the global batch; this rank takes its share of it.
        return self.inner.train_batches(self.batch_size, generator)

    def eval_batches(self, split: str) -> Iterator[Any]:
        return self.inner.eval_batches(split)


def _trial_class():
    """DistributedTrial, defined on first use so that importing this module does not import torch."""
    global DistributedTrial
    if "DistributedTrial" in globals():
        return DistributedTrial
    import torch
    import torch.distributed as dist

    from rethink_dist.train import Trial

    class _DistributedTrial(Trial):
        """A Trial whose model is wrapped in DDP and whose evaluation is summed over the ranks."""

        def __init__(self, config: TrialConfig, loader: RankLoader, meta: dict[str, Any], rank: int, world: int):
            super().__init__(config, loader, meta)
            from torch.nn.parallel import DistributedDataParallel

            self.rank, self.world = rank, world
            self.seed_stream = (rank,)  # each rank its own dropout masks
            self.module = self.model
            ids = [torch.cuda.current_device()] if self.device.type == "cuda" else None
            self.model = DistributedDataParallel(self.module, device_ids=ids)  # broadcasts rank 0's weights

        @contextmanager
        def _plain(self):
            """The unwrapped model under ``self.model`` (state dicts without DDP's prefix, evaluation)."""
            ddp, self.model = self.model, self.module
            try:
                yield
            finally:
                self.model = ddp

        def state_dict(self) -> dict[str, Any]:
            with self._plain():
                return super().state_dict()

        def load_state_dict(self, state: dict[str, Any]) -> None:
            with self._plain():
                super().load_state_dict(state)

        def run_epoch(self) -> dict[str, Any]:
            record = super().run_epoch()
            # The loss averaged over the ranks' batches; throughput of all ranks together.
            t = torch.tensor([record["train_loss"], record["images_per_s"]], dtype=torch.float64, device=self.device)
            dist.all_reduce(t)
            record["train_loss"] = float(t[0]) / self.world
            record["images_per_s"] = float(t[1])
            return record  # the same dict as history[-1]

        def sync_buffers(self) -> None:
            """Give every rank rank 0's BatchNorm statistics (each rank's last step updated its own)."""
            for b in self.module.buffers():
                dist.broadcast(b, 0)

        def evaluate(self) -> dict[str, Any]:
            self.sync_buffers()
            with torch.inference_mode(), self._plain():
                self.model.eval()
                train1 = self._correct(self.loader.eval_batches("train"), topk=1)
                test1, test5 = self._correct(self.loader.eval_batches("test"), topk=5, both=True)
                changed = self.loader.changed
                local = [train1.numel(), int(train1.sum()), int(changed.sum()), int(train1[changed].sum()),
                         test1.numel(), int(test1.sum()), int(test5.sum())]
            counts = torch.tensor(local, dtype=torch.float64, device=self.device)
            dist.all_reduce(counts)
            n_train, ok_train, n_changed, ok_changed, n_test, ok1, ok5 = (float(c) for c in counts.cpu())
            n_clean = n_train - n_changed
            return {
                "train_acc": ok_train / n_train,
                "train_acc_clean": (ok_train - ok_changed) / n_clean if n_clean else None,
                "train_acc_corrupted": ok_changed / n_changed if n_changed else None,
                "test_acc": ok1 / n_test,
                "test_top5": ok5 / n_test,
            }

        def weights_digest(self) -> str:
            """sha256 of every parameter and buffer of the model, in state-dict order."""
            h = hashlib.sha256()
            for name, t in self.module.state_dict().items():
                h.update(name.encode())
                h.update(t.detach().reshape(-1).cpu().contiguous().view(torch.uint8).numpy().tobytes())
            return h.hexdigest()

    DistributedTrial = _DistributedTrial
    return DistributedTrial


def _train_worker(loop_config: dict[str, Any]) -> None:
    """The training function of each Ray Train worker: one rank of the trial, to its last epoch."""
    import numpy as np
    import ray
    import ray.train
    import torch
    import torch.distributed as dist

    from rethink_dist.data.ffcv_loader import build_ffcv_loader
    from rethink_dist.train import labels_fingerprint, resolve_device

    spec = loop_config["spec"]
    cfg = TrialConfig.from_dict(spec["config"]).resolved()
    tctx = ray.train.get_context()
    rank, world = tctx.get_world_rank(), tctx.get_world_size()
    torch.set_num_threads(max(1, int(cfg.resources.cpus)))
    if cfg.resources.gpus > 0 and torch.cuda.is_available():
        import ray.train.torch

        torch.cuda.set_device(ray.train.torch.get_device())
    device = resolve_device(cfg.device)
    per_rank = cfg.optim.batch_size // world
    # The loader reads at the per-rank batch; it knows nothing of the trial's resources.
    rank_cfg = cfg.replace(**{"optim.batch_size": per_rank, "resources.ddp_workers": 0})
    ffcv, meta = build_ffcv_loader(rank_cfg, device, distributed=True, eval_shard=(rank, world))
    meta.update({
        "labels_fingerprint": labels_fingerprint(ffcv.train_y),
        "ddp_workers": world,
        "ddp_backend": dist.get_backend(),
        "batch_per_worker": per_rank,
        "recipe": RECIPE_NAME if cfg.data.name == "imagenet" else "",
    })
    trial = _trial_class()(cfg, RankLoader(ffcv, per_rank), meta, rank, world)
    started_from = 0
    checkpoint = ray.train.get_checkpoint()
    if checkpoint is not None:
        with checkpoint.as_directory() as d:
            trial.load_state_dict(torch.load(Path(d) / "state.pt", map_location=trial.device, weights_only=False))
        started_from = trial.epoch
    me = {"rank": rank, "pid": os.getpid(), "node": socket.gethostname(),
          "node_id": ray.get_runtime_context().get_node_id()}

    while not trial.done:
        record = trial.run_epoch()  # evaluation synced rank 0's BatchNorm statistics to every rank
        indices, labels = ffcv.last_epoch
        mine = {**me, "weights_sha256": trial.weights_digest(), "samples": int(len(indices))}
        gathered: list[Any] = [None] * world
        dist.all_gather_object(gathered, (mine, indices.astype(np.int64), labels.astype(np.int64)))
        if rank != 0:
            ray.train.report({"rank": rank, "epoch": trial.epoch, "pid": me["pid"], "node": me["node"]})
            continue
        rows = [g[0] for g in gathered]
        if len({r["weights_sha256"] for r in rows}) != 1:
            raise RuntimeError(f"the ranks' weights differ after epoch {trial.epoch}: {[r['weights_sha256'][:12] for r in rows]}")
        all_idx = np.concatenate([g[1] for g in gathered])
        audit = {
            "epoch": trial.epoch, "world_size": world, "backend": meta["ddp_backend"],
            "started_from_epoch": started_from, "ranks": rows,
            "distinct_samples": int(len(np.unique(all_idx))), "num_train": int(ffcv.num_train),
            "repeated_samples": int(len(all_idx) - len(np.unique(all_idx))),
        }
        summary = trial.summary()
        # The history as of this checkpoint, as text: ray.train.report may serialize its metrics
        # after this rank has gone on to append the next epoch to trial.history, and an epoch
        # must reach MLflow only with the checkpoint that contains it.
        history_json = json.dumps(trial.history, default=str)
        with tempfile.TemporaryDirectory(prefix="rethink-ddp-ckpt-") as d:
            torch.save(trial.state_dict(), Path(d) / "state.pt")
            (Path(d) / "history.json").write_text(history_json)
            (Path(d) / "summary.json").write_text(json.dumps({"meta": trial.meta, "summary": summary}, default=str))
            (Path(d) / "ddp.json").write_text(json.dumps(audit, indent=1))
            np.savez_compressed(Path(d) / "shards.npz", **{f"rank{r}_index": g[1] for r, g in enumerate(gathered)},
                                **{f"rank{r}_label": g[2] for r, g in enumerate(gathered)})
            ray.train.report(
                {**record, "steps_to_fit": trial.steps_to_fit, "done_training": trial.done,
                 # node: rank 0's (Tune fills in pid and hostname with the Tune trial's own)
                 "labels_fingerprint": meta["labels_fingerprint"], "node": me["node"], "node_id": me["node_id"],
                 "ddp_world_size": world, "ddp_started_from_epoch": started_from,
                 _TRIAL_KEY: {"meta": trial.meta, "summary": summary, "history": json.loads(history_json)}},
                checkpoint=ray.train.Checkpoint.from_directory(d),
            )


_TRIAL_KEY = "_rethink_trial"  # rank 0's meta, summary and history, for the Tune trial (not reported to Tune)


# ------------------------------------------------------------------------------------------
# The Tune trial: starts the trainer, forwards its reports to Tune and MLflow
# ------------------------------------------------------------------------------------------
def _bridge_callback(items: Any, acks: Any):
    """A Ray Train callback (it runs in Train's controller) that hands each report to the Tune trial.

    It waits for the trial's acknowledgement, so that Train keeps the checkpoint until Tune has
    its copy (Train keeps only the last two).
    """
    from ray.train import UserCallback

    class _ToTuneTrial(UserCallback):
        def __init__(self):
            self.items, self.acks = items, acks

        def after_report(self, run_context, metrics, checkpoint):
            self.items.put({"metrics": metrics, "checkpoint": checkpoint})
            self.acks.get(block=True, timeout=24 * 3600)

    return _ToTuneTrial()


def _train_storage() -> tuple[str | None, Any]:
    """Ray Train's storage inside this Tune trial's folder (the sweep's storage: local or a bucket)."""
    try:
        from ray.train._internal.session import get_session

        storage = get_session().storage
        return f"{storage.trial_fs_path}/ray-train", storage.storage_filesystem
    except Exception:  # not in a Tune trial: Ray Train's default (~/ray_results)
        return None, None


def _read_small(checkpoint: Any, name: str) -> Any:
    """A JSON file of a checkpoint, read through its filesystem (without fetching state.pt)."""
    if checkpoint is None:
        return None
    try:
        with checkpoint.filesystem.open_input_stream(f"{checkpoint.path}/{name}") as f:
            return json.loads(f.read().decode())
    except (FileNotFoundError, OSError):
        return None


def _scaling(cfg: TrialConfig):
    import ray.train

    res = cfg.resources
    use_gpu = res.gpus > 0
    per_worker = {"CPU": float(res.cpus), **({"GPU": float(res.gpus)} if use_gpu else {})}
    return ray.train.ScalingConfig(num_workers=res.ddp_workers, use_gpu=use_gpu, resources_per_worker=per_worker)


def run_ddp_trial(spec: dict[str, Any], ctx: dict[str, Any]) -> None:
    """Tune function trainable body for a data-parallel trial (called by ``rethink_dist.sweep.trainable``)."""
    import ray.train
    from ray import tune
    from ray.train.torch import TorchConfig, TorchTrainer
    from ray.util.queue import Queue

    from rethink_dist.tracking import TrialRun, log_params

    cfg = TrialConfig.from_dict(spec["config"]).resolved()
    cfg.validate()
    tune_checkpoint = tune.get_checkpoint()
    resume = None
    if tune_checkpoint is not None:
        resume = ray.train.Checkpoint(tune_checkpoint.path, tune_checkpoint.filesystem)
    storage_path, storage_fs = _train_storage()
    name = f"{spec['trial_id']}-{time.strftime('%Y%m%d-%H%M%S')}-{os.getpid()}"
    items, acks = Queue(actor_options={"num_cpus": 0}), Queue(actor_options={"num_cpus": 0})
    use_gpu = cfg.resources.gpus > 0
    trainer = TorchTrainer(
        _train_worker,
        train_loop_config={"spec": spec},
        scaling_config=_scaling(cfg),
        torch_config=TorchConfig(backend="nccl" if use_gpu else "gloo"),
        run_config=ray.train.RunConfig(
            name=name, storage_path=storage_path, storage_filesystem=storage_fs,
            failure_config=ray.train.FailureConfig(max_failures=MAX_WORKER_FAILURES),
            checkpoint_config=ray.train.CheckpointConfig(num_to_keep=2),
            callbacks=[_bridge_callback(items, acks)],
        ),
        resume_from_checkpoint=resume,
    )

    run = None
    if ctx.get("tracking_uri"):
        run = TrialRun(ctx["tracking_uri"], ctx["experiment_id"], spec["trial_id"], spec["run_name"],
                       ctx.get("parent_run_id"), ctx.get("sweep", ""))
        run.start(cfg, {"ddp_workers": cfg.resources.ddp_workers,
                        "batch_per_worker": cfg.optim.batch_size // cfg.resources.ddp_workers})
        run.sync_history(_read_small(tune_checkpoint, "history.json") or [])  # after a Tune retry
    saved = _read_small(tune_checkpoint, "summary.json") or {}
    summary = saved.get("summary")
    meta_logged = False

    outcome: dict[str, Any] = {}

    def fit() -> None:
        try:
            outcome["result"] = trainer.fit()
        except BaseException as e:  # raised again in the trial's thread
            outcome["error"] = e
        finally:
            items.put(None)

    worker = threading.Thread(target=fit, name="rethink-ddp-fit", daemon=True)
    worker.start()
    try:
        while (item := items.get(block=True)) is not None:
            metrics = dict(item["metrics"][0])  # rank 0's
            trial_info = metrics.pop(_TRIAL_KEY, None) or {}
            ck = item["checkpoint"]
            tune.report(metrics, checkpoint=tune.Checkpoint(ck.path, ck.filesystem) if ck is not None else None)
            acks.put(True)
            summary = trial_info.get("summary", summary)
            if run is not None:
                if not meta_logged and trial_info.get("meta"):
                    have = run.client.get_run(run.run_id).data.params
                    log_params(run.client, run.run_id, {f"meta.{k}": v for k, v in trial_info["meta"].items()
                                                        if f"meta.{k}" not in have})
                    run.set_tags({"rethink.dataset_fingerprint": trial_info["meta"].get("dataset_fingerprint", "")})
                    meta_logged = True
                run.sync_history(trial_info.get("history", []))  # only after Tune holds the checkpoint
        worker.join()
        if "error" in outcome:
            raise outcome["error"]
    except Exception:
        if run is not None:
            run.set_tags({"rethink.last_error": traceback.format_exc()[-4000:]})
        raise
    finally:
        _delete_quietly(storage_fs, storage_path, name)
    if run is not None:
        run.finish(summary or {})


def _delete_quietly(fs: Any, root: str | None, name: str) -> None:
    """Remove Ray Train's copy of the checkpoints once Tune has its own (best effort)."""
    if fs is None or root is None:
        return
    try:
        fs.delete_dir(f"{root}/{name}")
    except Exception:
        pass


# ------------------------------------------------------------------------------------------
# rethink-dist train --ddp-workers N
# ------------------------------------------------------------------------------------------
def run_ddp_trial_cli(cfg: TrialConfig, args: Any) -> int:
    """Run one data-parallel trial on the local Ray through the sweep's Tune trainable; write --json."""
    from ray import tune

    from rethink_dist.commands.train import write_json_atomic
    from rethink_dist.sweep import MAX_FAILURES, _connect_ray, _spec_from_item, trainable
    from rethink_dist.tracking import ensure_experiment

    cfg.validate()
    resolved = cfg.resolved()
    if not resolved.data.beton_dir or not Path(resolved.data.beton_dir).is_dir():
        raise ConfigError(f"data.beton_dir {resolved.data.beton_dir!r} does not exist (prepare it with rethink-dist prepare)")
    spec = _spec_from_item(cfg, 0, Path("<command line>")).to_dict()
    res = resolved.resources
    # A local Ray gets enough logical CPUs for the workers and the trial's 0.1 CPU.
    need = math.ceil(res.ddp_workers * res.cpus + 1)
    _connect_ray(None, max(os.cpu_count() or 1, need))
    tracking_uri = os.environ.get("MLFLOW_TRACKING_URI")
    ctx = {"tracking_uri": tracking_uri, "experiment_id": ensure_experiment(tracking_uri, "train") if tracking_uri else None,
           "parent_run_id": None, "sweep": "train"}
    storage = tempfile.mkdtemp(prefix="rethink-ddp-")
    quiet = getattr(args, "quiet", False)
    if not quiet:
        print(f"{resolved.name}: {res.ddp_workers} data-parallel workers on Ray"
              + (f", logging to MLflow at {tracking_uri}" if tracking_uri else ""), file=sys.stderr, flush=True)
    try:
        tuner = tune.Tuner(
            tune.with_resources(trainable, {"cpu": 0.1}),
            param_space={"spec": spec, "ctx": ctx},
            run_config=tune.RunConfig(name="train", storage_path=storage, verbose=0,
                                      failure_config=tune.FailureConfig(max_failures=MAX_FAILURES),
                                      checkpoint_config=tune.CheckpointConfig(num_to_keep=2)),
        )
        result = tuner.fit()[0]
        if result.error is not None or result.checkpoint is None:
            print(f"rethink-dist: the data-parallel trial failed: {str(result.error).splitlines()[0] if result.error else 'no checkpoint'}",
                  file=sys.stderr)
            return 1
        history = _read_small(result.checkpoint, "history.json")
        saved = _read_small(result.checkpoint, "summary.json")
    finally:
        shutil.rmtree(storage, ignore_errors=True)
    out = {"config": resolved.to_dict(), "meta": saved["meta"], "history": history, "summary": saved["summary"]}
    if not quiet:
        s = saved["summary"]
        print(f"{resolved.name}: {s['epochs']} epochs, train {s['train_acc']:.4f}, test top-1 {s['test_acc']:.4f} "
              f"(best {s['best_test_acc']:.4f}), top-5 {s['test_top5']:.4f}", file=sys.stderr)
    if getattr(args, "json", None):
        write_json_atomic(args.json, out)
    return 0
