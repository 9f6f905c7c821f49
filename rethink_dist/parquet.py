"""The sweep's Parquet table, ``trials.parquet``: a folder of Parquet parts, one per trial, that any
Parquet reader opens as one table (``pandas.read_parquet``, ``pyarrow.parquet.read_table``, DuckDB).

One row per (trial, epoch). A trial's part, ``trials.parquet/<trial_id>.parquet``, holds the
complete set of that trial's rows: it is written beside and renamed over (a write cut short leaves
the part before it), and replaced whole when the trial reports again or is reconciled from its
checkpoint, so a retried or resumed trial overwrites its own rows, never duplicates them. A flush
writes only the parts of the trials that reported since the last one, so its cost does not grow
with the sweep (``bench/driver.py`` measures it against the single file rewritten whole that this
replaced). Every part has the sweep's one schema (also kept in ``_common_metadata``, the Parquet
convention for a dataset's schema), so a reader that infers the schema from one part sees every
column. The driver holds in memory only the rows of the trials it is writing and a small index of
every trial (its last epoch, finished or not). Columns: docs/results-format.md.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import time
from pathlib import Path
from typing import Any, Iterable, Iterator
from urllib.parse import quote

import pyarrow as pa
import pyarrow.parquet as pq

from rethink_dist.files import atomic_path
from rethink_dist.records import COLUMN_TYPES, RECORD_KEYS, ROW_KEYS, SAMPLE_KEYS

FIRST_COLUMNS = [k for k in ROW_KEYS if k != "finished"]
SCHEMA_FILE = "_common_metadata"  # the sweep's schema, beside the parts (readers skip names starting with _ or .)
HELD_TRIALS = 256  # trials whose written rows stay in memory (most recently reported first); the rest are read back
_TYPES = {"string": pa.string(), "int64": pa.int64(), "double": pa.float64(), "bool": pa.bool_()}
_LIVE: dict[str, "ResultsTable"] = {}  # resolved path -> the table a running sweep writes


def sweep_schema(flats: Iterable[dict[str, Any]]) -> pa.Schema:
    """The table's schema for a sweep whose trials have these flat configs: the row keys and every
    record key with their declared types (records.COLUMN_TYPES), then the config columns, each typed
    from the values the sweep's trials give it (a column whose values mix kinds holds their JSON)."""
    names = FIRST_COLUMNS + [k for k in RECORD_KEYS if k not in FIRST_COLUMNS] + ["finished"]
    fields = [pa.field(k, _TYPES[COLUMN_TYPES[k]]) for k in names]
    values: dict[str, list[Any]] = {}
    for flat in flats:
        for k, v in flat.items():
            values.setdefault(k, []).append(v)
    fields += [pa.field(k, _infer(vs)) for k, vs in values.items() if k not in COLUMN_TYPES]
    return pa.schema(fields)


def _infer(values: list[Any]) -> pa.DataType:
    try:
        return pa.array(values).type
    except (pa.ArrowException, TypeError, ValueError, OverflowError):
        return pa.string()  # mixed kinds of value (a number here, a word there): their JSON text


def _column(name: str, values: list[Any], type_: pa.DataType) -> pa.Array:
    """``values`` as a column of ``type_``: ints and floats converted where exact, anything in a
    string column that is not a string as its JSON; a value that does not fit is an error."""
    if pa.types.is_integer(type_) and any(isinstance(v, float) and not v.is_integer() for v in values):
        # pyarrow would truncate such a value without a word
        bad = [v for v in values if isinstance(v, float) and not v.is_integer()]
        raise ValueError(f"trials.parquet: column {name!r} is {type_}, and {bad[:3]} do not fit it")
    try:
        return pa.array(values, type=type_)
    except (pa.ArrowException, TypeError, ValueError, OverflowError):
        pass
    if pa.types.is_string(type_):
        return pa.array([v if v is None or isinstance(v, str) else json.dumps(v, default=str) for v in values], type_)
    try:
        return pa.array(values).cast(type_)  # safe casts only: 3.0 -> 3, 2 -> 2.0
    except (pa.ArrowException, TypeError, ValueError, OverflowError) as e:
        raise ValueError(f"trials.parquet: column {name!r} is {type_}, and {values[:3]} do not fit it ({e})") from None


def _read_schema(folder: Path) -> pa.Schema | None:
    try:
        return pq.read_schema(folder / SCHEMA_FILE)
    except (OSError, pa.ArrowException):
        return None


def _write_schema(folder: Path, schema: pa.Schema) -> None:
    with atomic_path(folder / SCHEMA_FILE, after_interrupt=True) as tmp:
        pq.write_metadata(schema, tmp)


