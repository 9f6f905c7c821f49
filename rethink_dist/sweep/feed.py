"""Tune's trials from the sweep's list, one config at a time.

A sweep's trials are a list of fixed configs, not a search space. Handed to Tune as one
``tune.grid_search`` over the list, they cost O(trials) each to make (Tune's grid generator deep-copies
the whole unresolved space, list included, for every variant) and all of them at once, in one turn of
Tune's loop: O(trials^2) before the first trial starts (13 s at 1,000 trials on the 2-core machine of
bench/results/cpu-driver-2026-12-07-lane.json; hours at 10,000). :func:`trial_feed` is a Tune
``Searcher`` that returns the next config of the list when Tune asks (Tune asks as it has room for
pending trials), so that making a trial costs the same at any sweep size.

Its saved state (Tune's experiment snapshot, every few seconds) is one number, how many configs it
has handed out; the list itself travels once, with the Tuner Tune pickles when the sweep starts.
"""

from __future__ import annotations

import json
import os
from typing import Any

# Tune lets a Searcher other than its own grid generator keep one trial pending at a time (unless it
# is capped by max_concurrent_trials), which starves the autoscaler of resource requests. The driver
# sets Tune's documented variable to what Tune's grid generator gets ("auto": at least 200, or 1.1x the
# cluster's CPUs), unless the user set it.
MIN_PENDING = 200


def trial_feed(specs: list[dict[str, Any]], ctx: dict[str, Any], per_trial: dict[str, dict[str, Any]] | None = None):
    """A Tune Searcher that hands Tune ``{"spec": spec, "ctx": ctx}`` for each spec of ``specs`` in order,
    then FINISHED. ``per_trial``: extra ctx entries by trial id (a rebuilt sweep's checkpoints to
    start from). (A factory: Ray is imported only when a sweep runs.)"""
    from ray.tune.search import Searcher

    class TrialFeed(Searcher):
        def __init__(self):
            super().__init__()
            self.specs, self.ctx, self.per_trial = specs, ctx, per_trial or {}
            self.next = 0

        def suggest(self, trial_id: str) -> dict[str, Any] | str | None:
            if self.next >= len(self.specs):
                return Searcher.FINISHED
            spec = self.specs[self.next]
            self.next += 1
            return {"spec": spec, "ctx": {**self.ctx, **self.per_trial.get(spec["trial_id"], {})}}

        def on_trial_complete(self, trial_id: str, result: dict | None = None, error: bool = False) -> None:
            pass  # a fixed list: nothing to learn from a trial's outcome

        def save(self, checkpoint_path: str) -> None:
            with open(checkpoint_path, "w") as f:
                json.dump({"next": self.next, "of": len(self.specs)}, f)

        def restore(self, checkpoint_path: str) -> None:
            with open(checkpoint_path) as f:
                state = json.load(f)
            if state.get("of") != len(self.specs):
                raise ValueError(f"{checkpoint_path}: a feed of {state.get('of')} trials, not {len(self.specs)}")
            self.next = int(state["next"])

    return TrialFeed()


def max_pending_trials(cluster_cpus: float) -> int:
    """What Tune's "auto" gives its own grid generator: at least MIN_PENDING, 1.1x the CPUs on a larger cluster."""
    return max(MIN_PENDING, int(cluster_cpus * 1.1))


class pending_trials_env:
    """Within: TUNE_MAX_PENDING_TRIALS_PG as Tune's own grid generator would have it (unless the user set
    it, or ``max_concurrent`` caps the trials, where Tune takes that cap)."""

    NAME = "TUNE_MAX_PENDING_TRIALS_PG"

    def __init__(self, max_concurrent: int | None, cluster_cpus: float | None = None):
        """``cluster_cpus``: None asks the Ray this process is connected to."""
        self.max_concurrent, self.cluster_cpus, self.before = max_concurrent, cluster_cpus, None

    def __enter__(self):
        self.before = os.environ.get(self.NAME)
        if self.before is None and not self.max_concurrent:
            cpus = self.cluster_cpus
            if cpus is None:
                import ray

                cpus = ray.cluster_resources().get("CPU", 1.0)
            os.environ[self.NAME] = str(max_pending_trials(cpus))
        return self

    def __exit__(self, *exc):
        if self.before is None:
            os.environ.pop(self.NAME, None)
        return False
