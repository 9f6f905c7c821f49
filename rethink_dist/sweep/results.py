"""The driver's writer: every report Tune hands the driver becomes Parquet rows and MLflow metrics here.

:class:`ResultsWriter` is a Tune callback (:meth:`ResultsWriter.as_tune_callback`). Each reported
epoch goes to the Parquet table and to the trial's MLflow child run as it arrives; when a trial
ends (or the sweep stops) :meth:`ResultsWriter.reconcile` rewrites its rows from its checkpoint's
history, so nothing is lost and nothing doubled. An MLflow outage pauses the MLflow side (the
trials go on; the runs are back-filled from the checkpoints once it answers); a storage that
refuses writes stops the sweep in one line (:meth:`ResultsWriter.stop_for_storage`); a trial
process that ends early is a line of faults.jsonl (:data:`FAULTS_FILE`). The driver
(:mod:`rethink_dist.sweep.driver`) uses :meth:`live`, :meth:`write_table`, :meth:`reconcile`,
:meth:`retry_mlflow_now`, :meth:`drain` and :meth:`close_sweep`.

The MLflow calls run, in the order they were asked for, on one thread of their own
(:class:`MlflowLane`): Tune's event loop, which every trial's report waits on, does not wait for the
MLflow store (a call takes tens of milliseconds on SQLite, more on a busy server, and a sweep makes a
few per trial). The loop never waits for the lane either: what waits in it is bounded by the epochs
its calls carry (:data:`MlflowLane.LIMIT`). When MLflow falls that far behind, a report's live
epochs are not queued (its run gets them when the trial ends, from the checkpoint), and a closing
trial's call carries its checkpoint, read again in the lane, instead of its history. :meth:`drain`
waits for the lane; the sweep drains it before its end. A driver killed with calls in the lane loses
only MLflow copies: the rows are in Parquet and the checkpoints, and ``--resume`` back-fills the runs.
"""

from __future__ import annotations

import contextlib
import functools
import json
import os
import queue
import signal
import sys
import threading
import time
from pathlib import Path
from typing import Any

from rethink_dist.errors import SweepError
from rethink_dist.files import STORAGE_WORDS, storage_error
from rethink_dist.parquet import ResultsTable, write_sample_records
from rethink_dist.records import (HISTORY_FILE, LAST_ERROR, META_FILE, PLACEMENT_KEYS, RECORD_KEYS, SAMPLES_DIR,
                                  SAMPLES_FILE, finite_numbers, summarize)
from rethink_dist.sweep.plan import KINDS
from rethink_dist.sweep.space import SpaceWatch
from rethink_dist.sweep.worker import read_progress
from rethink_dist.tracking import TrialRun, finish_run, finished_trial_runs, trial_runs

FAULTS_FILE = "faults.jsonl"  # in the results folder: one line per trial process that ended early

# Words of a trial's error that say its process or node went away (rather than its code failing).
NODE_LOST_WORDS = ("NodeDiedError", "node has died", "node died", "ActorDiedError", "ActorUnavailableError",
                   "WorkerCrashedError", "RayActorError", "unexpectedly")

_LIVE: dict[str, "ResultsWriter"] = {}  # the writer of a running sweep, by its key (see live())

# The record keys Tune's live table shows, with their headers (driver.py's reporter); Tune keeps each trial's last result
# and its kept checkpoints' results in its experiment state, snapshotted with every trial's: once the
# writer and Tune's logs have a report, the epochs it carries, the trial's facts and the other
# record keys are dropped from Tune's copies (slim_tune_state), so that the snapshot stays small
# (bench/driver.py measures it; docs/sweeps.md).
TUNE_TABLE = {"epoch": "epoch", "train_acc": "train acc", "test_acc": "test acc", "steps_to_fit": "fitted at step",
              "images_per_s": "img/s"}
# (The copy of the trial's config that Tune adds to every result stays: Tune's result grid takes a
# trial's config from its last result.)
_NOT_FOR_TUNE = ("records", "meta") + tuple(k for k in RECORD_KEYS if k not in TUNE_TABLE)


