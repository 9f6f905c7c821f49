"""Memorization estimates from subset trials (rethink_dist/memorization.py, data.subset).

- The estimator against an exact computation: a 1-nearest-neighbour classifier on a few dozen points,
  where Pr[h(x_i) = y_i | i in S] and Pr[... | i not in S] (and the influence on a test point) follow
  in closed form from the order of the neighbours; the estimate from K subset draws of the project's
  own subset_indices converges to it as K grows, within its stated standard error.
- Subset and corruption commute: a subset trial trains on exactly its subset, and every sample's
  corrupted label (and image) is the one it has in the whole set, in the memory and the FFCV loader.
- A sweep of subset trials through Ray Tune writes the per-sample outcomes, and the command turns
  them into scores.
"""

from __future__ import annotations

import json
import subprocess
import sys
from math import comb
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from rethink_dist.corruption import subset_indices, subset_size
from rethink_dist.memorization import auc, estimate, influence

REPO = Path(__file__).resolve().parents[1]


# ---------------------------------------------------------------------------------------------
# The estimator, exactly
# ---------------------------------------------------------------------------------------------
def _points(n: int, m: int, seed: int = 5):
    """n training points in three clusters with a few labels flipped (the ones 1-NN memorizes), m test points."""
    rng = np.random.default_rng(seed)
    centers = np.array([[0.0, 0.0], [4.0, 0.0], [2.0, 3.5]])
    y = rng.integers(0, 3, n)
    x = centers[y] + rng.normal(0, 1.1, (n, 2))
    flipped = rng.random(n) < 0.15
    y = np.where(flipped, (y + 1 + rng.integers(0, 2, n)) % 3, y)
    yt = rng.integers(0, 3, m)
    xt = centers[yt] + rng.normal(0, 1.1, (m, 2))
    return x, y, flipped, xt, yt


def _first_chosen(pool_order: list[int], choose: int) -> dict[int, float]:
    """Probability that each point of ``pool_order`` is the first of a uniform ``choose``-subset of the pool."""
    total = comb(len(pool_order), choose)
    return {p: comb(len(pool_order) - k, choose - 1) / total for k, p in enumerate(pool_order, start=1)}


def _exact_p_right(order: list[int], y, label, m: int, forced_in: int | None, forced_out: int | None) -> float:
    """Pr[the 1-NN label of a point equals ``label``] when S is a uniform m-subset, conditioned on one
    training point being in (``forced_in``) or out (``forced_out``); ``order``: training points by distance."""
    if forced_out is not None:
        pool = [p for p in order if p != forced_out]
        return sum(pr for p, pr in _first_chosen(pool, m).items() if y[p] == label)
    pool = [p for p in order if p != forced_in]
    before = order.index(forced_in)  # the pool points nearer than the forced one
    first = _first_chosen(pool, m - 1)
    total = comb(len(pool), m - 1)
    p_right = sum(first[p] for p in pool[:before] if y[p] == label)
    p_none_before = comb(len(pool) - before, m - 1) / total
    return p_right + (p_none_before if y[forced_in] == label else 0.0)


def _nn_outcomes(x, y, xt, yt, fraction: float, trials: int):
    n = len(y)
    member = np.zeros((trials, n), bool)
    for k in range(trials):
        member[k, subset_indices(n, fraction, k)] = True
    d_train = ((x[:, None] - x[None]) ** 2).sum(-1)
    d_test = ((xt[:, None] - x[None]) ** 2).sum(-1)
    correct = np.zeros((trials, n), bool)
    test_correct = np.zeros((trials, len(yt)), bool)
    for k in range(trials):
        s = np.flatnonzero(member[k])
        correct[k] = y[s[np.argmin(d_train[:, s], axis=1)]] == y  # a point in S is its own nearest neighbour
        test_correct[k] = y[s[np.argmin(d_test[:, s], axis=1)]] == yt
    return member, correct, test_correct, d_train, d_test