def _parts(folder: Path) -> list[Path]:
    return sorted(p for p in folder.glob("*.parquet") if not p.name.startswith((".", "_")))


class ResultsTable:
    """The rows of a sweep, written to ``path`` (the ``trials.parquet`` folder) as they arrive.

    ``schema``: the sweep's (:func:`sweep_schema`); without it, the one stored in the folder, or one
    inferred from the first rows. A single-file table of an earlier version found at ``path`` is
    turned into the folder form first, with the same rows."""

    def __init__(self, path: str | os.PathLike, schema: pa.Schema | None = None, min_interval_s: float = 2.0):
        self.path = Path(path)
        self.min_interval_s = min_interval_s
        self._held: dict[str, dict[int, dict[str, Any]]] = {}  # trial -> epoch -> row, most recent last
        self._dirty: set[str] = set()  # held trials whose part is behind their rows
        self._index: dict[str, tuple[int, bool]] = {}  # every trial with rows -> (last epoch, finished)
        self._last_write = 0.0
        self._convert_single_file()
        # The folder appears with its first part (see _write_part): a reader of a sweep that has not
        # reported yet finds no table, as before, rather than an empty one without columns.
        for tmp in self.path.glob(".*.tmp*"):  # a write cut short by a killed driver (one driver: the lease)
            if not tmp.name.endswith(f".tmp{os.getpid()}"):
                tmp.unlink(missing_ok=True)
        for old in self.path.parent.glob(f".{self.path.name}.new*"):  # a first write cut short
            shutil.rmtree(old, ignore_errors=True)
        self.schema = _read_schema(self.path)
        self._names = set(self.schema.names) if self.schema is not None else set()
        if schema is not None:
            self._widen(schema)
        self._load_index()

    # Tune pickles its callbacks with the experiment state and unpickles them on --resume: the
    # table travels as its path. Unpickled while a sweep holds the table live (see live()), it is
    # that same table (one set of rows, shared); otherwise it reads the folder again.
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
            self.__init__(state["path"], min_interval_s=state["min_interval_s"])

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

    # ------------------------------------------------------------------ what the table knows
    def trial_ids(self) -> list[str]:
        """The trials that have rows."""
        return sorted(self._index)

    def has_rows(self, trial_id: str) -> bool:
        return trial_id in self._index

    def finished(self, trial_id: str) -> bool:
        """Whether the trial's last row says it trained to its end."""
        return self._index.get(trial_id, (0, False))[1]

    def last_epoch(self, trial_id: str) -> int:
        return self._index.get(trial_id, (0, False))[0]

    def held_trials(self) -> int:
        """How many trials' rows are in memory now (at most HELD_TRIALS once written)."""
        return len(self._held)

    def trial_rows(self, trial_id: str) -> list[dict[str, Any]]:
        """The trial's rows in epoch order (from memory, or read from its part)."""
        held = self._held.get(trial_id)
        if held is None:
            return self._read_part(trial_id)
        return [held[e] for e in sorted(held)]

    def last_rows(self) -> dict[str, dict[str, Any]]:
        """Every trial's last row, by trial: the written parts streamed a batch at a time (memory stays
        small), the rows held in memory over them (nothing is written: the storage may be refusing)."""
        import numpy as np
        import pyarrow.dataset as ds

        out: dict[str, dict[str, Any]] = {}
        parts = [str(p) for p in _parts(self.path)] if self.path.is_dir() else []
        for batch in [] if not parts else ds.dataset(parts, schema=self.schema, format="parquet").to_batches():
            tids = batch.column("trial_id").to_pylist()
            last = np.array([self._index.get(t, (-1, False))[0] for t in tids], dtype=np.int64)
            keep = batch.column("epoch").to_numpy(zero_copy_only=False) == last
            for row in batch.filter(pa.array(keep)).to_pylist():
                out[row["trial_id"]] = row
        for tid, held in self._held.items():
            if held:
                out[tid] = held[max(held)]
        return out

    # ------------------------------------------------------------------ writing
    def add(self, row: dict[str, Any], flush: bool = False) -> None:
        """Insert or replace the row of (row['trial_id'], row['epoch']); write if due."""
        tid = row["trial_id"]
        rows = self._hold(tid)
        rows[int(row["epoch"])] = row
        self._changed(tid)
        if flush or time.monotonic() - self._last_write >= self.min_interval_s:
            self.flush()

    def replace_trial(self, trial_id: str, rows: list[dict[str, Any]]) -> None:
        """Make ``rows`` the complete set of rows of ``trial_id`` (reconciliation from a checkpoint),
        and write its part now."""
        self._held.pop(trial_id, None)
        self._held[trial_id] = {int(r["epoch"]): r for r in rows}
        self._changed(trial_id)
        self.flush()

    def flush(self) -> None:
        """Write the part of every trial whose rows changed since its last write."""
        self._last_write = time.monotonic()
        for tid in sorted(self._dirty):
            held = self._held[tid]
            self._write_part(tid, [held[e] for e in sorted(held)])
            self._dirty.discard(tid)  # only once written: a refused write is tried again at the next flush
        extra = len(self._held) - HELD_TRIALS
        if extra > 0:  # the least recently reported trials that are written
            for tid in [t for t in self._held if t not in self._dirty][:extra]:
                del self._held[tid]

    def _hold(self, tid: str) -> dict[int, dict[str, Any]]:
        rows = self._held.pop(tid, None)
        if rows is None:
            rows = {int(r["epoch"]): r for r in self._read_part(tid)}
        self._held[tid] = rows  # last: the most recently reported
        return rows

    def _changed(self, tid: str) -> None:
        rows = self._held[tid]
        self._dirty.add(tid)
        if rows:
            last = max(rows)
            self._index[tid] = (last, bool(rows[last].get("finished")))
        else:
            self._index.pop(tid, None)

    def _part(self, tid: str) -> Path:
        return self.path / f"{quote(tid, safe='')}.parquet"

    def _read_part(self, tid: str) -> list[dict[str, Any]]:
        path = self._part(tid)
        if not path.is_file():
            return []
        rows = pq.read_table(path).to_pylist()
        return sorted(rows, key=lambda r: int(r["epoch"]))

    def _write_part(self, tid: str, rows: list[dict[str, Any]]) -> None:
        path = self._part(tid)
        if not rows:
            path.unlink(missing_ok=True)
            return
        new = [k for r in rows for k in r.keys() - self._names]
        if new:
            self._widen(pa.schema([pa.field(k, _infer([r.get(k) for r in rows])) for k in dict.fromkeys(new)]))
        table = pa.Table.from_arrays([_column(f.name, [r.get(f.name) for r in rows], f.type) for f in self.schema],
                                     schema=self.schema)
        if not self.path.is_dir():  # the first part: the folder is made beside, with it and the schema, then renamed
            first = self.path.with_name(f".{self.path.name}.new{os.getpid()}")
            first.mkdir(parents=True, exist_ok=True)
            try:
                pq.write_table(table, first / path.name)
                pq.write_metadata(self.schema, first / SCHEMA_FILE)
                os.replace(first, self.path)
            finally:
                shutil.rmtree(first, ignore_errors=True)
            return
        # A part is valid at any moment, so the write goes ahead after a Ctrl-C too.
        with atomic_path(path, after_interrupt=True) as tmp:
            pq.write_table(table, tmp)

    def _widen(self, schema: pa.Schema) -> None:
        """Add ``schema``'s columns that the table lacks (a column it has keeps its type). Parts
        written before get the new columns too (null), so that every part keeps one schema: this
        rewrites them, once (the driver gives the whole sweep's schema up front, so it does not)."""
        old = self.schema
        fields = list(old) if old is not None else []
        have = {f.name for f in fields}
        fields += [f for f in schema if f.name not in have]
        merged = pa.schema(fields)
        if old is not None and merged.equals(old):
            return
        self.schema, self._names = merged, set(merged.names)
        if not self.path.is_dir():
            return  # nothing written yet: the first part brings the schema
        for part in (_parts(self.path) if old is not None else []):
            table = pq.read_table(part)
            rows = table.to_pylist()
            widened = pa.Table.from_arrays([_column(f.name, [r.get(f.name) for r in rows], f.type) for f in merged],
                                           schema=merged)
            with atomic_path(part, after_interrupt=True) as tmp:
                pq.write_table(widened, tmp)
        _write_schema(self.path, merged)

    def _load_index(self) -> None:
        if self.path.is_dir() and _parts(self.path):
            self._index = trial_index(self.path)

    def _convert_single_file(self) -> None:
        """A table of an earlier version was one file at ``path``: its rows become parts (in a folder
        made beside, swapped in by two renames; a stop between them is finished at the next open)."""
        single = self.path.with_name(f".{self.path.name}.single")
        if self.path.is_dir() or (not self.path.exists() and not single.is_file()):
            if single.is_file() and self.path.is_dir():
                single.unlink()  # the swap was done; only the removal was left
            return
        source = self.path if self.path.is_file() else single
        table = pq.read_table(source)
        building = self.path.with_name(f".{self.path.name}.parts{os.getpid()}")
        building.mkdir(parents=True, exist_ok=True)
        rows = table.to_pylist()
        by_trial: dict[str, list[dict[str, Any]]] = {}
        for r in rows:
            by_trial.setdefault(r["trial_id"], []).append(r)
        scratch = ResultsTable.__new__(ResultsTable)
        scratch.path, scratch.schema, scratch._names = building, None, set()
        scratch._widen(sweep_schema([]))
        scratch._widen(table.schema)
        for tid, trial_rows in by_trial.items():
            scratch._write_part(tid, sorted(trial_rows, key=lambda r: int(r["epoch"])))
        if source == self.path:
            os.replace(self.path, single)
        os.replace(building, self.path)
        single.unlink()