class MlflowLane:
    """One thread that runs the writer's MLflow calls in order, off Tune's event loop.

    ``submit`` never waits. What waits in the lane is counted by weight: a call weighs 1 plus the
    epochs it carries (a report's epochs, a closing trial's history). A call marked ``droppable`` (a
    report's live epochs, which the trial's end writes again from its checkpoint) is not queued
    while the lane is over LIMIT; the others always are, and carry little when it is (see
    :meth:`has_room`). So the memory held for a slow MLflow stays bounded (about LIMIT epochs, a few
    KB each, plus a small call per trial) at any sweep size, and Tune's loop never waits for MLflow."""

    LIMIT = 10_000  # epochs (and calls) waiting, beyond which live epochs wait for the trial's end
    LIMIT_ENV = "RETHINK_MLFLOW_LANE_EPOCHS"  # sets the limit for a sweep (limit_from_env)
    SAY_AFTER_S = 5.0  # drain(): a line when waiting for MLflow takes longer

    def __init__(self, limit: int | None = None) -> None:
        self.limit = limit or self.LIMIT
        self.calls: queue.Queue = queue.Queue()
        self.thread: threading.Thread | None = None
        self.lock = threading.Lock()
        self.weight = 0  # what waits in the lane now (calls + their epochs)
        self.heaviest = 0  # the most that waited at once (bench/driver.py reports it)
        self.dropped = 0  # live reports left to their trial's end while the lane was full
        self.busy_s = 0.0  # time spent in calls (bench/driver.py reports it)
        self.cpu_s = 0.0  # this thread's CPU time in them
        self.longest = 0  # the most calls that were waiting at once
        self.said_full = False

    @classmethod
    def limit_from_env(cls) -> int:
        """$RETHINK_MLFLOW_LANE_EPOCHS, else LIMIT; a value that is not a whole number > 0 is refused."""
        text = os.environ.get(cls.LIMIT_ENV)
        if text is None:
            return cls.LIMIT
        try:
            value = int(text)
        except ValueError:
            value = 0
        if value <= 0:
            raise SweepError(f"${cls.LIMIT_ENV} must be a whole number of epochs > 0, got {text!r}")
        return value

    def has_room(self, weight: int) -> bool:
        """Whether ``weight`` more fits under the limit now."""
        return self.weight + weight <= self.limit

    def submit(self, call, weight: int = 1, droppable: bool = False) -> bool:
        """Queue ``call``; False (and not queued) when it is droppable and the lane is full."""
        with self.lock:
            if self.thread is None or not self.thread.is_alive():
                self.thread = threading.Thread(target=self._serve, name="rethink-mlflow", daemon=True)
                self.thread.start()
            if droppable and not self.has_room(weight):
                self.dropped += 1
                if not self.said_full:
                    self.said_full = True
                    print(f"rethink-dist: MLflow is behind ({self.calls.qsize()} writes, {self.weight} epochs "
                          "waiting); the trials' runs get their epochs when each trial ends", file=sys.stderr,
                          flush=True)
                return False
            self.weight += weight
            self.heaviest = max(self.heaviest, self.weight)
        self.calls.put((call, weight))
        self.longest = max(self.longest, self.calls.qsize())
        return True

    def _serve(self) -> None:
        while True:
            call, weight = self.calls.get()
            t, cpu = time.perf_counter(), time.thread_time()
            try:
                call()
            except BaseException as e:  # a call's own failures are handled inside it; this is a bug's
                print(f"rethink-dist: warning: an MLflow write failed unexpectedly ({type(e).__name__}: {e})",
                      file=sys.stderr, flush=True)
            finally:
                self.busy_s += time.perf_counter() - t
                self.cpu_s += time.thread_time() - cpu
                with self.lock:
                    self.weight -= weight
                self.calls.task_done()

    def drain(self) -> None:
        """Wait until every call asked for so far has run."""
        if self.thread is None:
            return
        waiting, t = self.calls.qsize(), time.monotonic()
        said = False
        while True:
            with self.calls.all_tasks_done:
                if not self.calls.unfinished_tasks:
                    return
                self.calls.all_tasks_done.wait(timeout=1.0)
            if not said and time.monotonic() - t > self.SAY_AFTER_S:
                said = True
                print(f"rethink-dist: waiting for MLflow to take the last of {waiting} writes "
                      f"({self.calls.qsize()} left)", file=sys.stderr, flush=True)


