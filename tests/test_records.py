"""The record schema (rethink_dist/records.py) and docs/results-format.md say the same."""

from __future__ import annotations

import re
from pathlib import Path

from rethink_dist import records

DOC = (Path(__file__).resolve().parents[1] / "docs" / "results-format.md").read_text()


def _documented() -> set[str]:
    return set(re.findall(r"`([a-z_.0-9A-Z]+)`", DOC))


def test_every_key_is_documented():
    keys = (set(records.ROW_KEYS) | set(records.EPOCH_KEYS) | set(records.PLACEMENT_KEYS) | set(records.THEORY_KEYS)
            | set(records.SAMPLE_KEYS)
            | {f"summary.{k}" for k in records.SUMMARY_KEYS} | set(records.TAGS))
    missing = sorted(keys - _documented())
    assert not missing, f"docs/results-format.md does not mention {missing}"


def test_the_parquet_table_documents_no_column_the_schema_lacks():
    table = DOC.split("## trials.parquet", 1)[1].split("\n## ", 1)[0]
    rows = [line for line in table.splitlines() if line.startswith("| `") and "`data.name`" not in line]  # not the config
    columns = {c for line in rows for c in re.findall(r"`([a-z_0-9]+)`", line.split("|")[1])}
    known = set(records.ROW_KEYS) | set(records.RECORD_KEYS)
    assert columns - known == set(), f"documented but not in rethink_dist/records.py: {sorted(columns - known)}"
    assert known <= columns, f"in rethink_dist/records.py but not in the column table: {sorted(known - columns)}"


def test_summary_of_a_history():
    history = [{"epoch": 1, "step": 10, "train_acc": 0.5, "test_acc": 0.4, "test_top5": 0.9, "best_test_acc": 0.4,
                "steps_to_fit": None, "seconds": 1.0},
               {"epoch": 2, "step": 20, "train_acc": 1.0, "test_acc": 0.3, "test_top5": 0.8, "best_test_acc": 0.4,
                "steps_to_fit": 20, "seconds": 2.0}]
    s = records.summarize(history)
    assert set(s) == set(records.SUMMARY_KEYS)
    assert s == {"train_acc": 1.0, "test_acc": 0.3, "test_top5": 0.8, "best_test_acc": 0.4, "steps_to_fit": 20,
                 "epochs": 2, "steps": 20, "fitted": True, "seconds": 2.0}
    assert records.summarize([])["fitted"] is False


def test_the_samples_table_documents_exactly_the_schema():
    table = DOC.split("## samples/", 1)[1].split("\n## ", 1)[0]
    columns = [re.findall(r"`([a-z_0-9]+)`", line.split("|")[1])[0] for line in table.splitlines()
               if line.startswith("| `")]
    assert tuple(columns) == records.SAMPLE_KEYS
