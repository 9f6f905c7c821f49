"""The code that runs on Ray's workers: one Tune trial of any kind, reporting to the driver.

A network trial runs the project's one loop (:func:`rethink_dist.train.run`) with a
:class:`TuneReporter` sink: its epochs go to Tune with a checkpoint (model, optimiser, epoch, step,
history) at most every ``report_seconds``, and it continues from the last checkpoint after a
failure. A node being drained (a spot interruption notice: ``ray drain-node`` with reason
PREEMPTION, or the cloud's own notice turned into one) is noticed at the next epoch's end: the
trial checkpoints at once and stops with :class:`NodePreempted`, and Tune continues it from that
checkpoint on another node, so no finished epoch is trained twice. Each epoch's end is also
recorded in the cluster's key-value store (:data:`PROGRESS_NAMESPACE`), so that the driver can
tell, when a trial's node is lost without notice, how many epochs it must train again. A data-parallel trial hands itself to :mod:`rethink_dist.sweep.ddp`; a theory trial runs
its construction and reports one record. Nothing here writes results: the driver
(:mod:`rethink_dist.sweep.driver`) turns every report into Parquet rows and MLflow metrics.
"""

from __future__ import annotations

import logging
import os
import socket
import tempfile
import time
from typing import Any

from rethink_dist.metrics import Sink
from rethink_dist.sweep.plan import KINDS, placed_device

# A trial sends its epochs to Tune, each send with a checkpoint, at most this often: every epoch
# when epochs are longer, several per send when they are short. A send is a round trip to the
# driver (the trial waits for it) plus a checkpoint: for a small model it costs more than an
# epoch (bench/results/NOTES.md). A failure loses at most this much training, redone identically.
REPORT_SECONDS = 1.0
# How often a trial asks the cluster whether its node is being drained (one GCS call, at an epoch's end).
DRAIN_POLL_SECONDS = 1.0
# The cluster key-value store's namespace of the trials' progress: Tune's trial id -> the last epoch
# the trial's current process finished (the driver compares it with the last checkpoint).
PROGRESS_NAMESPACE = "rethink-progress"


class NodePreempted(RuntimeError):
    """The trial's node is being drained: the trial checkpointed its last epoch and stopped, for Tune
    to continue it on another node (the driver counts it as a preemption, not as a fault of the trial)."""


class DrainWatch:
    """Whether this process's node is being drained, asked of the cluster at most every ``every`` s.

    :meth:`check` returns None, or the drain's deadline (Unix ms; 0: none given)."""

    def __init__(self, node_id: str, every: float = DRAIN_POLL_SECONDS):
        self.node_id, self.every = node_id, every
        self.asked = float("-inf")

    def check(self) -> int | None:
        import ray._private.state

        if time.monotonic() - self.asked < self.every:
            return None
        self.asked = time.monotonic()
        try:
            draining = ray._private.state.state.get_draining_nodes() or {}
        except Exception:  # the GCS busy or restarting: ask again at a later epoch
            return None
        return draining.get(self.node_id)


def record_progress(tune_trial_id: str, epoch: int) -> None:
    """The last epoch this trial's process finished, in the cluster's key-value store (best effort)."""
    from ray.experimental import internal_kv

    try:
        internal_kv._internal_kv_put(tune_trial_id, str(epoch), overwrite=True, namespace=PROGRESS_NAMESPACE)
    except Exception:
        pass


def read_progress(tune_trial_id: str) -> int | None:
    """The last epoch recorded by :func:`record_progress` for this trial, or None."""
    from ray.experimental import internal_kv

    try:
        value = internal_kv._internal_kv_get(tune_trial_id, namespace=PROGRESS_NAMESPACE)
    except Exception:
        return None
    return int(value) if value else None