class ResultsWriter:
    """Driver side: each reported epoch goes into the Parquet table (``table``, if any) and the trial's
    MLflow run (``tracking``, if any) as it arrives; a trial's end rewrites both from its checkpoint."""

    def __init__(self, table: ResultsTable | None, tracking: dict[str, Any] | None, sweep: str,
                 specs: dict[str, dict[str, Any]], flats: dict[str, dict[str, Any]]):
        self.table, self.tracking, self.sweep, self.specs, self.flats = table, tracking, sweep, specs, flats
        self.key = str(table.path.resolve()) if table is not None else None
        self.runs: dict[str, TrialRun] = {}  # the open MLflow runs (a closed one is let go)
        self.known: dict[str, str] | None = None  # the experiment's trial runs (trial id -> run id), asked once
        self.last: dict[str, dict[str, Any]] = {}  # each trial's last reported result (a closed one: its gist)
        self.closed: set[str] = set()  # trials whose MLflow run has its final status
        self.reconciled: dict[str, tuple[bool, str]] = {}  # trial -> (finished, status) it was last reconciled with
        self.down_since: float | None = None  # when MLflow stopped answering (None: it answers)
        self.watch: SpaceWatch | None = None  # set by run_sweep for local storage
        self.storage_full: str | None = None  # the line that stopped the sweep for want of space
        self.lane = MlflowLane(MlflowLane.limit_from_env())  # where every MLflow call runs
        self.closing: set[str] = set()  # trials whose run's closing is in the lane

    # Tune pickles its callbacks with the experiment state (every few seconds) and unpickles them on
    # --resume. Unpickled while this sweep's writer is live, the copy is that writer (one state: its
    # MLflow runs, what they have logged); otherwise a fresh writer of the same sweep. A sweep's
    # writer travels without its trials (they are in sweep.json beside the table), so that Tune's
    # snapshot does not grow with them.
    def __getstate__(self) -> dict[str, Any]:
        self.flush()
        specs, flats = (None, None) if self.table is not None else (self.specs, self.flats)
        return {"args": (self.table, self.tracking, self.sweep, specs, flats), "key": self.key}

    def __setstate__(self, state: dict[str, Any]) -> None:
        live = _LIVE.get(state["key"]) if state["key"] else None
        if live is not None:
            self.__dict__ = live.__dict__
            return
        table, tracking, sweep, specs, flats = state["args"]
        if specs is None:
            plan = json.loads((table.path.parent / "sweep.json").read_text())
            specs = {t["trial_id"]: {k: t[k] for k in ("trial_id", "kind", "run_name", "config")} for t in plan["trials"]}
            flats = {t["trial_id"]: t["flat"] for t in plan["trials"]}
        self.__init__(table, tracking, sweep, specs, flats)

    def live(self):
        """While inside, copies of this writer unpickled in this process share its state."""
        import contextlib

        @contextlib.contextmanager
        def scope():
            if self.key is not None:
                _LIVE[self.key] = self
            try:
                yield self
            finally:
                self.flush()
                self.drain()
                if self.key is not None:
                    _LIVE.pop(self.key, None)

        return scope()

    # ------------------------------------------------------------------ MLflow
    def _run(self, tid: str) -> TrialRun | None:
        if self.tracking is None:
            return None
        if tid not in self.runs:
            t = self.tracking
            if self.known is None:
                self.known = trial_runs(t["tracking_uri"], t["experiment_id"])
            run = TrialRun(t["tracking_uri"], t["experiment_id"], tid, self.specs[tid]["run_name"],
                           t.get("parent_run_id"), t.get("sweep", ""), known=self.known)
            run.log_params(self.flats[tid])
            self.runs[tid] = run
        return self.runs[tid]

    def flush(self) -> None:
        """Send the open runs' buffered epochs (in the lane, after what is already there)."""
        self._mlflow("sending epochs", self._flush_runs)

    def _flush_runs(self) -> None:
        for run in list(self.runs.values()):
            run.flush()

    def drain(self) -> None:
        """Wait for every MLflow write asked for so far."""
        self.lane.drain()

    RETRY_SECONDS = 60.0  # after an MLflow failure, try again at most this often (at a trial's end)

    def _mlflow(self, what: str, fn, *args, then=None, retry: bool = False, droppable: bool = False,
                **kwargs) -> None:
        """One MLflow step, run in the lane; then ``then(result)``, there too (``then(None)`` when MLflow
        failed or is down). When it fails, say so once and go on without MLflow: the trials keep
        training, their rows still reach Parquet, and their runs are back-filled from the checkpoints
        when MLflow answers again (a trial's end (``retry``), the sweep's end, or ``--resume``)."""
        if self.tracking is None:
            return

        def call() -> None:
            if retry:
                self._maybe_retry_mlflow()
            if self.down_since is not None:
                if then is not None:
                    then(None)
                return
            try:
                out = fn(*args, **kwargs)
            except Exception as e:
                self.down_since = time.monotonic()
                msg = str(e).splitlines()[0] if str(e) else type(e).__name__
                print(f"rethink-dist: warning: MLflow at {self.tracking['tracking_uri']} failed ({what}: {msg}); "
                      "the trials keep training and their rows still go to trials.parquet; their MLflow runs will "
                      "be back-filled from the checkpoints when it answers again (at a trial's end, the sweep's "
                      "end, or with --resume)", file=sys.stderr, flush=True)
                out = None
            if then is not None:
                then(out)

        # Its weight: the epochs it carries (a report's records, a trial's history or rows).
        self.lane.submit(call, 1 + sum(len(a) for a in args if isinstance(a, list)), droppable=droppable)

    def retry_mlflow_now(self) -> None:
        """Try MLflow again (after an outage) from the next step in the lane."""
        self.lane.submit(self._mark_up)

    def _mark_up(self) -> None:
        self.down_since = None

    def _maybe_retry_mlflow(self) -> None:
        if self.down_since is not None and time.monotonic() - self.down_since >= self.RETRY_SECONDS:
            self.down_since = None

    # ------------------------------------------------------------------ the storage
    def stop_for_storage(self, line: str) -> None:
        """Say once that the storage refuses writes, and stop the sweep as on Ctrl-C: Tune starts no
        new trial, what was reported lands; ``--resume`` continues once there is room."""
        if self.storage_full is not None:
            return
        self.storage_full = line
        print(f"rethink-dist: {line}; stopping the sweep (what was recorded is kept: free some space or make it "
              "writable, then continue with --resume)", file=sys.stderr, flush=True)
        import signal

        os.kill(os.getpid(), signal.SIGUSR1)  # Tune's own graceful stop (its handler, while fit() runs)

    def _check_storage(self) -> None:
        line = self.watch.short() if self.watch is not None and self.storage_full is None else None
        if line:
            self.stop_for_storage(line)

    def write_table(self, fn, *args, path: Path | None = None) -> None:
        """A write of the Parquet table (or of a trial's ``path``); a storage that refuses it stops the
        sweep (the rows stay in memory and in the trials' checkpoints: the next flush, or --resume,
        writes them)."""
        try:
            fn(*args)
        except OSError as e:
            if not storage_error(e):
                raise
            self.stop_for_storage(f"writing {str(path or self.table.path)!r} failed ({e.strerror or e})")

    # ------------------------------------------------------------------ Tune's events
    def on_trial_result(self, iteration, trials, trial, result, **info):
        tid = trial.config.get("spec", {}).get("trial_id")  # result["trial_id"] is Tune's own id
        if tid not in self.specs:
            return
        self._check_storage()
        # A report carries one epoch or several; a diverged trial's last report, none.
        records = [] if result.get("diverged") else result.get("records") or [result]
        self.last[tid] = dict(records[-1] if records else result)
        if self.table is not None:
            for epoch in records:
                record = {k: epoch[k] for k in RECORD_KEYS if k in epoch}
                record["finished"] = False
                self.write_table(self.table.add, self._row(tid, record))
        # Copies: the lane runs later, and Tune's copy of the report is slimmed in place meanwhile.
        # Left out when MLflow is far behind: the trial's end logs every epoch its run lacks.
        self._mlflow("logging epochs", self._log_result, tid, result.get("meta"), result.get("diverged"),
                     [dict(epoch) for epoch in records], droppable=True)

    def _log_result(self, tid: str, meta: dict[str, Any] | None, diverged: str | None,
                    records: list[dict[str, Any]]) -> None:
        run = self._run(tid)
        if run is None:
            return
        if meta:
            run.log_meta(meta)
        if diverged:
            run.set_tags({LAST_ERROR: diverged})
        for epoch in records:
            run.log_epoch(epoch)  # its checkpoint is on the storage (Tune registers it once its save task returns)

    def on_trial_complete(self, iteration, trials, trial, **info):
        self.reconcile(trial.config.get("spec", {}).get("trial_id"), trial.checkpoint, finished=True)

    def on_trial_recover(self, iteration, trials, trial, **info):
        self._error(trial, final=False)

    def on_trial_error(self, iteration, trials, trial, **info):
        self._error(trial, final=True)

    def _error(self, trial, final: bool) -> None:
        tid = trial.config.get("spec", {}).get("trial_id")
        if tid not in self.specs:
            return
        try:
            error = str(trial.get_error() or "")
        except Exception:  # the error file may be unreadable; the tag says so
            error = "(the trial's error text could not be read)"
        if not error.strip():  # kept in the storage, which may be the thing that fails: Tune's local copy
            with contextlib.suppress(Exception):
                error = Path(trial.error_file).read_text()
        if storage_error(error):
            where = f" to {str(self.watch.folders[-1])!r}" if self.watch is not None else ""
            self.stop_for_storage(f"trial {tid} could not write its checkpoint{where} "
                                  f"({next(w for w in STORAGE_WORDS if w in error)})")
        self._mlflow("tagging a failed trial", self._tag_error, tid, error[-4000:] or "unknown error")
        self._record_fault(trial, tid, error, final)
        if final:
            self.reconcile(tid, trial.checkpoint, finished=False, status="FAILED")

    def _record_fault(self, trial, tid: str, error: str, final: bool) -> None:
        """A trial's process ended before the trial: what it was (preempted with notice, its node lost,
        its own error) and how many finished epochs it must train again (those after its last
        checkpoint: every report carries one), as a line of faults.jsonl and of the console."""
        last = self.last.get(tid) or {}
        # The checkpoint Tune restores the trial from: the last one Tune registered. A report reaches
        # this writer before Tune's save task for its checkpoint returns; when the node dies between
        # the two, Tune goes back to the checkpoint before, and the epochs after it are trained again.
        checkpoint = registered_checkpoint_epoch(trial)
        reached = read_progress(trial.trial_id)
        kind = ("preempted" if "NodePreempted" in error else
                "node lost" if any(w in error for w in NODE_LOST_WORDS) else "error")
        fault = {"time": time.time(), "trial_id": tid, "kind": kind, "node_id": last.get("node_id"),
                 "checkpoint_epoch": checkpoint, "reached_epoch": reached,
                 "retrained_epochs": None if reached is None else max(0, reached - checkpoint), "final": final}
        again = "" if fault["retrained_epochs"] is None else f", {fault['retrained_epochs']} finished epochs to train again"
        then = "it has no retry left" if final else f"it continues from its checkpoint at epoch {checkpoint}"
        print(f"rethink-dist: trial {tid}: {kind} (node {fault['node_id'] or '?'}, reached epoch "
              f"{reached if reached is not None else '?'}{again}); {then}", file=sys.stderr, flush=True)
        if self.table is not None:
            path = self.table.path.parent / FAULTS_FILE
            self.write_table(_append_line, path, json.dumps(fault), path=path)

    def _tag_error(self, tid: str, error: str) -> None:
        run = self._run(tid)
        if run is not None:
            run.flush()
            run.set_tags({LAST_ERROR: error})

    def reconcile(self, tid: str | None, checkpoint, finished: bool, status: str = "FINISHED") -> None:
        """Rewrite a trial's rows from its checkpoint's history (nothing lost, nothing doubled), give
        its MLflow run every epoch it lacks, and, once, its summary and final status."""
        if tid not in self.specs:
            return
        if self.reconciled.get(tid) == (finished, status) and (self.tracking is None or tid in self.closed
                                                               or tid in self.closing):
            return  # done already, from the same final checkpoint (its end, then the sweep's tally)
        self.reconciled[tid] = (finished, status)
        finished = finished and not self.last.get(tid, {}).get("diverged")
        rows = self.table.trial_rows(tid) if self.table is not None else []
        history = _read_history(checkpoint, tid)
        if history is not None:
            known = {int(r["epoch"]): r for r in rows}
            rows = []
            for rec in history:
                kept = {k: v for k, v in known.get(int(rec["epoch"]), {}).items() if k in PLACEMENT_KEYS}
                rows.append(self._row(tid, {**{k: v for k, v in rec.items() if k in RECORD_KEYS}, **kept}))
        if rows and self.table is not None:
            for r in rows:
                r["finished"] = False
            rows[-1]["finished"] = finished
            self.write_table(self.table.replace_trial, tid, rows)
            samples = read_checkpoint_samples(checkpoint, tid) if history is not None else None
            if samples is not None:  # sample_records: samples/<trial_id>.parquet beside trials.parquet
                path = self.table.path.parent / SAMPLES_DIR / f"{tid}.parquet"
                self.write_table(write_sample_records, path, tid, samples, path=path)
        if self.tracking is None or tid in self.closed or tid in self.closing:
            return
        meta = read_checkpoint_json(checkpoint, META_FILE) if history is not None else None
        self.closing.add(tid)

        def closed(ok) -> None:
            self.closing.discard(tid)
            if ok:
                self.closed.add(tid)
                self.runs.pop(tid, None)  # closed: its run object is not needed again
                last = self.last.get(tid) or {}
                self.last[tid] = {k: last[k] for k in ("epoch", "node_id", "diverged") if k in last}

        epochs = history or rows
        if history and not self.lane.has_room(len(history)):
            epochs = functools.partial(_read_history, checkpoint, tid)  # read again in the lane: light to hold
        self._mlflow("closing a trial's run", self._close_run, tid, epochs, meta, finished, status,
                     then=closed, retry=True)

    def _close_run(self, tid: str, epochs, meta, finished: bool, status: str) -> bool:
        """Give the run every epoch of the checkpoint it lacks (``epochs``: the history, or the call that
        reads it), its facts, its summary and status."""
        if callable(epochs):
            epochs = epochs() or []
        run = self._run(tid)
        if meta:
            run.log_meta(meta)
        run.sync_history(epochs)
        last = self.last.get(tid) or (epochs[-1] if epochs else {})
        if last.get("diverged"):
            finished, status = False, "FAILED"
            run.set_tags({LAST_ERROR: last["diverged"]})
        if finished:
            theory = KINDS[self.specs[tid]["kind"]].theory
            run.finish(finite_numbers(last, last) if theory else summarize(epochs), status)
        else:
            run.finish({}, status)
        return True

    def backfill_finished(self, checkpoints: dict[str, str | None]) -> None:
        """Trials that finished before a sweep continued without Tune's state (they do not run
        again): give each one's MLflow run what it lacks (an MLflow outage, or a full disk, may have
        kept their closing from it) from the newest checkpoint folder in ``checkpoints`` (trial id ->
        folder; None: from its Parquet rows), unless the run already ended FINISHED."""
        if self.tracking is None or not checkpoints:
            return
        rows = {tid: self.table.trial_rows(tid) for tid, folder in checkpoints.items()
                if folder is None and self.table is not None}
        self._mlflow("back-filling the runs of finished trials", self._backfill, checkpoints, rows)

    def _backfill(self, checkpoints: dict[str, str | None], rows: dict[str, list]) -> None:
        from ray import tune

        done = finished_trial_runs(self.tracking["tracking_uri"], self.tracking["experiment_id"])
        for tid, folder in checkpoints.items():
            if tid in done or tid in self.closed or tid not in self.specs:
                continue
            checkpoint = tune.Checkpoint.from_directory(folder) if folder else None
            history = _read_history(checkpoint, tid) if checkpoint is not None else None
            meta = read_checkpoint_json(checkpoint, META_FILE) if history is not None else None
            self._close_run(tid, history or rows.get(tid) or [], meta, True, "FINISHED")
            self.closed.add(tid)
            self.runs.pop(tid, None)

    def _row(self, tid: str, record: dict[str, Any]) -> dict[str, Any]:
        spec = self.specs[tid]
        row = {"trial_id": tid, "sweep": self.sweep, "run_name": spec["run_name"], "kind": spec["kind"]}
        row.update(record)
        row.update(self.flats[tid])
        return row

    def close_sweep(self, status: str) -> None:
        """The sweep's last writes: the table's pending rows, the trials' pending MLflow epochs, and
        the parent run's final ``status`` (each tolerant of a refusing storage or MLflow)."""
        if self.table is not None:
            self.write_table(self.table.flush)
        self.flush()
        if self.tracking is not None and self.tracking.get("parent_run_id"):
            self._mlflow("ending the sweep's run", finish_run, self.tracking["tracking_uri"],
                         self.tracking["parent_run_id"], status)
        self.drain()

    def on_step_end(self, iteration, trials, **info):
        self._check_storage()  # every turn of Tune's loop (at most every WATCH_SECONDS)

    def on_experiment_end(self, trials, **info):
        if self.table is not None:
            self.write_table(self.table.flush)
        self.flush()

    def as_tune_callback(self):
        """This writer as a ray.tune.Callback (built here so importing this module needs no Ray)."""
        from ray.tune import Callback

        writer = self

        class _Callback(Callback):
            def on_trial_result(self, iteration, trials, trial, result, **info):
                writer.on_trial_result(iteration, trials, trial, result, **info)

            def on_trial_complete(self, iteration, trials, trial, **info):
                writer.on_trial_complete(iteration, trials, trial, **info)

            def on_trial_recover(self, iteration, trials, trial, **info):
                writer.on_trial_recover(iteration, trials, trial, **info)

            def on_trial_error(self, iteration, trials, trial, **info):
                writer.on_trial_error(iteration, trials, trial, **info)

            def on_step_end(self, iteration, trials, **info):
                writer.on_step_end(iteration, trials, **info)

            def on_experiment_end(self, trials, **info):
                writer.on_experiment_end(trials, **info)

        return _Callback()


