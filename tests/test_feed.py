"""The sweep's trials reach Tune one config at a time (rethink_dist/sweep/feed.py): in the list's order,
each with its own extras, then FINISHED; its saved state is how far it got, and a state saved for
another list is refused rather than skipping or repeating trials. The sweeps in tests/test_sweep.py,
test_sweep_stops.py and test_sweep_storage.py run every trial through it, resumed or rebuilt."""

from __future__ import annotations

import os

import pytest

from rethink_dist.sweep.feed import MIN_PENDING, max_pending_trials, pending_trials_env, trial_feed


def _specs(n):
    return [{"trial_id": f"t{i:04d}", "kind": "network", "config": {"seed": i}} for i in range(n)]


def test_the_feed_hands_out_the_list_in_order_then_finishes_and_resumes_where_it_stopped(tmp_path):
    from ray.tune.search import Searcher

    specs = _specs(5)
    feed = trial_feed(specs, {"report_seconds": 1.0}, {"t0003": {"resume_from": ["a", "b"]}})
    got = [feed.suggest(f"tune{i}") for i in range(3)]
    assert [g["spec"]["trial_id"] for g in got] == ["t0000", "t0001", "t0002"]
    assert all(g["ctx"] == {"report_seconds": 1.0} for g in got)
    feed.save(str(tmp_path / "state"))

    again = trial_feed(specs, {"report_seconds": 1.0}, {"t0003": {"resume_from": ["a", "b"]}})
    again.restore(str(tmp_path / "state"))
    rest = [again.suggest("x"), again.suggest("y")]
    assert [g["spec"]["trial_id"] for g in rest] == ["t0003", "t0004"]
    assert rest[0]["ctx"] == {"report_seconds": 1.0, "resume_from": ["a", "b"]}
    assert again.suggest("z") == Searcher.FINISHED

    other = trial_feed(_specs(4), {})
    with pytest.raises(ValueError, match="a feed of 5 trials, not 4"):
        other.restore(str(tmp_path / "state"))


def test_pending_trials_are_what_tunes_own_grid_gets_unless_the_user_says(monkeypatch):
    monkeypatch.delenv(pending_trials_env.NAME, raising=False)
    with pending_trials_env(None, cluster_cpus=400.0):
        assert os.environ[pending_trials_env.NAME] == "440"
    assert pending_trials_env.NAME not in os.environ
    assert max_pending_trials(2) == MIN_PENDING
    with pending_trials_env(8, cluster_cpus=400.0):  # capped by max_concurrent_trials: Tune takes the cap itself
        assert pending_trials_env.NAME not in os.environ
    monkeypatch.setenv(pending_trials_env.NAME, "7")
    with pending_trials_env(None, cluster_cpus=400.0):
        assert os.environ[pending_trials_env.NAME] == "7"
    assert os.environ[pending_trials_env.NAME] == "7"