def test_estimates_converge_to_the_exact_scores_of_a_nearest_neighbour_classifier():
    n, m_test, fraction = 40, 12, 0.7
    x, y, flipped, xt, yt = _points(n, m_test)
    m = subset_size(n, fraction)
    member, correct, test_correct, d_train, d_test = _nn_outcomes(x, y, xt, yt, fraction, 4000)
    exact_mem = np.empty(n)
    for i in range(n):
        order = [int(p) for p in np.argsort(d_train[i], kind="stable") if p != i]
        exact_mem[i] = 1.0 - _exact_p_right(order, y, y[i], m, None, i)  # in S: always right
    errors, covered = [], []
    for k in (100, 400, 1600, 4000):
        est = estimate(member[:k], correct[:k])
        assert np.all(est.p_in[est.n_in > 0] == 1.0)  # 1-NN classifies its own training points right
        err = np.abs(est.mem - exact_mem)
        errors.append(float(np.mean(err)))
        covered.append(float(np.mean(err <= 3 * np.maximum(est.mem_se, 1e-12) + 1e-12)))
        assert np.all(est.n_in + est.n_out == k)
    assert errors[0] > errors[1] > errors[2] > errors[3], errors  # converges as trials are added
    assert errors[-1] < 0.01, errors
    assert min(covered) >= 0.95, covered  # the stated standard error describes the error
    # Memorized are the flipped labels: the estimate ranks them first.
    est = estimate(member, correct)
    assert auc(est.mem, flipped) > 0.9 and auc(exact_mem, flipped) > 0.9
    assert np.allclose(est.consistency, 1 - exact_mem, atol=0.05)  # the consistency score is Pr[right | out]

    # Influence of training point i on test point j, exactly, against the top pairs of the estimate.
    exact = np.empty((n, m_test))
    for j in range(m_test):
        order = [int(p) for p in np.argsort(d_test[j], kind="stable")]
        for i in range(n):
            exact[i, j] = (_exact_p_right(order, y, yt[j], m, i, None) - _exact_p_right(order, y, yt[j], m, None, i))
    top = influence(member, test_correct, top=10, block=7)  # blocks that do not divide n
    assert len(top["train"]) == 10 and np.all(np.diff(top["influence"]) <= 0)
    assert np.allclose(top["influence"], exact[top["train"], top["test"]], atol=4 * top["se"].max() + 1e-9)
    true_top = np.sort(exact.ravel())[::-1][:10]
    assert np.allclose(np.sort(top["influence"])[::-1], true_top, atol=0.05)
    with pytest.raises(ValueError, match="same K x n shape"):
        estimate(member[:, :3], correct)


def test_subset_indices_are_a_pure_function_of_seed_size_and_fraction():
    a = subset_indices(1437, 0.7, 11)
    assert len(a) == subset_size(1437, 0.7) == 1006 and np.all(np.diff(a) > 0)
    assert np.array_equal(a, subset_indices(1437, 0.7, 11))
    assert not np.array_equal(a, subset_indices(1437, 0.7, 12))
    assert set(subset_indices(1437, 0.3, 11)) <= set(a)  # nested: a smaller fraction of the same seed
    assert np.array_equal(subset_indices(10, 1.0, 3), np.arange(10))
    with pytest.raises(ValueError, match="outside"):
        subset_indices(10, 0.0, 1)
    # every sample is held by about the fraction of the seeds
    held = np.zeros(300)
    for s in range(400):
        held[subset_indices(300, 0.5, s)] += 1
    assert abs(held.mean() / 400 - 0.5) < 1e-9 and held.std() / 400 < 0.04


def test_auc_counts_ties_half():
    assert auc(np.array([0.9, 0.8, 0.1, 0.2]), np.array([1, 1, 0, 0], bool)) == 1.0
    assert auc(np.array([0.5, 0.5]), np.array([1, 0], bool)) == 0.5
    assert np.isnan(auc(np.array([0.5]), np.array([1], bool)))