def read_table(path: str | os.PathLike, columns: list[str] | None = None) -> pa.Table:
    """The sweep's table (a ``trials.parquet`` folder, or a single Parquet file) as one Arrow table,
    with the schema the folder declares (parts of another shape are read into it)."""
    import pyarrow.dataset as ds

    p = Path(path)
    if not p.is_dir():
        return pq.read_table(p, columns=columns)
    parts = [str(x) for x in _parts(p)]
    schema = _read_schema(p)
    if schema is None and parts:
        schema = pa.unify_schemas([pq.read_schema(x) for x in parts], promote_options="permissive")
    if schema is None:
        return pa.table({})
    return ds.dataset(parts, schema=schema, format="parquet").to_table(columns=columns)


def trial_index(path: str | os.PathLike) -> dict[str, tuple[int, bool]]:
    """Each trial of a table (folder or file) -> (its last epoch, whether that row says finished),
    from three columns of the table."""
    import numpy as np

    keys = read_table(path, columns=["trial_id", "epoch", "finished"])
    if keys.num_rows == 0:
        return {}
    tids = np.asarray(keys["trial_id"].to_pylist(), dtype=object)
    epochs = keys["epoch"].to_numpy()
    done = keys["finished"].fill_null(False).to_numpy(zero_copy_only=False)
    order = np.lexsort((epochs, tids))  # by trial, then epoch: each trial's last row ends its run
    tids, epochs, done = tids[order], epochs[order], done[order]
    ends = np.flatnonzero(np.append(tids[1:] != tids[:-1], True))
    return {str(tids[i]): (int(epochs[i]), bool(done[i])) for i in ends}


