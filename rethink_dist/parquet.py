"""The sweep's Parquet table: one row per (trial, epoch), rewritten atomically as results arrive.

Rows are keyed by (trial_id, epoch): a retried or resumed trial overwrites its own rows, never
duplicates them. Columns: docs/results-format.md.
"""

from __future__ import annotations

import contextlib
import os
import time
from pathlib import Path
from typing import Any, Iterator

import pyarrow as pa
import pyarrow.parquet as pq

from rethink_dist.files import atomic_path
from rethink_dist.records import ROW_KEYS, SAMPLE_KEYS

FIRST_COLUMNS = [k for k in ROW_KEYS if k != "finished"]
_LIVE: dict[str, "ResultsTable"] = {}  # resolved path -> the table a running sweep writes


class ResultsTable:
    def __init__(self, path: str | os.PathLike, min_interval_s: float = 2.0):
        self.path = Path(path)
        self.min_interval_s = min_interval_s
        self.rows: dict[tuple[str, int], dict[str, Any]] = {}
        self._last_write = 0.0
        self._dirty = False
        if self.path.exists():
            for row in pq.read_table(self.path).to_pylist():
                self.rows[(row["trial_id"], int(row["epoch"]))] = row

    # Tune pickles its callbacks with the experiment state and unpickles them on --resume: the
    # table travels as its path. Unpickled while a sweep holds the table live (see live()), it is
    # that same table (one set of rows, shared); otherwise it reloads the rows written so far.
    def __getstate__(self) -> dict[str, Any]:
        try:
            self.flush()
        except OSError:  # a full disk: the rows stay pending here (the driver reports it and stops)
            pass
        return {"path": str(self.path), "min_interval_s": self.min_interval_s}

    def __setstate__(self, state: dict[str, Any]) -> None:
        live = _LIVE.get(str(Path(state["path"]).resolve()))
        if live is not None:
            self.__dict__ = live.__dict__  # the same rows and the same pending writes
        else:
            self.__init__(state["path"], state["min_interval_s"])

    @contextlib.contextmanager
    def live(self) -> Iterator["ResultsTable"]:
        """While inside, copies of this table unpickled in this process share its rows: a resumed
        sweep's restored Tune callback and the sweep's own code write one table, not two."""
        key = str(self.path.resolve())
        if key in _LIVE and _LIVE[key] is not self:
            raise RuntimeError(f"another sweep in this process is writing {self.path}")
        _LIVE[key] = self
        try:
            yield self
        finally:
            _LIVE.pop(key, None)  # the owner writes what is pending (and handles a refused write)

    def add(self, row: dict[str, Any], flush: bool = False) -> None:
        """Insert or replace the row of (row['trial_id'], row['epoch']); write if due."""
        self.rows[(row["trial_id"], int(row["epoch"]))] = row
        self._dirty = True
        if flush or time.monotonic() - self._last_write >= self.min_interval_s:
            self.flush()

    def replace_trial(self, trial_id: str, rows: list[dict[str, Any]]) -> None:
        """Make ``rows`` the complete set of rows of ``trial_id`` (reconciliation from a checkpoint)."""
        for key in [k for k in self.rows if k[0] == trial_id]:
            del self.rows[key]
        for row in rows:
            self.rows[(trial_id, int(row["epoch"]))] = row
        self._dirty = True
        self.flush()

    def trial_rows(self, trial_id: str) -> list[dict[str, Any]]:
        return [r for (t, _), r in sorted(self.rows.items()) if t == trial_id]

    def flush(self) -> None:
        if not self._dirty:
            return
        rows = [self.rows[k] for k in sorted(self.rows)]
        self._last_write = time.monotonic()
        if not rows:
            self._dirty = False
            return
        columns: list[str] = [c for c in FIRST_COLUMNS]
        for r in rows:
            for k in r:
                if k not in columns:
                    columns.append(k)
        table = pa.Table.from_pylist([{c: r.get(c) for c in columns} for r in rows])
        # Rows are a valid table at any moment, so the write goes ahead after a Ctrl-C too.
        with atomic_path(self.path, after_interrupt=True) as tmp:
            pq.write_table(table, tmp)
        self._dirty = False  # only once written: a refused write is tried again at the next flush


def read_results(path: str | os.PathLike):
    """The table as a pandas DataFrame."""
    return pq.read_table(path).to_pandas()


def write_sample_records(path: str | os.PathLike, trial_id: str, arrays: dict[str, Any]) -> Path:
    """One trial's per-sample records (records.SAMPLE_KEYS) as a Parquet file, written atomically:
    a pure function of the trial's final checkpoint, so a retry or a resume rewrites the same file."""
    import numpy as np

    first = np.asarray(arrays["first_fit_epoch"], dtype=np.int64)
    table = pa.table({
        "trial_id": pa.array([trial_id] * len(first), pa.string()),
        "sample": pa.array(np.asarray(arrays["sample"], dtype=np.int64)),
        "label_changed": pa.array(np.asarray(arrays["label_changed"], dtype=bool)),
        "first_fit_epoch": pa.array(first, mask=first < 0),  # -1 (not fitted at the end): null
        "forgettings": pa.array(np.asarray(arrays["forgettings"], dtype=np.int64)),
    })
    assert tuple(table.column_names) == SAMPLE_KEYS
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    with atomic_path(path) as tmp:
        pq.write_table(table, tmp)
    return path