# ---------------------------------------------------------------------------------------------
# Subset and corruption commute
# ---------------------------------------------------------------------------------------------
def test_a_subset_trial_trains_on_its_subset_with_the_whole_sets_corruption(tmp_path):
    import torch

    from rethink_dist.config import TrialConfig
    from rethink_dist.data import load
    from rethink_dist.data.ffcv_loader import build_ffcv_loader
    from rethink_dist.data.ffcv_writer import prepare
    from rethink_dist.data.memory import corrupt_dataset
    from rethink_dist.train import Trial, build_loader

    base = {"corruption": {"kind": "labels", "level": 0.5, "seed": 7}, "optim": {"epochs": 1, "batch_size": 64},
            "sample_records": True}
    whole = corrupt_dataset(load("digits"), TrialConfig.from_dict(base).corruption)
    beton = tmp_path / "beton"
    prepare("digits", None, beton, workers=1)
    for loader_name in ("memory", "ffcv"):
        data = {"subset": 0.6, "subset_seed": 4}
        if loader_name == "ffcv":
            data.update(loader="ffcv", beton_dir=str(beton))
        cfg = TrialConfig.from_dict({**base, "data": data})
        subset = subset_indices(1437, 0.6, 4)
        loader, meta = (build_loader(cfg, torch.device("cpu")) if loader_name == "memory"
                        else build_ffcv_loader(cfg, torch.device("cpu")))
        assert meta["subset_size"] == len(subset) == 862 and meta["labels_changed"] == int(whole.changed.sum())
        assert loader.num_train == 1437 and loader.in_subset.sum() == 862
        assert np.array_equal(np.flatnonzero(loader.in_subset.numpy()), subset)
        assert np.array_equal(loader.changed.numpy(), whole.changed)  # over the whole set, as without a subset
        if loader_name == "memory":
            assert np.array_equal(loader.train_y.numpy(), whole.train_y)
            seen = sum(len(y) for _, y in loader.train_batches(64, torch.Generator().manual_seed(0)))
            assert seen == 862
        else:
            labels = np.concatenate([y.numpy() for _, y in loader.train_batches(64, torch.Generator().manual_seed(0))])
            idx, y = loader.last_epoch
            assert sorted(idx.tolist()) == subset.tolist()  # one epoch: exactly the subset, each once
            assert np.array_equal(y, whole.train_y[idx]) and np.array_equal(labels, whole.train_y[idx])
        # The trial: training accuracies over the subset, the held-out ones apart; records over every sample.
        trial = Trial(cfg, loader, meta)
        rec = trial.run_epoch()
        a = trial.sample_arrays()
        fitted = a["first_fit_epoch"] >= 0
        assert a["in_subset"].sum() == 862 and len(a["test_correct"]) == 360
        assert rec["train_acc"] == pytest.approx(fitted[a["in_subset"]].mean())
        assert rec["heldout_acc"] == pytest.approx(fitted[~a["in_subset"]].mean())
        assert rec["test_acc"] == pytest.approx(a["test_correct"].mean())
        changed_in = a["label_changed"] & a["in_subset"]
        assert rec["train_acc_corrupted"] == pytest.approx(fitted[changed_in].mean())


def test_bad_subset_settings_are_one_line_exit_2(tmp_path):
    for flag, value, message in (("data.subset", 0.0, "data.subset=0.0 is out of range; valid: (0, 1]"),
                                 ("data.subset", 1.5, "data.subset=1.5 is out of range"),
                                 ("data.subset_seed", -1, "data.subset_seed must be >= 0, got -1")):
        section, key = flag.split(".")
        cfg = tmp_path / "c.json"
        cfg.write_text(json.dumps({section: {key: value}}))
        p = subprocess.run([sys.executable, "-m", "rethink_dist.cli", "train", "--config", str(cfg)],
                           capture_output=True, text=True, timeout=120)
        lines = p.stderr.strip().splitlines()
        assert p.returncode == 2 and len(lines) == 1 and message in lines[0], (flag, p.stderr)


def test_a_config_without_a_subset_keeps_its_trial_id():
    """Trials planned before subsets existed keep their ids (their resumes find their checkpoints)."""
    from rethink_dist.config import TrialConfig

    cfg = TrialConfig.from_dict({"corruption": {"kind": "labels", "level": 0.2}})
    assert "subset" not in json.dumps(cfg.fingerprint())
    sub = cfg.replace(**{"data.subset": 0.7})
    assert sub.fingerprint() != cfg.fingerprint() != sub.replace(**{"data.subset_seed": 1}).fingerprint()
    assert "sub0.7-0" in sub.resolved().name