def read_results(path: str | os.PathLike):
    """The table as a pandas DataFrame."""
    return read_table(path).to_pandas()


def write_sample_records(path: str | os.PathLike, trial_id: str, arrays: dict[str, Any]) -> Path:
    """One trial's per-sample records (records.SAMPLE_KEYS) as a Parquet file, written atomically:
    a pure function of the trial's final checkpoint, so a retry or a resume rewrites the same file.

    A row per training sample (``split`` "train"), then, when the arrays have the test outcomes
    (``test_correct``), a row per test sample (``split`` "test"; the columns that describe training
    are null there). Arrays of an earlier version lack ``in_subset`` (every sample was trained on)."""
    import numpy as np

    first = np.asarray(arrays["first_fit_epoch"], dtype=np.int64)
    n = len(first)
    in_subset = np.asarray(arrays["in_subset"], dtype=bool) if "in_subset" in arrays else np.ones(n, bool)
    test = np.asarray(arrays["test_correct"], dtype=bool) if "test_correct" in arrays else np.zeros(0, bool)
    m = len(test)
    null_test = np.ones(m, bool)
    table = pa.table({
        "trial_id": pa.array([trial_id] * (n + m), pa.string()),
        "split": pa.array(["train"] * n + ["test"] * m, pa.string()),
        "sample": pa.array(np.concatenate([np.asarray(arrays["sample"], dtype=np.int64), np.arange(m, dtype=np.int64)])),
        "label_changed": pa.array(np.concatenate([np.asarray(arrays["label_changed"], dtype=bool), np.zeros(m, bool)]),
                                  mask=np.concatenate([np.zeros(n, bool), null_test])),
        "in_subset": pa.array(np.concatenate([in_subset, np.zeros(m, bool)])),
        "correct": pa.array(np.concatenate([first >= 0, test])),
        # -1 (not fitted at the end): null
        "first_fit_epoch": pa.array(np.concatenate([first, np.full(m, -1, np.int64)]),
                                    mask=np.concatenate([first < 0, null_test])),
        "forgettings": pa.array(np.concatenate([np.asarray(arrays["forgettings"], dtype=np.int64), np.zeros(m, np.int64)]),
                                mask=np.concatenate([np.zeros(n, bool), null_test])),
    })
    assert tuple(table.column_names) == SAMPLE_KEYS
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    with atomic_path(path) as tmp:
        pq.write_table(table, tmp)
    return path
