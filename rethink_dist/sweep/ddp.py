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

With ``resources.ddp_min_workers`` the trial is elastic (Ray Train's ``num_workers=(min, max)``):
after a lost worker, or when more nodes are there at a check every ``resources.ddp_resize_check_s``,
Ray Train starts the worker group again from the last checkpoint at the size the cluster holds.
The code above needs nothing else for it: each attempt's ranks read the world size from Ray
Train's context, take ``batch_size / world`` samples a step (the global batch is the config's
at every size), shard the epoch's order (a function of (seed, epoch)) over the current ranks,
and report that world size with each epoch; a checkpoint is rank 0's replicated state, so it
loads at any size. docs/imagenet.md ("Trials that resize") says what stays exact.

Each report reaches this Tune trial through a Train callback; the trial reports it to Tune
with its checkpoint, so Tune holds it like any trial's: the driver writes the epoch to Parquet
and MLflow as for a single-process trial, and a Tune retry resumes from it. A lost worker makes
Ray Train restart the worker group from the last checkpoint (``FailureConfig``); if that fails
too, Tune retries the whole trial from its own copy of the checkpoint.

The ImageNet recipe (:data:`rethink_dist.protocol.IMAGENET_RECIPE`,
:func:`rethink_dist.config.imagenet_trial`) is documented in docs/imagenet.md.
"""

from __future__ import annotations

import hashlib
import os
import socket
import tempfile
import threading
import time
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Iterator

import numpy as np
import torch
import torch.distributed as dist

from rethink_dist.config import TrialConfig
from rethink_dist.metrics import Sink
from rethink_dist.protocol import RECIPE_NAME
from rethink_dist.sweep.plan import placed_device
from rethink_dist.train import Trial, labels_fingerprint, load_checkpoint, resolve_device, run, save_checkpoint

# Worker-group restarts Ray Train attempts after a lost worker before the Tune trial fails
# (and Tune, with its own FailureConfig, retries the trial from its checkpoint).
MAX_WORKER_FAILURES = 3


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
        self.in_subset = inner.in_subset  # likewise (None: every training sample is trained on)

    def train_batches(self, batch_size: int, generator) -> Iterator[Any]:
        # The Trial asks for the global batch; this rank takes its share of it.
        return self.inner.train_batches(self.batch_size, generator)

    def eval_batches(self, split: str) -> Iterator[Any]:
        return self.inner.eval_batches(split)


class DistributedTrial(Trial):
    """A Trial whose model is wrapped in DDP and whose evaluation counts are summed over the ranks."""

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

    def evaluate(self) -> dict[str, Any]:
        # Every rank takes rank 0's BatchNorm statistics (each rank's last step updated its own).
        for b in self.module.buffers():
            dist.broadcast(b, 0)
        with self._plain():
            return super().evaluate()

    def reduce_counts(self, counts: torch.Tensor) -> torch.Tensor:
        """The whole split's counts: this rank evaluated samples rank::world of it."""
        dist.all_reduce(counts)
        return counts

    def weights_digest(self) -> str:
        """sha256 of every parameter and buffer of the model, in state-dict order."""
        h = hashlib.sha256()
        for name, t in self.module.state_dict().items():
            h.update(name.encode())
            h.update(t.detach().reshape(-1).cpu().contiguous().view(torch.uint8).numpy().tobytes())
        return h.hexdigest()


class RankReporter(Sink):
    """Each epoch of one rank: the ranks compare weights and shards; rank 0 writes the checkpoint
    (with the audit ``ddp.json`` and the shards ``shards.npz``) and reports it to Ray Train."""

    def __init__(self, trial: DistributedTrial, ffcv: Any, meta: dict[str, Any], started_from: int):
        import ray

        self.trial, self.ffcv, self.meta, self.started_from = trial, ffcv, meta, started_from
        self.me = {"rank": trial.rank, "pid": os.getpid(), "node": socket.gethostname(),
                   "node_id": ray.get_runtime_context().get_node_id()}

    def log_epoch(self, record: dict[str, Any]) -> None:
        import ray.train

        trial, world = self.trial, self.trial.world
        indices, labels = self.ffcv.last_epoch
        mine = {**self.me, "weights_sha256": trial.weights_digest(), "samples": int(len(indices))}
        gathered: list[Any] = [None] * world
        dist.all_gather_object(gathered, (mine, indices.astype(np.int64), labels.astype(np.int64)))
        if trial.rank != 0:
            ray.train.report({"rank": trial.rank, "epoch": trial.epoch, "pid": self.me["pid"], "node": self.me["node"]})
            return
        rows = [g[0] for g in gathered]
        if len({r["weights_sha256"] for r in rows}) != 1:
            raise RuntimeError(f"the ranks' weights differ after epoch {trial.epoch}: "
                               f"{[r['weights_sha256'][:12] for r in rows]}")
        all_idx = np.concatenate([g[1] for g in gathered])
        audit = {
            "epoch": trial.epoch, "world_size": world, "backend": self.meta["ddp_backend"],
            "started_from_epoch": self.started_from, "ranks": rows,
            "distinct_samples": int(len(np.unique(all_idx))), "num_train": int(self.ffcv.num_train),
            "repeated_samples": int(len(all_idx) - len(np.unique(all_idx))),
        }
        with tempfile.TemporaryDirectory(prefix="rethink-ddp-ckpt-") as d:
            save_checkpoint(trial, d, summary={"meta": trial.meta, "summary": trial.summary()}, ddp=audit,
                            meta=trial.meta)
            np.savez_compressed(Path(d) / "shards.npz", **{f"rank{r}_index": g[1] for r, g in enumerate(gathered)},
                                **{f"rank{r}_label": g[2] for r, g in enumerate(gathered)})
            ray.train.report(
                {**record, "done_training": trial.done, "meta": trial.meta,
                 # node: rank 0's (Tune fills in pid and hostname with the Tune trial's own)
                 "labels_fingerprint": self.meta["labels_fingerprint"], "node": self.me["node"],
                 "node_id": self.me["node_id"], "world_size": world, "ended_at": time.time(),
                 "ddp_started_from_epoch": self.started_from},
                checkpoint=ray.train.Checkpoint.from_directory(d),
            )


