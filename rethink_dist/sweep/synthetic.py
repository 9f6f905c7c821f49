"""A trial kind that trains nothing: it reports made-up epochs, to measure the sweep machinery alone.

``{"kind": "synthetic", "params": {"epochs": 100, "epochs_per_report": 1, "epoch_seconds": 0.0, "cpus": 0.1}}``
runs through everything a network trial's reports go through (Tune, a checkpoint with every
report, the driver's Parquet table and MLflow runs, reconciliation at the trial's end, a resume
from its last checkpoint), with epoch records of the real keys and deterministic values, and no
torch. ``bench/driver.py`` sweeps thousands of them to measure the driver's cost per report.
"""

from __future__ import annotations

import dataclasses
import json
import math
import os
import socket
import tempfile
import time
from pathlib import Path
from typing import Any, Mapping

from rethink_dist.errors import ConfigError
from rethink_dist.records import EPOCH_KEYS, HISTORY_FILE, META_FILE  # the checkpoint files a network trial writes


@dataclasses.dataclass(frozen=True)
class SyntheticConfig:
    epochs: int = 10
    epochs_per_report: int = 1  # epochs sent to Tune in one report (each report with a checkpoint)
    epoch_seconds: float = 0.0  # the made-up epoch's duration (a sleep)
    seed: int = 0
    cpus: float = 1.0  # the CPUs the trial asks of Ray (a fraction: many trials per CPU)

    @classmethod
    def from_dict(cls, params: Mapping[str, Any]) -> "SyntheticConfig":
        known = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(params) - known)
        if unknown:
            raise ConfigError(f"synthetic trial: unknown param {unknown[0]!r}; valid: {', '.join(sorted(known))}")
        cfg = cls(**params)
        for name, low in (("epochs", 1), ("epochs_per_report", 1), ("seed", 0)):
            v = getattr(cfg, name)
            if not isinstance(v, int) or isinstance(v, bool) or v < low:
                raise ConfigError(f"synthetic trial: {name}={v!r} is not an integer >= {low}")
        for name in ("epoch_seconds", "cpus"):
            v = getattr(cfg, name)
            if not isinstance(v, (int, float)) or isinstance(v, bool) or not math.isfinite(v) or v < 0:
                raise ConfigError(f"synthetic trial: {name}={v!r} is not a number >= 0")
        return cfg

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


def validate(params: Mapping[str, Any]) -> SyntheticConfig:
    return SyntheticConfig.from_dict(params)


def record(cfg: SyntheticConfig, epoch: int) -> dict[str, Any]:
    """Epoch ``epoch``'s made-up record: every epoch key, a pure function of (seed, epoch)."""
    acc = min(1.0, epoch / cfg.epochs)
    values = {"epoch": epoch, "step": 100 * epoch, "train_loss": 2.3 * (1 - acc) + 1e-3 * (cfg.seed % 7),
              "train_acc": acc, "train_acc_clean": acc, "train_acc_corrupted": None, "heldout_acc": None, "test_acc": 0.5 * acc,
              "test_top5": 0.9, "best_test_acc": 0.5 * acc, "lr": 0.01, "images_per_s": 1000.0,
              "train_seconds": cfg.epoch_seconds, "eval_seconds": 0.0, "seconds": epoch * cfg.epoch_seconds,
              "steps_to_fit": 100 * cfg.epochs if epoch == cfg.epochs else None}
    assert set(values) == set(EPOCH_KEYS)
    return values


def run_trial(spec: dict[str, Any]) -> None:
    """The trial on a Ray worker: from its Tune checkpoint if it has one, to ``epochs``."""
    import ray
    from ray import tune

    cfg = validate(spec["config"])
    history: list[dict[str, Any]] = []
    checkpoint = tune.get_checkpoint()
    if checkpoint is not None:
        with checkpoint.as_directory() as d:
            history = json.loads((Path(d) / HISTORY_FILE).read_text())
    placement = {"labels_fingerprint": "", "node": socket.gethostname(),
                 "node_id": ray.get_runtime_context().get_node_id(), "pid": os.getpid(), "world_size": 1}
    pending: list[dict[str, Any]] = []
    meta = {"synthetic": True}
    for epoch in range(len(history) + 1, cfg.epochs + 1):
        if cfg.epoch_seconds:
            time.sleep(cfg.epoch_seconds)
        rec = {**record(cfg, epoch), **placement, "ended_at": time.time()}
        history.append(rec)
        pending.append(rec)
        if len(pending) >= cfg.epochs_per_report or epoch == cfg.epochs:
            result = {**rec, "done_training": epoch == cfg.epochs, "records": pending}
            if meta:
                result["meta"] = meta
            with tempfile.TemporaryDirectory(prefix="rethink-ckpt-") as d:
                (Path(d) / HISTORY_FILE).write_text(json.dumps(history))
                (Path(d) / META_FILE).write_text(json.dumps(meta or {"synthetic": True}))
                tune.report(result, checkpoint=tune.Checkpoint.from_directory(d))
            pending, meta = [], {}