class TuneReporter(Sink):
    """Hands a trial's epochs to Tune with a checkpoint of the trial, at most every ``report_seconds``
    (and always with the last epoch). The first report also carries the trial's facts (``meta``)."""

    def __init__(self, trial: Any, report_seconds: float, placement: dict[str, Any], tune_trial_id: str = "",
                 drain: DrainWatch | None = None):
        self.trial, self.report_seconds, self.placement = trial, report_seconds, placement
        self.tune_trial_id, self.drain = tune_trial_id, drain
        self.pending: list[dict[str, Any]] = []
        self.meta: dict[str, Any] | None = None
        self.last_report = time.monotonic()

    def start(self, config: Any, meta: dict[str, Any]) -> None:
        self.meta = dict(meta)

    def log_epoch(self, record: dict[str, Any]) -> None:
        self.pending.append({**record, **self.placement, "ended_at": time.time()})
        if self.tune_trial_id:
            record_progress(self.tune_trial_id, int(record["epoch"]))
        if self.trial.done or time.monotonic() - self.last_report >= self.report_seconds:
            self.send()
        if self.drain is not None and not self.trial.done and (deadline := self.drain.check()) is not None:
            self.send()  # the epochs since the last report, with a checkpoint that holds them
            left = f"{max(0.0, deadline / 1000 - time.time()):.0f} s before its deadline" if deadline else "no deadline"
            raise NodePreempted(f"node {self.drain.node_id} is being drained ({left}): checkpointed epoch "
                                f"{record['epoch']}; the trial continues from it on another node")

    def send(self) -> None:
        """Report the epochs run since the last report, with a checkpoint that contains them."""
        from ray import tune

        from rethink_dist.train import save_checkpoint

        if not self.pending:
            return
        result = {**self.pending[-1], "done_training": self.trial.done, "records": self.pending}
        if self.meta is not None:
            result["meta"] = self.meta
        with tempfile.TemporaryDirectory(prefix="rethink-ckpt-") as d:
            save_checkpoint(self.trial, d, meta=self.trial.meta)
            # The last epoch's metrics for Tune's table; every epoch of the send in "records".
            tune.report(result, checkpoint=tune.Checkpoint.from_directory(d))
        self.pending, self.meta, self.last_report = [], None, time.monotonic()


def trainable(config: dict[str, Any]) -> None:
    """Tune function trainable: ``config`` is ``{"spec": TrialSpec.to_dict(), "ctx": {"report_seconds"}}``."""
    logging.getLogger("ray.train").setLevel(logging.WARNING)  # not a line per checkpoint
    spec, ctx = config["spec"], config["ctx"]
    if KINDS[spec["kind"]].theory:
        return _theory_trial(spec)
    if spec["kind"] == "synthetic":
        from rethink_dist.sweep.synthetic import run_trial

        return run_trial(spec)
    if spec["config"].get("resources", {}).get("ddp_workers"):
        from rethink_dist.sweep.ddp import run_ddp_trial  # torch.distributed: only in data-parallel trials

        return run_ddp_trial(spec)
    resume_from = ctx.get("resume_from") or []  # this trial's folders (a dict by trial id before the feed)
    if isinstance(resume_from, dict):
        resume_from = resume_from.get(spec["trial_id"], [])
    return _network_trial(spec, float(ctx.get("report_seconds", REPORT_SECONDS)), resume_from)


def _network_trial(spec: dict[str, Any], report_seconds: float, resume_from: list[str] = ()) -> None:
    """``resume_from``: checkpoint folders, newest first, of a sweep continued without Tune's state
    (the driver's rebuilt resume): the trial goes on from the first that loads."""
    import ray
    from ray import tune

    from rethink_dist.config import TrialConfig
    from rethink_dist.train import Trial, TrainingDiverged, load_checkpoint, run  # torch: only in the trial's process

    cfg = TrialConfig.from_dict(spec["config"])
    trial = Trial(cfg, device=placed_device(cfg.device, ray.get_gpu_ids()))
    checkpoint = tune.get_checkpoint()
    if checkpoint is not None:
        with checkpoint.as_directory() as d:
            load_checkpoint(trial, d)
    else:
        for folder in resume_from:
            try:
                load_checkpoint(trial, folder)
                break
            except Exception as e:  # a checkpoint cut short by the full disk: the one before it
                print(f"rethink-dist: {spec['trial_id']}: checkpoint {folder} cannot be read ({type(e).__name__}); "
                      "trying the one before it", flush=True)
                trial = Trial(cfg, device=placed_device(cfg.device, ray.get_gpu_ids()))
    node_id = ray.get_runtime_context().get_node_id()
    placement = {"labels_fingerprint": trial.meta.get("labels_fingerprint", ""), "node": socket.gethostname(),
                 "node_id": node_id, "pid": os.getpid(), "world_size": 1}
    reporter = TuneReporter(trial, report_seconds, placement, tune.get_context().get_trial_id() or "",
                            DrainWatch(node_id))
    try:
        run(trial, [reporter])
    except TrainingDiverged as e:
        # Not a fault to retry (it would diverge again, identically): the epochs before it go to
        # Tune as usual, then the trial ends with the message; the driver marks its run FAILED.
        reporter.send()
        tune.report({"epoch": trial.epoch, "done_training": True, "diverged": str(e)})


def _theory_trial(spec: dict[str, Any]) -> None:
    import ray
    from ray import tune

    params = dict(spec["config"])
    if "device" in KINDS[spec["kind"]].check(params).to_dict():  # the kernel: a GPU only if the trial holds one
        params["device"] = placed_device(params.get("device") or "auto", ray.get_gpu_ids())
    result = KINDS[spec["kind"]].run(params)
    record = {"epoch": 1, **{k: v for k, v in result.items() if isinstance(v, (int, float, bool)) or v is None}}
    tune.report({**record, "done_training": True, "meta": {}})