def registered_checkpoint_epoch(trial) -> int:
    """The epoch of the latest checkpoint Tune has registered for ``trial`` (what a retry starts
    from; 0 without one). Read from the result Tune keeps with that checkpoint."""
    manager = getattr(getattr(trial, "run_metadata", None), "checkpoint_manager", None)
    latest = getattr(manager, "latest_checkpoint_result", None)
    metrics = getattr(latest, "metrics", None)
    epoch = metrics.get("epoch") if isinstance(metrics, dict) else None
    return int(epoch) if epoch is not None else 0


# What a kept checkpoint's result keeps in Tune's state: its epoch (registered_checkpoint_epoch) and
# Tune's own counters. Tune orders checkpoints by the time they came (no score attribute here).
_CHECKPOINT_RESULT_KEYS = ("epoch", "done_training", "training_iteration", "trial_id", "checkpoint_dir_name")


def slim_tune_state(result: dict[str, Any] | None, trial=None) -> None:
    """Drop from Tune's per-trial state, which every experiment snapshot writes for every trial of
    the sweep, what neither Tune nor the driver reads back, once the writer and Tune's logs have the
    report: from the report (in place: Tune keeps this dict as the trial's last result) the epochs
    it carries, the trial's facts and the record keys the live table does not show; from the results
    Tune keeps with the trial's checkpoints all but their epoch and Tune's counters (a new dict: the
    newest may be the last result itself); and Tune's running statistics of every numeric key
    (``metric_analysis``: min, max, mean, last-5 and last-10 values, which only
    ``ExperimentAnalysis.get_best_trial`` reads; the driver never asks). Best effort: these are
    Tune's internals."""
    for k in _NOT_FOR_TUNE:
        if result is not None:
            result.pop(k, None)
    meta = getattr(trial, "run_metadata", None)
    try:
        changed = False
        if meta is not None and (meta.metric_analysis or meta.metric_n_steps):
            meta.metric_analysis, meta.metric_n_steps = {}, {}
            changed = True
        manager = getattr(meta, "checkpoint_manager", None)
        kept = list(manager.best_checkpoint_results or []) + [manager.latest_checkpoint_result] if manager else []
        for r in kept:
            metrics = getattr(r, "metrics", None)
            if isinstance(metrics, dict) and (metrics.keys() - set(_CHECKPOINT_RESULT_KEYS)):
                r.metrics = {k: metrics[k] for k in _CHECKPOINT_RESULT_KEYS if k in metrics}
                changed = True
        if changed:
            meta.invalidate_cache()
    except Exception:
        pass


