"""trials.parquet as a folder of per-trial parts: one table to any reader, writes whose cost does not
grow with the sweep, a refused write that leaves the table as it was, bounded memory, old tables."""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from rethink_dist import parquet
from rethink_dist.parquet import ResultsTable, sweep_schema, trial_index

REPO = Path(__file__).resolve().parents[1]
FLATS = [{"optim.lr": 0.1, "seed": 1, "data.name": "digits"},
         {"optim.lr": 1, "seed": 2, "data.name": "digits", "params.also_levels": [0.2, 0.4]}]


def row(tid: str, epoch: int, **kw) -> dict:
    return {"trial_id": tid, "sweep": "s", "run_name": tid, "kind": "network", "epoch": epoch, "step": 10 * epoch,
            "train_acc": epoch / 10, "finished": False, "optim.lr": 0.1, "seed": 1, "data.name": "digits", **kw}


def test_every_trial_is_a_part_and_readers_see_one_table(tmp_path):
    path = tmp_path / "trials.parquet"
    t = ResultsTable(path, schema=sweep_schema(FLATS))
    for e in (1, 2, 3):
        t.add(row("t0000-aa", e))
    t.add(row("t0001-bb", 1, kind="kernel", n_train=300, train_error=0.0, step=None, finished=True), flush=True)
    t.add(row("t0000-aa", 2, train_acc=0.99))  # a retried epoch replaces its row
    t.flush()
    assert sorted(p.name for p in path.iterdir()) == ["_common_metadata", "t0000-aa.parquet", "t0001-bb.parquet"]
    df = pd.read_parquet(path)  # a reader that knows nothing of parts
    assert len(df) == 4 and not df.duplicated(["trial_id", "epoch"]).any()
    assert df.loc[(df.trial_id == "t0000-aa") & (df.epoch == 2), "train_acc"].item() == 0.99
    assert df.loc[df.trial_id == "t0001-bb", "n_train"].item() == 300
    # every part has the sweep's one schema: the declared types, the config's inferred ones
    schemas = {pq.read_schema(p) for p in path.glob("t*.parquet")}
    assert len(schemas) == 1
    schema = schemas.pop()
    assert schema.equals(pq.read_schema(path / "_common_metadata"))
    assert str(schema.field("epoch").type) == "int64" and str(schema.field("optim.lr").type) == "double"
    levels = schema.field("params.also_levels").type
    assert pa.types.is_list(levels) and levels.value_type == pa.float64()
    assert trial_index(path) == {"t0000-aa": (3, False), "t0001-bb": (1, True)}
    # a new table over the folder (a resume) knows every trial without holding their rows
    again = ResultsTable(path)
    assert again.finished("t0001-bb") and not again.finished("t0000-aa") and again.last_epoch("t0000-aa") == 3
    assert [r["epoch"] for r in again.trial_rows("t0000-aa")] == [1, 2, 3]
    assert set(again.last_rows()) == {"t0000-aa", "t0001-bb"} and again.last_rows()["t0000-aa"]["epoch"] == 3


def test_a_flush_writes_only_the_trials_that_reported(tmp_path):
    path = tmp_path / "trials.parquet"
    t = ResultsTable(path, schema=sweep_schema(FLATS), min_interval_s=3600)
    for i in range(50):
        t.add(row(f"t{i:04d}-xx", 1))
    t.flush()
    for p in path.glob("t*.parquet"):
        os.utime(p, ns=(0, 0))
    t.add(row("t0003-xx", 2))
    t.flush()
    rewritten = sorted(p.name for p in path.glob("t*.parquet") if p.stat().st_mtime_ns != 0)
    assert rewritten == ["t0003-xx.parquet"], rewritten


def test_memory_holds_a_bounded_number_of_trials(tmp_path):
    path = tmp_path / "trials.parquet"
    t = ResultsTable(path, schema=sweep_schema(FLATS), min_interval_s=0)
    n = parquet.HELD_TRIALS + 100
    for i in range(n):
        for e in (1, 2):
            t.add(row(f"t{i:04d}-xx", e))
    assert t.held_trials() <= parquet.HELD_TRIALS
    t.add(row("t0000-xx", 3))  # a trial let go is read back when it reports again
    t.flush()
    assert [r["epoch"] for r in t.trial_rows("t0000-xx")] == [1, 2, 3]
    assert len(pd.read_parquet(path)) == 2 * n + 1


REFUSED = """
import os, resource, signal, sys
from rethink_dist.parquet import ResultsTable
sys.path.insert(0, {tests!r})
from test_results_table import row
t = ResultsTable({path!r})
signal.signal(signal.SIGXFSZ, signal.SIG_IGN)
limit = os.path.getsize({part!r}) + 1024  # the new part, 399 rows, grows past it
resource.setrlimit(resource.RLIMIT_FSIZE, (limit, limit))
try:
    t.replace_trial("t0000-aa", [row("t0000-aa", e, run_name=str(e) * 50) for e in range(1, 400)])
except OSError as e:
    print("refused", e.errno)
"""


def test_a_refused_write_leaves_the_part_before_it(tmp_path):
    path = tmp_path / "trials.parquet"
    t = ResultsTable(path, schema=sweep_schema(FLATS))
    t.add(row("t0000-aa", 1), flush=True)
    code = REFUSED.format(tests=str(REPO / "tests"), path=str(path), part=str(path / "t0000-aa.parquet"))
    p = subprocess.run([sys.executable, "-c", textwrap.dedent(code)], capture_output=True, text=True, timeout=120,
                       env={**os.environ, "PYTHONPATH": str(REPO)})
    assert p.returncode == 0 and "refused 27" in p.stdout, p.stdout + p.stderr  # EFBIG
    df = pd.read_parquet(path)
    assert list(df["epoch"]) == [1], "the refused write changed the table"
    assert sorted(x.name for x in path.iterdir()) == ["_common_metadata", "t0000-aa.parquet"], "a temporary file left"


def test_a_single_file_table_becomes_parts_with_the_same_rows(tmp_path):
    path = tmp_path / "trials.parquet"
    rows = [row("t0000-aa", e) for e in (1, 2)] + [row("t0001-bb", 1, finished=True)]
    pd.DataFrame(rows).to_parquet(path)  # the table as earlier versions wrote it: one file
    t = ResultsTable(path)
    assert path.is_dir() and t.finished("t0001-bb") and t.last_epoch("t0000-aa") == 2
    df = pd.read_parquet(path).sort_values(["trial_id", "epoch"])
    assert len(df) == 3 and list(df["epoch"]) == [1, 2, 1]
    assert not list(tmp_path.glob(".*")), "the conversion left a file behind"


def test_values_that_do_not_fit_their_column_are_an_error_not_a_silent_change(tmp_path):
    t = ResultsTable(tmp_path / "trials.parquet", schema=sweep_schema(FLATS))
    t.add(row("t0000-aa", 1, step=2.0), flush=True)  # an exact float in an int64 column is its integer
    assert pd.read_parquet(tmp_path / "trials.parquet")["step"].tolist() == [2]
    with pytest.raises(ValueError, match="column 'step' is int64"):
        t.add(row("t0000-aa", 2, step=2.5), flush=True)