# ---------------------------------------------------------------------------------------------
# A real sweep of subset trials, and the command
# ---------------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def smoke_folder(tmp_path_factory):
    store = tmp_path_factory.mktemp("memorization") / "store"
    p = subprocess.run([sys.executable, str(REPO / "sweeps" / "memorization.py"), "--smoke", "--storage", str(store)],
                       capture_output=True, text=True, timeout=900)
    assert p.returncode == 0, p.stdout[-3000:] + p.stderr[-3000:]
    return next(store.glob("memorization*"))


def test_memorization_smoke_sweep_and_command(smoke_folder, tmp_path):
    folder = smoke_folder
    plan = json.loads((folder / "sweep.json").read_text())
    trials = [t["trial_id"] for t in plan["trials"]]
    table = pd.read_parquet(folder / "trials.parquet")
    assert table["finished"].sum() == len(trials) and not table.duplicated(["trial_id", "epoch"]).any()
    for tid in trials:  # every trial's outcomes, once: a row per training and per test sample
        s = pd.read_parquet(folder / "samples" / f"{tid}.parquet")
        assert (s["split"] == "train").sum() == s.loc[s["split"] == "train", "sample"].nunique()
        assert s.loc[s["split"] == "test", "sample"].nunique() == (s["split"] == "test").sum() > 0
    out = subprocess.run([sys.executable, "-m", "rethink_dist.cli", "memorization", str(folder), "--json"],
                         capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stderr[-3000:]
    summary = json.loads(out.stdout)
    assert {row["trials"] for row in summary["settings"]} == {len(trials) // len(summary["settings"])}
    scores = pd.read_parquet(folder / "memorization" / "scores.parquet")
    assert set(scores.columns) >= {"setting", "sample", "label_changed", "mem", "mem_se", "consistency", "n_in", "n_out"}
    assert scores["mem"].between(-1, 1).all() or scores["mem"].isna().any()
    pairs = pd.read_parquet(folder / "memorization" / "influence.parquet")
    assert len(pairs) > 0 and pairs["influence"].between(-1, 1).all()
    bad = subprocess.run([sys.executable, "-m", "rethink_dist.cli", "memorization", str(tmp_path)],
                         capture_output=True, text=True, timeout=120)
    lines = bad.stderr.strip().splitlines()
    assert bad.returncode == 2 and len(lines) == 1 and "sweep.json" in lines[0], bad.stderr


def test_the_report_draws_the_memorization_figures_in_a_browser(smoke_folder, tmp_path_factory):
    """The report of a sweep of subset trials: the score histogram, the most memorized images (with
    their given and true labels, as the corruption made them) and the influence grid, each a PNG that
    loads in a real Chromium without console errors."""
    from test_report_browser import Browser, check_report_page

    from rethink_dist.data import load
    from rethink_dist.data.memory import corrupt_dataset
    from rethink_dist.config import CorruptionConfig
    from rethink_dist.report import build_report, load_folder

    report = build_report(load_folder(smoke_folder), smoke_folder / "report")
    figs = {f.id: f for f in report.figures}
    for fid in ("memorization-scores", "memorization-top", "memorization-influence"):
        assert figs[fid].png, (fid, figs[fid].missing)
    (hist,) = [v for k, v in figs["memorization-scores"].series.items() if k.endswith(" clean")]
    assert sum(hist["counts"]) == hist["samples"] > 0
    (top,) = figs["memorization-top"].series.values()
    assert 0 < len(top) <= 24 and [t["mem"] for t in top] == sorted((t["mem"] for t in top), reverse=True)
    # The labels drawn are the corruption's: the smoke sweep corrupts 256 digits at p = 0.2, seed 0.
    arrays = corrupt_dataset(load("digits").subset_train(256), CorruptionConfig(kind="labels", level=0.2, seed=0))
    assert all(t["given"] == arrays.train_y[t["sample"]] and t["true"] == arrays.true_train_y[t["sample"]] for t in top)
    (rows,) = figs["memorization-influence"].series.values()
    assert rows and all(r["tests"] for r in rows)
    browser = Browser(tmp_path_factory.mktemp("chromium") / "profile")
    try:
        check_report_page(browser, report.html, sum(1 for f in report.figures if f.png))
    finally:
        browser.close()