def slimming_callback():
    """A Tune callback, placed after the writer and Tune's loggers, that applies
    :func:`slim_tune_state` to every report and to a finished trial's checkpoints."""
    from ray.tune import Callback

    class _Slim(Callback):
        def on_trial_result(self, iteration, trials, trial, result, **info):
            slim_tune_state(result, trial)

        def on_trial_complete(self, iteration, trials, trial, **info):
            slim_tune_state(None, trial)

    return _Slim()


def _append_line(path: Path, line: str) -> None:
    with open(path, "a") as f:
        f.write(line + "\n")


def read_faults(folder: Path) -> list[dict[str, Any]]:
    """The faults.jsonl of a sweep's results folder ([] when no trial process ended early)."""
    path = Path(folder) / FAULTS_FILE
    if not path.is_file():
        return []
    return [json.loads(ln) for ln in path.read_text().splitlines() if ln.strip()]


def read_checkpoint_json(checkpoint: Any, name: str) -> Any:
    """A JSON file of a Ray checkpoint (local or in a bucket), read without fetching state.pt; None if absent."""
    if checkpoint is None:
        return None
    try:
        with checkpoint.filesystem.open_input_stream(f"{checkpoint.path}/{name}") as f:
            return json.loads(f.read().decode())
    except FileNotFoundError:
        return None


def read_checkpoint_samples(checkpoint: Any, tid: str) -> dict[str, Any] | None:
    """The per-sample records of a trial's checkpoint (``samples.npz``, sample_records on), or None."""
    import io

    import numpy as np

    if checkpoint is None:
        return None
    try:
        with checkpoint.filesystem.open_input_stream(f"{checkpoint.path}/{SAMPLES_FILE}") as f:
            data = np.load(io.BytesIO(f.read()))
            return {k: data[k] for k in data.files}
    except FileNotFoundError:
        return None
    except Exception as e:  # a damaged file: say so, keep the rest
        print(f"rethink-dist: could not read the per-sample records of {tid}: {e}", file=sys.stderr)
        return None


def _read_history(checkpoint, tid: str) -> list[dict[str, Any]] | None:
    """The epoch records of a trial's checkpoint (``history.json``), or None."""
    try:
        return read_checkpoint_json(checkpoint, HISTORY_FILE)
    except Exception as e:  # keep the rows we have; say so
        print(f"rethink-dist: could not read the checkpoint of {tid}: {e}", file=sys.stderr)
        return None
