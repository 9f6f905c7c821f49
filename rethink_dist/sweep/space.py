"""The sweep's storage: what it will write, whether it fits, and what a full disk looks like.

Before a sweep starts, :func:`estimate` adds up what it must keep: every trial's checkpoints (Tune
keeps ``CHECKPOINTS_KEPT`` per trial, plus one being written for each trial that runs at once),
and, per epoch, its Parquet row, its MLflow metrics and Tune's own logs. A sweep whose storage has
less free space than the checkpoints alone (the part that is certain) is refused before anything is
written; the per-epoch part is an upper bound (trials that stop when fitted write less), shown in
the message.

While the sweep runs, :class:`SpaceWatch` looks at the free space every few seconds (from the
driver's own event loop) and says once when it falls under what the next checkpoints need: the
driver then stops the sweep as on Ctrl-C (no new trials, what was reported lands) and exits
non-zero; ``--resume`` continues once there is room. Write failures of the same kind (a full disk,
a file-size limit, a file system turned read-only) are recognised by
:func:`rethink_dist.files.storage_error`.
"""

from __future__ import annotations

import os
import shutil
import time
from pathlib import Path
from typing import Any

from rethink_dist.errors import SweepError


CHECKPOINTS_KEPT = 2  # tune.CheckpointConfig(num_to_keep=...) of the driver
# Upper bounds per epoch, measured on the demo's own files: its Parquet row (~0.4 KB), its MLflow
# metrics in SQLite (~25 metrics, ~3 KB with indexes), Tune's result.json and progress.csv lines
# (~2 KB); rounded up.
EPOCH_BYTES = 8 * 1024
TRIAL_BYTES = 64 * 1024  # a trial's fixed files: meta.json, params, Tune's params.json / params.pkl
FIXED_BYTES = 4 * 1024 * 1024  # sweep.json, the MLflow database's own tables, Tune's experiment state
WATCH_SECONDS = 2.0


def mib(n: float) -> str:
    return f"{n / 2**20:.1f} MiB"


def _params(cfg: dict[str, Any], cache: dict) -> int:
    """The trainable parameters of a network trial's model (built once per distinct model)."""
    from rethink_dist.config import TrialConfig
    from rethink_dist.data import dataset_info
    from rethink_dist.models import count_params, create

    c = TrialConfig.from_dict(cfg).resolved()
    try:
        classes = dataset_info(c.data.name).num_classes
    except Exception:  # a data set of the user's own: its classes are known only once loaded
        classes = 10
    shape = (int(c.data.channels), int(c.data.image_size), int(c.data.image_size))
    key = repr((c.model.name, shape, classes, c.reg.batch_norm, c.reg.dropout, sorted(dict(c.model.kwargs).items())))
    if key not in cache:
        try:
            model = create(c.model.name, shape, classes, dropout=c.reg.dropout, batch_norm=c.reg.batch_norm,
                           **dict(c.model.kwargs))
            cache[key] = count_params(model)
        except Exception:  # the trial's own check reports a model that cannot be built
            cache[key] = 0
    return cache[key]


def checkpoint_bytes(cfg: dict[str, Any], cache: dict) -> int:
    """One checkpoint of a network trial: weights and SGD momentum in float32, per-sample records."""
    samples = 0
    if cfg.get("sample_records"):
        samples = 8 * int((cfg.get("data") or {}).get("max_train") or 60_000)
    return 2 * 4 * _params(cfg, cache) + samples + 16 * 1024


def estimate(specs: list, max_concurrent: int | None) -> dict[str, int]:
    """{"least": what the sweep writes at the very least (one checkpoint per trial), "checkpoints":
    what its checkpoints take at most, "epochs": upper bound of the per-epoch files, "largest": the
    largest checkpoint}."""
    from rethink_dist.config import TrialConfig

    cache: dict = {}
    sizes, epochs = [], 0
    for s in specs:
        if s.kind == "network":
            sizes.append(checkpoint_bytes(s.config, cache))
            epochs += TrialConfig.from_dict(s.config).resolved().optim.epochs
        else:
            sizes.append(16 * 1024)
            epochs += int(s.config.get("epochs", 1)) if s.kind == "synthetic" else 1
    at_once = sorted(sizes, reverse=True)[: max_concurrent or len(sizes)]
    fixed = TRIAL_BYTES * len(specs) + FIXED_BYTES
    return {"least": sum(sizes) + fixed, "checkpoints": CHECKPOINTS_KEPT * sum(sizes) + sum(at_once) + fixed,
            "epochs": EPOCH_BYTES * epochs, "largest": max(sizes, default=0)}


def free_bytes(path: str | os.PathLike) -> int:
    """Free space (for this user) of the file system that holds ``path`` (or its nearest parent)."""
    p = Path(path)
    while not p.exists():
        p = p.parent
    return shutil.disk_usage(p).free


def check_fits(folder: str | os.PathLike, need: dict[str, int], what: str) -> None:
    """Refuse (one line) a sweep whose storage clearly cannot hold it: less free space than one
    checkpoint of every trial."""
    free = free_bytes(folder)
    if free < need["least"]:
        raise SweepError(f"{what} {str(folder)!r} has {mib(free)} free; the sweep needs at least {mib(need['least'])} "
                         f"(one checkpoint per trial; up to {mib(need['checkpoints'] + need['epochs'])} with every "
                         "checkpoint kept and every epoch logged): free some space or choose another --storage")


class SpaceWatch:
    """Free space of the sweep's local folders, looked at most every ``WATCH_SECONDS``."""

    def __init__(self, folders: list[Path], reserve: int):
        self.folders = [Path(f) for f in folders]
        self.reserve = reserve
        self.last = 0.0

    def short(self) -> str | None:
        """A line saying which folder is (nearly) full, or None while there is room."""
        now = time.monotonic()
        if now - self.last < WATCH_SECONDS:
            return None
        self.last = now
        for f in self.folders:
            free = free_bytes(f)
            if free < self.reserve:
                return (f"the storage {str(f)!r} is full: {mib(free)} free, the next checkpoints need about "
                        f"{mib(self.reserve)}")
        return None
