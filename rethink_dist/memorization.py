"""Which training samples a network memorizes: estimates from many subset trials.

Feldman and Zhang ("What Neural Networks Memorize and Why", NeurIPS 2020) define, for a training
algorithm A and a training sample i, its memorization score

    mem(i) = Pr[h(x_i) = y_i | i in S] - Pr[h(x_i) = y_i | i not in S],   h = A(S),

and the influence of training sample i on test sample j as the same difference measured on j. The
probabilities are over the random subset S (a fixed fraction of the training set) and the
randomness of training. Jiang et al. (2021) call Pr[h(x_i) = y_i | i not in S] the consistency
score (C-score) of i. With K trials of one setting, each on its own random subset
(``data.subset`` / ``data.subset_seed``), every probability is estimated by a frequency over the
trials that held i (or did not), and its standard error by the binomial one,

    se(mem) = sqrt(q_in (1 - q_in) / K_in + q_out (1 - q_out) / K_out),  q = (hits + 1) / (K + 2),

with each frequency pulled towards 1/2 by one success and one failure (Agresti and Coull): the plain
frequency makes the error 0 wherever all K trials agreed, a certainty K trials cannot give (a
sample misclassified once in a thousand held-out models would get se = 0 from 30 of them).

A *setting* is everything in a trial's config but the seeds (``data.subset_seed``, ``seed``) and
the name: the trials of one setting are draws of the same random algorithm. The per-sample outcomes
come from the trials' per-sample records (samples/<trial_id>.parquet, rethink_dist.records).

:func:`estimate` does the arithmetic on arrays (tests check it against an exact computation);
:func:`estimate_folder` reads a sweep folder and writes ``memorization/scores.parquet`` (one row per
training sample and setting) and ``memorization/influence.parquet`` (the largest influences).
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

SCORES_FILE = "scores.parquet"
INFLUENCE_FILE = "influence.parquet"
OUT_DIR = "memorization"
# Config keys that differ between the trials of one setting.
SEED_KEYS = ("data.subset_seed", "seed", "name")


class MemorizationError(ValueError):
    """The folder cannot give the estimates (no per-sample records, no subset trials): one line."""


@dataclass
class Estimates:
    """Per training sample: trials that held it (``n_in``) and did not (``n_out``), the frequencies it
    was classified as its label in each (``p_in``, ``p_out``), ``mem = p_in - p_out`` and its standard
    error, and the consistency score (``p_out``). NaN where a sample was never (or always) held."""

    n_in: np.ndarray
    n_out: np.ndarray
    p_in: np.ndarray
    p_out: np.ndarray
    mem: np.ndarray
    mem_se: np.ndarray

    @property
    def consistency(self) -> np.ndarray:
        return self.p_out


def _freq(hits: np.ndarray, n: np.ndarray) -> np.ndarray:
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.where(n > 0, hits / np.maximum(n, 1), np.nan)


def _se(hits_in: np.ndarray, n_in: np.ndarray, hits_out: np.ndarray, n_out: np.ndarray) -> np.ndarray:
    """The standard error of a difference of two frequencies (module docstring); NaN where a count is 0."""
    q_in, q_out = (hits_in + 1) / (n_in + 2), (hits_out + 1) / (n_out + 2)
    with np.errstate(invalid="ignore", divide="ignore"):
        se = np.sqrt(q_in * (1 - q_in) / n_in + q_out * (1 - q_out) / n_out)
    return np.where((n_in > 0) & (n_out > 0), se, np.nan)


def estimate(in_subset: np.ndarray, correct: np.ndarray) -> Estimates:
    """mem for every training sample from K trials: ``in_subset`` and ``correct`` are K x n booleans
    (trial k trained on sample i; trial k's final model classifies sample i as its label)."""
    member = np.asarray(in_subset, dtype=bool)
    hit = np.asarray(correct, dtype=bool)
    if member.shape != hit.shape or member.ndim != 2:
        raise ValueError(f"in_subset {member.shape} and correct {hit.shape} must be the same K x n shape")
    n_in = member.sum(axis=0).astype(np.int64)
    n_out = member.shape[0] - n_in
    hits_in, hits_out = (hit & member).sum(axis=0), (hit & ~member).sum(axis=0)
    p_in, p_out = _freq(hits_in, n_in), _freq(hits_out, n_out)
    return Estimates(n_in, n_out, p_in, p_out, p_in - p_out, _se(hits_in, n_in, hits_out, n_out))


def influence(in_subset: np.ndarray, test_correct: np.ndarray, top: int, block: int = 4096) -> dict[str, np.ndarray]:
    """The ``top`` largest influences infl(i, j) = Pr[test j right | i in S] - Pr[test j right | i not in S]
    from K trials (``in_subset`` K x n, ``test_correct`` K x m), computed in blocks of training samples
    (the full n x m matrix is never held): arrays ``train``, ``test``, ``influence``, ``se``, largest first."""
    member = np.asarray(in_subset, dtype=np.float64)
    test = np.asarray(test_correct, dtype=np.float64)
    if member.ndim != 2 or test.ndim != 2 or member.shape[0] != test.shape[0]:
        raise ValueError(f"in_subset {member.shape} and test_correct {test.shape} must be K x n and K x m")
    k, n = member.shape
    right = test.sum(axis=0)  # per test sample: trials that classify it right
    best = {"train": np.zeros(0, np.int64), "test": np.zeros(0, np.int64), "influence": np.zeros(0), "se": np.zeros(0)}
    for start in range(0, n, block):
        m_blk = member[:, start:start + block]
        n_in = m_blk.sum(axis=0)[:, None]
        n_out = k - n_in
        hits_in = m_blk.T @ test  # block x m
        p_in = _freq(hits_in, np.broadcast_to(n_in, hits_in.shape))
        p_out = _freq(right[None, :] - hits_in, np.broadcast_to(n_out, hits_in.shape))
        infl = np.nan_to_num(p_in - p_out, nan=-np.inf)
        flat = infl.ravel()
        take = min(top, flat.size)
        idx = np.argpartition(-flat, take - 1)[:take] if take < flat.size else np.arange(flat.size)
        rows, cols = np.unravel_index(idx, infl.shape)
        se = _se(hits_in[rows, cols], n_in[rows, 0], right[cols] - hits_in[rows, cols], n_out[rows, 0])
        best = {"train": np.concatenate([best["train"], rows + start]), "test": np.concatenate([best["test"], cols]),
                "influence": np.concatenate([best["influence"], flat[idx]]), "se": np.concatenate([best["se"], se])}
        keep = np.argsort(-best["influence"], kind="stable")[:top]
        best = {key: v[keep] for key, v in best.items()}
    finite = np.isfinite(best["influence"])
    return {key: v[finite] for key, v in best.items()}


def auc(scores: np.ndarray, positive: np.ndarray) -> float:
    """The area under the ROC curve of ``scores`` for telling ``positive`` samples from the others
    (the probability that a random positive scores above a random negative; ties count half)."""
    scores = np.asarray(scores, dtype=np.float64)
    positive = np.asarray(positive, dtype=bool)
    ok = np.isfinite(scores)
    scores, positive = scores[ok], positive[ok]
    n_pos, n_neg = int(positive.sum()), int((~positive).sum())
    if not n_pos or not n_neg:
        return float("nan")
    order = np.argsort(scores, kind="mergesort")
    ranks = np.empty(len(scores))
    s = scores[order]
    # average ranks over ties
    bounds = np.flatnonzero(np.diff(s)) + 1
    starts = np.concatenate([[0], bounds])
    ends = np.concatenate([bounds, [len(s)]])
    for a, b in zip(starts, ends):
        ranks[order[a:b]] = (a + b + 1) / 2.0
    return float((ranks[positive].sum() - n_pos * (n_pos + 1) / 2) / (n_pos * n_neg))


# ------------------------------------------------------------------------------------------
# A sweep folder
# ------------------------------------------------------------------------------------------
def _settings(folder: Path) -> dict[str, list[dict[str, Any]]]:
    """The sweep's subset trials, grouped by setting: {setting: [sweep.json's trial entries]}."""
    plan_path = folder / "sweep.json"
    try:
        plan = json.loads(plan_path.read_text())
    except (OSError, ValueError) as e:
        raise MemorizationError(f"{plan_path} cannot be read ({e}); give a sweep folder (<storage>/<sweep>)") from None
    groups: dict[str, list[dict[str, Any]]] = {}
    for t in plan.get("trials", []):
        flat = t.get("flat") or {}
        if t.get("kind", "network") != "network" or flat.get("data.subset") is None:
            continue
        key = json.dumps({k: v for k, v in sorted(flat.items()) if k not in SEED_KEYS}, default=str)
        groups.setdefault(key, []).append(t)
    return groups


def has_subset_trials(folder: str | Path) -> bool:
    """Whether the sweep folder plans subset trials (what the estimates need); False without a plan."""
    try:
        return bool(_settings(Path(folder)))
    except MemorizationError:
        return False


def setting_name(setting: str) -> str:
    """A short readable name of a setting: data set, corruption, model, subset fraction."""
    flat = json.loads(setting)
    kind = flat.get("corruption.kind", "none")
    corr = "true labels" if kind == "none" else (
        f"labels p={flat.get('corruption.level', 0):g}" if kind == "labels" else kind)
    return f"{flat.get('data.name')} {corr} {flat.get('model.name')} subset {flat.get('data.subset'):g}"


def _outcomes(folder: Path, trial_ids: list[str]) -> tuple[list[str], dict[str, np.ndarray]]:
    """The finished trials' per-sample outcomes, stacked: in_subset, correct (K x n), test_correct
    (K x m) and label_changed (n). Trials without a records file (not finished) are left out."""
    import pyarrow.parquet as pq

    got, member, hit, test, changed = [], [], [], [], None
    for tid in trial_ids:
        path = folder / "samples" / f"{tid}.parquet"
        if not path.exists():
            continue
        t = pq.read_table(path).to_pandas()
        if "split" not in t or "in_subset" not in t:
            raise MemorizationError(f"{path} has no subset membership (written by an earlier version); rerun the trial")
        train = t[t["split"] == "train"].sort_values("sample")
        tst = t[t["split"] == "test"].sort_values("sample")
        got.append(tid)
        member.append(train["in_subset"].to_numpy(bool))
        hit.append(train["correct"].to_numpy(bool))
        test.append(tst["correct"].to_numpy(bool))
        if changed is None:
            changed = train["label_changed"].to_numpy(bool)
    if not got:
        return [], {}
    shapes = {(len(a), len(b)) for a, b in zip(member, test)}
    if len(shapes) != 1:
        raise MemorizationError(f"the trials of one setting have records of different sizes {sorted(shapes)}")
    return got, {"in_subset": np.stack(member), "correct": np.stack(hit), "test_correct": np.stack(test),
                 "label_changed": changed}


@dataclass
class Setting:
    """One setting's estimates: its readable name, the config of one of its trials (for the data set
    and the corruption), the scores (one row per training sample), the largest influences and the
    summary row the command prints."""

    name: str
    config: dict[str, Any]
    scores: Any  # pandas.DataFrame
    pairs: Any  # pandas.DataFrame or None (no test outcomes)
    summary: dict[str, Any]


def folder_estimates(folder: str | Path, top: int = 1000) -> tuple[list[Setting], list[dict[str, Any]]]:
    """The estimates of every setting of a sweep folder with at least 2 finished trials, and the summary
    rows of all its settings (those with fewer trials say so). Nothing is written."""
    import pandas as pd

    folder = Path(folder)
    groups = _settings(folder)
    if not groups:
        raise MemorizationError(f"{folder} has no subset trials (data.subset) in its sweep.json; "
                                "sweeps/memorization.py runs such a sweep")
    settings, summary = [], []
    for setting, entries in groups.items():
        got, arr = _outcomes(folder, [t["trial_id"] for t in entries])
        name = setting_name(setting)
        if len(got) < 2:
            summary.append({"setting": name, "trials": len(got), "planned": len(entries), "note": "fewer than 2 trials"})
            continue
        est = estimate(arr["in_subset"], arr["correct"])
        changed = arr["label_changed"]
        scores = pd.DataFrame({
            "setting": name, "sample": np.arange(len(est.mem)), "label_changed": changed, "trials": len(got),
            "n_in": est.n_in, "n_out": est.n_out, "p_in": est.p_in, "p_out": est.p_out, "mem": est.mem,
            "mem_se": est.mem_se, "consistency": est.consistency})
        pairs = None
        if arr["test_correct"].shape[1]:
            inf = influence(arr["in_subset"], arr["test_correct"], top)
            pairs = pd.DataFrame({"setting": name, "train_sample": inf["train"], "test_sample": inf["test"],
                                  "influence": inf["influence"], "influence_se": inf["se"],
                                  "mem": est.mem[inf["train"]]})
        row = {"setting": name, "trials": len(got), "planned": len(entries),
               "median_mem_se": float(np.nanmedian(est.mem_se)),
               "min_trials_in": int(est.n_in.min()), "min_trials_out": int(est.n_out.min())}
        if changed.any() and (~changed).any():
            k = int(changed.sum())
            top_k = np.argsort(-np.nan_to_num(est.mem, nan=-np.inf), kind="stable")[:k]
            row.update({"corrupted": k, "auc_corrupted": auc(est.mem, changed),
                        "corrupted_in_top": float(changed[top_k].mean())})
        summary.append(row)
        settings.append(Setting(name, entries[0]["config"], scores, pairs, row))
    return settings, summary


def estimate_folder(folder: str | Path, out: str | Path | None = None, top: int = 1000) -> dict[str, Any]:
    """Estimates for every setting of a sweep folder, written as Parquet under ``out`` (default
    FOLDER/memorization); returns a summary per setting (what the command prints)."""
    import pandas as pd

    from rethink_dist.files import atomic_path

    settings, summary = folder_estimates(folder, top)
    out = Path(out) if out is not None else Path(folder) / OUT_DIR
    out.mkdir(parents=True, exist_ok=True)
    if settings:
        with atomic_path(out / SCORES_FILE) as tmp:
            pd.concat([s.scores for s in settings], ignore_index=True).to_parquet(tmp, index=False)
    pairs = [s.pairs for s in settings if s.pairs is not None]
    if pairs:
        with atomic_path(out / INFLUENCE_FILE) as tmp:
            pd.concat(pairs, ignore_index=True).to_parquet(tmp, index=False)
    return {"out": str(out), "settings": summary}
