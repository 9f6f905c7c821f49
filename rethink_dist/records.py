"""The record schema: the keys of every result the project writes, in one place.

A network trial produces one *epoch record* per epoch (:data:`EPOCH_KEYS`, made by
:meth:`rethink_dist.train.Trial.run_epoch`); where it ran adds :data:`PLACEMENT_KEYS`; a theory
trial produces one record of :data:`THEORY_KEYS`. The Parquet table holds one row per (trial,
epoch): :data:`ROW_KEYS`, the record's keys, and the flat resolved config. MLflow holds the same
epochs as metrics (``step = epoch``), the trial's summary (:data:`SUMMARY_KEYS`, as
``summary.<key>``) and the tags of :data:`TAGS`. docs/results-format.md documents every key
here (a test checks it).
"""

from __future__ import annotations

import math
from typing import Any, Iterable

# The columns that identify a row of trials.parquet (before the record and the flat config).
ROW_KEYS = ("trial_id", "sweep", "run_name", "kind", "epoch", "finished")

# One epoch of a network trial.
EPOCH_KEYS = (
    "epoch", "step", "train_loss", "train_acc", "train_acc_clean", "train_acc_corrupted", "heldout_acc", "test_acc",
    "test_top5", "best_test_acc", "lr", "images_per_s", "train_seconds", "eval_seconds", "seconds", "steps_to_fit",
)
# Where and when the epoch ran and on which labels (added by the code that runs the trial on Ray):
# ended_at is the Unix time at the epoch's end, world_size the number of processes that trained it
# (1, or a data-parallel trial's ranks at that epoch).
PLACEMENT_KEYS = ("labels_fingerprint", "node", "node_id", "pid", "ended_at", "world_size")
# The one record of a theory trial (expressivity: n, d, params, max_abs_error, min_eigenvalue;
# kernel: n_train, n_test, train_error, test_error, norm).
THEORY_KEYS = ("n", "d", "params", "max_abs_error", "min_eigenvalue", "n_train", "n_test", "train_error",
               "test_error", "norm")
# Every key a reported record may carry into the Parquet table.
RECORD_KEYS = EPOCH_KEYS + PLACEMENT_KEYS + THEORY_KEYS
# The Parquet type of every column above (docs/results-format.md): each part of trials.parquet is
# written with one schema for the whole sweep, so that any Parquet reader sees one table.
COLUMN_TYPES = {
    "trial_id": "string", "sweep": "string", "run_name": "string", "kind": "string", "epoch": "int64",
    "finished": "bool", "step": "int64", "steps_to_fit": "int64", "labels_fingerprint": "string", "node": "string",
    "node_id": "string", "pid": "int64", "world_size": "int64", "n": "int64", "d": "int64", "params": "int64",
    "n_train": "int64", "n_test": "int64",
    **{k: "double" for k in ("train_loss", "train_acc", "train_acc_clean", "train_acc_corrupted", "heldout_acc", "test_acc",
                             "test_top5", "best_test_acc", "lr", "images_per_s", "train_seconds", "eval_seconds",
                             "seconds", "ended_at", "max_abs_error", "min_eigenvalue", "train_error", "test_error",
                             "norm")},
}
# The per-epoch metrics logged to MLflow (step = epoch).
METRIC_KEYS = tuple(k for k in EPOCH_KEYS if k != "epoch")
# A trial's summary (MLflow: summary.<key>; `rethink-dist train --json`: "summary").
SUMMARY_KEYS = ("train_acc", "test_acc", "test_top5", "best_test_acc", "steps_to_fit", "epochs", "steps", "fitted",
                "seconds")

# One row per training sample and one per test sample of a trial with sample_records on
# (samples/<trial_id>.parquet): its split and index, whether its (possibly corrupted) label was
# changed, whether the trial trained on it (a subset trial's subset), whether the final model
# classifies it as its label, and, for training samples, the first epoch from which it was
# classified so for good (null: not at the last evaluation) and its forgetting events.
SAMPLE_KEYS = ("trial_id", "split", "sample", "label_changed", "in_subset", "correct", "first_fit_epoch",
               "forgettings")
SAMPLES_DIR = "samples"
SAMPLES_FILE = "samples.npz"  # in a trial's checkpoint: the same arrays, without the trial id

# The other files of a trial's checkpoint folder: its model and optimizer state, its epochs so far
# (the records), its facts (the first report's meta).
STATE_FILE, HISTORY_FILE, META_FILE = "state.pt", "history.json", "meta.json"

# MLflow tags.
PARENT_RUN = "mlflow.parentRunId"
ROLE = "rethink.role"  # "sweep" (the parent run) or "trial"
SWEEP = "rethink.sweep"
TRIAL_ID = "rethink.trial_id"
GIT_COMMIT = "rethink.git_commit"
DATASET_FINGERPRINT = "rethink.dataset_fingerprint"
LAST_ERROR = "rethink.last_error"
TAGS = (PARENT_RUN, ROLE, SWEEP, TRIAL_ID, GIT_COMMIT, DATASET_FINGERPRINT, LAST_ERROR)


def summarize(history: list[dict[str, Any]]) -> dict[str, Any]:
    """A trial's summary from its epoch records (the last epoch's accuracies, the best test accuracy)."""
    last = history[-1] if history else {}
    steps_to_fit = last.get("steps_to_fit")
    return {
        "train_acc": last.get("train_acc"),
        "test_acc": last.get("test_acc"),
        "test_top5": last.get("test_top5"),
        "best_test_acc": last.get("best_test_acc"),
        "steps_to_fit": steps_to_fit,
        "epochs": last.get("epoch", 0),
        "steps": last.get("step", 0),
        "fitted": steps_to_fit is not None,
        "seconds": last.get("seconds"),
    }


def finite_numbers(record: dict[str, Any], keys: Iterable[str]) -> dict[str, float]:
    """The finite numeric values of ``record`` under ``keys`` (None and NaN are missing, not zero)."""
    out = {}
    for k in keys:
        v = record.get(k)
        if isinstance(v, bool):
            out[k] = float(v)
        elif isinstance(v, (int, float)) and math.isfinite(v):
            out[k] = float(v)
    return out
