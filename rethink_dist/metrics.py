"""Where a trial's epochs go: one interface, :class:`Sink`, handed each epoch by the loop
(:func:`rethink_dist.train.run`). The console's sink is here; on Ray, a trial's sink reports to
Tune (``rethink_dist.sweep.worker.TuneReporter``) or to Ray Train (``rethink_dist.sweep.ddp``), and
the sweep's driver writes the reports to Parquet and MLflow. This module stays free of Ray and
MLflow so the training loop can use it.
"""

from __future__ import annotations

import sys
from typing import TYPE_CHECKING, Any, TextIO

if TYPE_CHECKING:
    from rethink_dist.config import TrialConfig


class Sink:
    """Receives a trial's start, each epoch's record and its summary. Methods may be left as is."""

    def start(self, config: "TrialConfig", meta: dict[str, Any]) -> None:
        pass

    def log_epoch(self, record: dict[str, Any]) -> None:
        pass

    def finish(self, summary: dict[str, Any]) -> None:
        pass


def fmt(v: Any, pct: bool = True) -> str:
    """A metric for a table: fractions as percentages, None as '-'."""
    if v is None:
        return "-"
    if isinstance(v, float):
        return f"{100 * v:.2f}" if pct else f"{v:.4g}"
    return str(v)


class ConsoleSink(Sink):
    """Prints a progress line every ``every`` epochs (and the last one) to ``stream``."""

    def __init__(self, every: int | None = None, stream: TextIO = sys.stderr):
        self.every = every
        self.stream = stream
        self.total = 0

    def start(self, config: "TrialConfig", meta: dict[str, Any]) -> None:
        self.total = config.optim.epochs or 0
        if self.every is None:
            self.every = max(1, self.total // 20)
        print(f"[{config.name}] {meta.get('params', '?')} parameters on {meta.get('device', '?')}, "
              f"{meta.get('num_train', '?')} training samples, {meta.get('labels_changed', 0)} labels changed, "
              f"up to {self.total} epochs", file=self.stream, flush=True)
        if meta.get("model_adapted") not in (None, "nothing"):
            print(f"  {config.model.name} adapted to the data: {meta['model_adapted']}", file=self.stream, flush=True)

    def log_epoch(self, r: dict[str, Any]) -> None:
        if r["epoch"] % (self.every or 1) == 0 or r["epoch"] == self.total or r["epoch"] == 1:
            print(f"  epoch {r['epoch']:>4}/{self.total} step {r['step']:>6}  loss {r['train_loss']:.4f}  "
                  f"train {fmt(r['train_acc'])}%  test {fmt(r['test_acc'])}%  lr {r['lr']:.3g}  "
                  f"{r['images_per_s']:.0f} img/s", file=self.stream, flush=True)

    def finish(self, s: dict[str, Any]) -> None:
        fit = f"fitted at step {s['steps_to_fit']}" if s["steps_to_fit"] is not None else "not fitted"
        print(f"  done: train {fmt(s['train_acc'])}%  test {fmt(s['test_acc'])}%  {fit}, {s['epochs']} epochs, "
              f"{s['seconds']:.1f} s", file=self.stream, flush=True)