def _train_worker(loop_config: dict[str, Any]) -> None:
    """The training function of each Ray Train worker: one rank of the trial, to its last epoch."""
    import ray
    import ray.train

    from rethink_dist.data.ffcv_loader import build_ffcv_loader  # imports FFCV: only in the workers

    spec = loop_config["spec"]
    cfg = TrialConfig.from_dict(spec["config"]).resolved()
    tctx = ray.train.get_context()
    rank, world = tctx.get_world_rank(), tctx.get_world_size()
    torch.set_num_threads(max(1, int(cfg.resources.cpus)))
    if cfg.resources.gpus > 0 and torch.cuda.is_available():
        import ray.train.torch

        torch.cuda.set_device(ray.train.torch.get_device())
    device = resolve_device(placed_device(cfg.device, ray.get_gpu_ids()))
    per_rank = cfg.optim.batch_size // world
    # The loader reads at the per-rank batch; it knows nothing of the trial's resources.
    rank_cfg = cfg.replace(**{"optim.batch_size": per_rank, "resources.ddp_workers": 0,
                              "resources.ddp_min_workers": None})
    ffcv, meta = build_ffcv_loader(rank_cfg, device, distributed=True, eval_shard=(rank, world))
    meta.update({
        "labels_fingerprint": labels_fingerprint(ffcv.train_y),
        # The trial's facts, whatever the size of this attempt (each epoch row has its world_size).
        "ddp_workers": cfg.resources.ddp_workers,
        **({"ddp_min_workers": cfg.resources.ddp_min_workers} if cfg.resources.ddp_min_workers is not None else {}),
        "ddp_backend": dist.get_backend(),
        "batch_per_worker": cfg.optim.batch_size // cfg.resources.ddp_workers,
        "recipe": RECIPE_NAME if cfg.data.name == "imagenet" else "",
    })
    trial = DistributedTrial(cfg, RankLoader(ffcv, per_rank), meta, rank, world)
    started_from = 0
    checkpoint = ray.train.get_checkpoint()
    if checkpoint is not None:
        with checkpoint.as_directory() as d:
            load_checkpoint(trial, d)
        started_from = trial.epoch
    # Evaluation synced rank 0's BatchNorm statistics to every rank before each report.
    run(trial, [RankReporter(trial, ffcv, meta, started_from)])


# ------------------------------------------------------------------------------------------
# The Tune trial: starts the trainer and forwards its reports to Tune
# ------------------------------------------------------------------------------------------
def _bridge_callback(items: Any, acks: Any):
    """A Ray Train callback (it runs in Train's controller) that hands each report to the Tune trial.

    Ray's own ``ray.tune.integration.ray_train.TuneReportCallback`` forwards the checkpoint's path
    only, not the checkpoint: Tune would not hold it (no Tune retry from it) and Train, keeping two,
    could delete it first. This one waits for the trial's acknowledgement, so that Train keeps the
    checkpoint until Tune has its copy.
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


def worker_range(cfg: TrialConfig) -> tuple[int, int]:
    """(fewest, most) Ray Train workers of a data-parallel trial: equal unless it may resize."""
    res = cfg.resources
    return (res.ddp_workers if res.ddp_min_workers is None else res.ddp_min_workers), res.ddp_workers


def _scaling(cfg: TrialConfig):
    import ray.train

    res = cfg.resources
    use_gpu = res.gpus > 0
    per_worker = {"CPU": float(res.cpus), **({"GPU": float(res.gpus)} if use_gpu else {})}
    low, high = worker_range(cfg)
    if low == high:
        return ray.train.ScalingConfig(num_workers=high, use_gpu=use_gpu, resources_per_worker=per_worker)
    # Elastic: each (re)start of the worker group takes as many workers as the resources Ray
    # Train's autoscaling coordinator holds for it (at least `low`), and a running group is
    # resized every ddp_resize_check_s when that number has changed.
    return ray.train.ScalingConfig(num_workers=(low, high), use_gpu=use_gpu, resources_per_worker=per_worker,
                                   elastic_resize_monitor_interval_s=float(res.ddp_resize_check_s))


def run_ddp_trial(spec: dict[str, Any]) -> None:
    """The Tune trial of a data-parallel trial: a TorchTrainer whose reports it hands to Tune."""
    import ray.train
    from ray import tune
    from ray.train.torch import TorchConfig, TorchTrainer
    from ray.util.queue import Queue

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
            ck = item["checkpoint"]
            tune.report(dict(item["metrics"][0]),  # rank 0's
                        checkpoint=tune.Checkpoint(ck.path, ck.filesystem) if ck is not None else None)
            acks.put(True)
        worker.join()
        if "error" in outcome:
            raise outcome["error"]
    finally:
        _delete_quietly(storage_fs, storage_path, name)


def _delete_quietly(fs: Any, root: str | None, name: str) -> None:
    """Remove Ray Train's copy of the checkpoints once Tune has its own (best effort)."""
    if fs is None or root is None:
        return
    try:
        fs.delete_dir(f"{root}/{name}")
    except Exception:
        pass
