"""The driver of a sweep: Ray Tune runs the plan's trials; every report becomes Parquet rows and
MLflow metrics here, in one place.

``run_sweep`` writes ``sweep.json`` (the plan), opens the sweep's MLflow experiment and parent run,
connects to Ray and runs the trials with :func:`rethink_dist.sweep.worker.trainable`. Each trial
reports its epochs with a checkpoint; the :class:`~rethink_dist.sweep.results.ResultsWriter`
callback writes them to the Parquet table and to the trial's MLflow child run as they arrive, and,
when a trial ends (or the sweep stops), rewrites the trial's rows from its checkpoint's history:
nothing lost, nothing doubled. ``--resume`` restores an interrupted experiment and runs only what
is unfinished.
Results: docs/results-format.md.
"""

from __future__ import annotations

import contextlib
import json
import os
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from rethink_dist import stopping
from rethink_dist.errors import SweepError
from rethink_dist.files import storage_error, write_json_atomic
from rethink_dist.parquet import ResultsTable, sweep_schema, trial_index
from rethink_dist.records import HISTORY_FILE, STATE_FILE
from rethink_dist.sweep.address import explicit_address, probe_ray_address
from rethink_dist.sweep.feed import pending_trials_env, trial_feed
from rethink_dist.sweep.lease import Lease
from rethink_dist.sweep.plan import Sweep, TrialSpec
from rethink_dist.sweep.space import SpaceWatch, check_fits, estimate
from rethink_dist.sweep.results import TUNE_TABLE, MlflowLane, ResultsWriter, read_checkpoint_json, slimming_callback
from rethink_dist.sweep.worker import REPORT_SECONDS, trainable
from rethink_dist.tracking import (check_reachable, default_artifact_location, default_tracking_uri, ensure_experiment,
                                   ensure_parent_run)

DEFAULT_STORAGE = "results"
MAX_FAILURES = 5  # retries of one trial (a lost or preempted spot node counts as one); -1: unlimited


def connect_ray(address: str | None, num_cpus: int | None, runtime_env: dict[str, Any] | None = None) -> None:
    """Join the cluster this node belongs to (under ``ray submit``), the given address, or start a local
    Ray; ``runtime_env`` (a sweep's RUNTIME_ENV) is every trial's (Ray merges it with a submitted job's)."""
    import faulthandler

    import ray
    import ray._private.ray_constants as ray_constants
    import ray._private.utils as ray_utils

    if ray.is_initialized():
        if runtime_env:
            print("rethink-dist: warning: Ray was started before the sweep: its RUNTIME_ENV is not applied (the "
                  "trials import the user's code only if the workers already can)", file=sys.stderr, flush=True)
        return
    kw = {"runtime_env": runtime_env} if runtime_env else {}
    os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")
    # ray.init installs a SIGTERM handler of its own (sys.exit), and its native crash handler, which
    # takes SIGTERM too, dumps a stack and kills the process: the command's handlers stay
    # (rethink_dist/stopping.py). This process only: Ray's own processes keep their crash handler,
    # and Python's shows this one's stack on a crash.
    if stopping.installed():
        ray_constants.RAY_DISABLE_FAILURE_SIGNAL_HANDLER = True
        faulthandler.enable()
    with stopping.deferred(), stopping.kept_from(ray_utils, "set_sigterm_handler"):
        _init_ray(ray, address, num_cpus, kw)


def _init_ray(ray, address: str | None, num_cpus: int | None, kw: dict[str, Any]) -> None:
    address = address or os.environ.get("RAY_ADDRESS")
    if address in (None, "", "auto"):
        # Under `ray submit` / `ray job submit` this node belongs to a cluster: join it.
        if address == "auto" or Path(tempfile.gettempdir(), "ray", "ray_current_cluster").exists():
            try:
                ray.init(address="auto", log_to_driver=True, **kw)
                return
            except (ConnectionError, RuntimeError):
                if address == "auto":
                    raise
        address = "local"
    if address == "local":
        # address="local" starts a new instance even where another Ray runs on this machine
        ray.init(address="local", num_cpus=num_cpus, include_dashboard=False, log_to_driver=True, **kw)
    else:
        ray.init(address=address, log_to_driver=True, **kw)


@contextlib.contextmanager
def _outside_ray_working_dir(folder: Path):
    """Under ``ray job submit --working-dir`` this process starts in Ray's copy of that folder, and Ray
    replaces the copy (same path, new folder) when it sets up the trials' workers on this node: the
    process would be left in a deleted folder, where Tune's end-of-sweep analysis fails (getcwd).
    Work in the sweep's results folder meanwhile (every path is absolute by now), then go back."""
    try:
        here = os.getcwd()
    except FileNotFoundError:  # already replaced: the shell's idea of it is the path
        here = os.environ.get("PWD", str(folder))
    if f"{os.sep}runtime_resources{os.sep}" not in here:
        yield
        return
    os.chdir(folder)
    try:
        yield
    finally:
        with contextlib.suppress(OSError):
            os.chdir(here)  # the path again: Ray's new copy of the working dir


class _Quiet:
    """A logging filter that drops Tune's and MLflow's lines that the driver says in its own words:
    trials that have no results yet on a resume ("Failed to fetch metrics": resume_line says what
    the resume found), Tune's restore advice (the sweep's line says --resume), and the tracebacks of
    writes refused by a full storage (stop_for_storage says it once)."""

    DROP = ("Failed to fetch metrics", "Could not fetch metrics for", "Tuner.restore(",
            "Experiment has been interrupted")

    def filter(self, record) -> bool:
        text = record.getMessage()
        if record.exc_info and record.exc_info[1] is not None:
            text += f" {record.exc_info[1]}"
        return not (any(d in text for d in self.DROP) or storage_error(text))


QUIET_LOGGERS = ("ray.tune.analysis.experiment_analysis", "ray.tune.tune", "ray.tune.execution.tune_controller",
                 "ray.tune.execution.experiment_state", "mlflow.store.db.utils")


@contextlib.contextmanager
def _quiet_logs():
    import logging

    quiet = _Quiet()
    for name in QUIET_LOGGERS:
        logging.getLogger(name).addFilter(quiet)
    try:
        yield
    finally:
        for name in QUIET_LOGGERS:
            logging.getLogger(name).removeFilter(quiet)


@contextlib.contextmanager
def _tune_signals():
    """Tune's loop stops on the command's stop signals (see :func:`rethink_dist.stopping.graceful`):
    the first one is handed to Tune as SIGUSR1, on which it stops gracefully; Tune's own SIGINT
    handler stays out so that SIGINT, SIGTERM and SIGHUP behave alike."""
    import signal

    if not stopping.installed():  # a caller in Python (tests): Tune's own Ctrl-C handling
        yield
        return
    before = os.environ.get("TUNE_DISABLE_SIGINT_HANDLER")
    os.environ["TUNE_DISABLE_SIGINT_HANDLER"] = "1"
    try:
        with stopping.graceful(lambda signum: os.kill(os.getpid(), signal.SIGUSR1)):
            yield
    finally:
        if before is None:
            os.environ.pop("TUNE_DISABLE_SIGINT_HANDLER", None)
        else:
            os.environ["TUNE_DISABLE_SIGINT_HANDLER"] = before


def storage_paths(storage: str, sweep: str) -> tuple[str, Path | None]:
    """(Tune storage_path, local folder for sweep.json / trials.parquet or None when remote)."""
    if "://" in storage:
        return f"{storage.rstrip('/')}/{sweep}", None
    folder = Path(storage).resolve() / sweep
    return str(folder), folder


def can_restore(path: str) -> bool:
    """Whether ``path`` holds a Tune experiment that ``--resume`` can continue."""
    from ray import tune

    try:
        return tune.Tuner.can_restore(path)
    except Exception:
        return False


def _trial_name(trial) -> str:
    spec = trial.config.get("spec", {})
    return spec.get("trial_id", trial.trial_id)


def _trial_resources(config: dict[str, Any]) -> dict[str, float]:
    return TrialSpec(**config["spec"]).resources()


def run_sweep(sweep: Sweep, storage: str = DEFAULT_STORAGE, tracking_uri: str | None = None, resume: bool = False,
              max_concurrent: int | None = None, ray_address: str | None = None, num_cpus: int | None = None,
              results_dir: str | None = None, verbose: int = 1, max_failures: int = MAX_FAILURES,
              report_seconds: float = REPORT_SECONDS) -> dict[str, Any]:
    """Run (or resume) a sweep; returns {"results_dir", "parquet", "tracking_uri", "summary": [rows], ...}.

    The steps: check what can be checked before anything is written (the Ray address, the MLflow
    store, where the results go, the free space); open the sweep (its lease, MLflow experiment and
    parent run, sweep.json, the Parquet table); connect to Ray; let Tune run the trials, every report
    going through the :class:`~rethink_dist.sweep.results.ResultsWriter`; count what finished; close.
    """
    _tune_environment()
    import ray

    # A cluster that Ray cannot join is refused in seconds, before anything is written (ray.init
    # itself would retry it for minutes, after the plan and the MLflow experiment exist).
    given = explicit_address(ray_address)
    if given and not ray.is_initialized():
        probe_ray_address(*given)
    tracking_uri = tracking_uri or default_tracking_uri(storage)
    check_reachable(tracking_uri)  # before anything is written or Ray starts
    MlflowLane.limit_from_env()  # a bad $RETHINK_MLFLOW_LANE_EPOCHS, refused as early
    place = _place(sweep, storage, results_dir, resume)
    need = _check_space(sweep, place, storage, max_concurrent)
    flats = {s.trial_id: s.flat() for s in sweep.trials}
    opened = _open_sweep(sweep, place, storage, tracking_uri, flats)
    writer = ResultsWriter(opened["table"], opened["tracking"], sweep.name,
                           {s.trial_id: s.to_dict() for s in sweep.trials}, flats)
    writer.watch = SpaceWatch([place.folder] + ([Path(place.tune_storage)] if "://" not in place.tune_storage else []),
                              reserve=2 * need["largest"] + 2**20)
    job_dir = _connect(sweep, place, opened["lease"], ray_address, num_cpus)
    status, errors, unfinished = "FINISHED", 0, 0
    quiet = contextlib.ExitStack()  # until the last write: the final flushes can meet a full disk too
    quiet.enter_context(_quiet_logs())
    try:
        # On --resume, Tune unpickles the callback it saved: inside live() that copy is this writer.
        with job_dir, opened["table"].live(), writer.live():
            tuner, todo = _tuner(sweep, place, opened["table"], writer, max_concurrent, max_failures, report_seconds,
                                 verbose)
            with pending_trials_env(max_concurrent):
                grid = _fit(tuner, writer)
            writer.retry_mlflow_now()  # back-fill what an MLflow outage left out
            errors, unfinished = _tally(grid, todo, writer, opened["table"])
        status = "FAILED" if errors else "KILLED" if unfinished else "FINISHED"
    except BaseException:
        status = "KILLED"
        raise
    finally:
        try:
            writer.close_sweep(status)
        finally:
            opened["lease"].release()  # last: after the final writes
            quiet.close()
    table = opened["table"]
    last = table.last_rows()
    summary = [last[s.trial_id] for s in sweep.trials if s.trial_id in last]
    return {"results_dir": str(place.folder), "parquet": str(table.path), "tracking_uri": tracking_uri,
            "experiment": sweep.name, "experiment_id": opened["tracking"]["experiment_id"], "summary": summary,
            "errors": errors, "unfinished": unfinished, "planned": len(sweep.trials), "storage_full": writer.storage_full}


def _tune_environment() -> None:
    """Tune's and MLflow's settings for a sweep (before Tune is imported)."""
    # The classic live trial table, with the columns a researcher watches.
    os.environ.setdefault("RAY_AIR_NEW_OUTPUT", "0")
    # Checkpointing every epoch is the point (exact resume); Tune's advice against it is noise here.
    os.environ.setdefault("TUNE_WARN_EXCESSIVE_EXPERIMENT_CHECKPOINT_SYNC_THRESHOLD_S", "0")
    # Tune's automatic loggers include TensorBoard's, which warns on every report that carries several
    # epochs (a list): keep its JSON and CSV logs (the tuner adds them), not TensorBoard's.
    os.environ.setdefault("TUNE_DISABLE_AUTO_CALLBACK_LOGGERS", "1")
    # A failing tracking server must not stall the trials: the client fails fast and the writer
    # carries on without MLflow until the server answers again (see ResultsWriter).
    os.environ.setdefault("MLFLOW_HTTP_REQUEST_MAX_RETRIES", "0")
    os.environ.setdefault("MLFLOW_HTTP_REQUEST_TIMEOUT", "30")


@dataclass
class _Place:
    """Where a sweep's results go, and what a --resume will find there."""
    tune_storage: str  # Tune's storage_path (a folder or a bucket)
    folder: Path  # sweep.json, trials.parquet, faults.jsonl
    tune_dir: str  # Tune's experiment folder
    resume: bool  # Tune restores its experiment
    rebuild: Any  # resume without Tune's state (truthy: why), from the project's own records


def _place(sweep: Sweep, storage: str, results_dir: str | None, resume: bool) -> _Place:
    tune_storage, folder = storage_paths(storage, sweep.name)
    if folder is None:
        if results_dir is None:
            raise SweepError(f"storage {storage!r} is remote: pass --results-dir for sweep.json and trials.parquet")
        folder = Path(results_dir).resolve() / sweep.name
    tune_dir = f"{tune_storage}/tune"
    exists = can_restore(tune_dir)
    # Tune's own state can be left unreadable (a disk that filled while Tune wrote it): the project's
    # records (sweep.json, trials.parquet, the trials' checkpoints) are enough to continue.
    rebuild = resume and not exists and "://" not in tune_dir and Path(tune_dir).is_dir() \
        and (folder / "sweep.json").is_file()
    if resume and not exists and not rebuild:
        if not (folder / "sweep.json").is_file():
            raise SweepError(f"--resume: no interrupted sweep at {tune_dir!r}; run without --resume to start it")
        # stopped before Tune had started: nothing ran, so the sweep starts now
        print(f"resume: sweep {sweep.name!r} was stopped before any trial started; starting it", file=sys.stderr,
              flush=True)
        resume = False
    if not resume and exists:
        raise SweepError(f"sweep {sweep.name!r} already has results at {tune_dir!r}; pass --resume to continue it, "
                         "or choose another --storage")
    plan_path = folder / "sweep.json"
    if resume and plan_path.exists():
        old = json.loads(plan_path.read_text())
        if [t["trial_id"] for t in old["trials"]] != [s.trial_id for s in sweep.trials]:
            raise SweepError(f"--resume: the trials of {sweep.path!r} changed since the sweep started; "
                             "Tune cannot change a running sweep's grid: start a new sweep (another --storage)")
    return _Place(tune_storage, folder, tune_dir, resume, rebuild)


def _check_space(sweep: Sweep, place: _Place, storage: str, max_concurrent: int | None) -> dict[str, Any]:
    """What the trials still to come need on disk (refused, exit 2, when a local storage lacks it)."""
    done = _finished_ids(place.folder / "trials.parquet") if place.resume else set()
    need = estimate([s for s in sweep.trials if s.trial_id not in done], max_concurrent)
    if "://" not in storage:
        check_fits(place.folder, need, "--storage")
    return need


def _open_sweep(sweep: Sweep, place: _Place, storage: str, tracking_uri: str,
                flats: dict[str, dict[str, Any]]) -> dict[str, Any]:
    """The sweep's lease, MLflow experiment and parent run, sweep.json and Parquet table. A sweep
    refused here (another driver holds it, MLflow refuses it) leaves nothing behind."""
    folder = place.folder
    created = [p for p in (folder, *folder.parents) if not p.exists()]
    folder.mkdir(parents=True, exist_ok=True)
    lease = Lease(folder, sweep.name)
    try:
        lease.acquire()
        try:
            experiment_id = ensure_experiment(tracking_uri, sweep.name,
                                              default_artifact_location(tracking_uri, storage, sweep.name))
            parent = ensure_parent_run(tracking_uri, experiment_id, sweep.name,
                                       {"sweep_file": sweep.path, "num_trials": len(sweep.trials),
                                        "storage": place.tune_storage})
        except Exception as e:  # MlflowException, connection errors: the store refuses the sweep
            if isinstance(e, SweepError):
                raise
            raise SweepError(f"MLflow at {tracking_uri} refused the sweep's experiment: "
                             f"{str(e).splitlines()[0]}") from None
        plan_path = folder / "sweep.json"
        if not (place.resume and plan_path.exists()):
            write_json_atomic(plan_path, {
                "sweep": sweep.name, "file": sweep.path, "created": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
                "tracking_uri": tracking_uri, "storage": place.tune_storage,
                "trials": [{**s.to_dict(), "flat": flats[s.trial_id]} for s in sweep.trials]}, indent=1)
        table = ResultsTable(folder / "trials.parquet", schema=sweep_schema(flats.values()))
        print(f"sweep {sweep.name!r}: {len(sweep.trials)} trials", file=sys.stderr, flush=True)
    except BaseException:
        lease.release()
        for p in created:  # the folders this call made, innermost first, if still empty
            with contextlib.suppress(OSError):
                p.rmdir()
        raise
    tracking = {"tracking_uri": tracking_uri, "experiment_id": experiment_id, "parent_run_id": parent,
                "sweep": sweep.name}
    return {"lease": lease, "tracking": tracking, "table": table}


def _connect(sweep: Sweep, place: _Place, lease: Lease, ray_address: str | None,
             num_cpus: int | None) -> contextlib.ExitStack:
    """Join Ray; returns the context that keeps this process out of Ray's working dir meanwhile."""
    # Before Ray starts: Ray may replace a job's working dir (this process's folder) as soon as it
    # sets up workers on this node, even for the driver's own connection.
    job_dir = contextlib.ExitStack()
    job_dir.enter_context(_outside_ray_working_dir(place.folder))
    try:
        connect_ray(ray_address, num_cpus, sweep.runtime_env)
    except BaseException:
        job_dir.close()
        lease.release()
        raise
    return job_dir


def _tuner(sweep: Sweep, place: _Place, table: ResultsTable, writer: ResultsWriter, max_concurrent: int | None,
           max_failures: int, report_seconds: float, verbose: int):
    """Tune's experiment: restored (--resume), rebuilt from the project's records (its state
    unreadable), or new; with the trials it runs."""
    from ray import tune
    from ray.tune.logger import CSVLoggerCallback, JsonLoggerCallback

    fn = tune.with_resources(trainable, _trial_resources)
    todo, rebuild = list(sweep.trials), place.rebuild
    if place.resume:
        print(resume_line(sweep, table, place.tune_dir), file=sys.stderr, flush=True)
        if not rebuild:
            rebuild = _tune_state_problem(place.tune_dir) or False
        if not rebuild:
            try:
                return tune.Tuner.restore(place.tune_dir, fn, resume_unfinished=True, resume_errored=True), todo
            except Exception as e:  # a damaged experiment state (JSONDecodeError, KeyError 'spec', ...)
                rebuild = f"{type(e).__name__}: {str(e).splitlines()[0] if str(e) else ''}"
    ctx: dict[str, Any] = {"report_seconds": report_seconds}
    per_trial: dict[str, dict[str, Any]] = {}
    if rebuild:
        todo, resume_from, finished = _rebuild_plan(sweep, table, place.tune_dir, rebuild)
        per_trial = {tid: {"resume_from": folders} for tid, folders in resume_from.items()}
        writer.backfill_finished(finished)  # not in the new experiment: their runs get what they lack here
    run_config = tune.RunConfig(
        name="tune", storage_path=place.tune_storage,
        failure_config=tune.FailureConfig(max_failures=max_failures),
        checkpoint_config=tune.CheckpointConfig(num_to_keep=2),
        # The writer first; Tune's logs get every report whole; then Tune's own copy is slimmed.
        callbacks=[writer.as_tune_callback(), JsonLoggerCallback(), CSVLoggerCallback(), slimming_callback()],
        verbose=verbose,
        progress_reporter=tune.CLIReporter(
            metric_columns=TUNE_TABLE,
            parameter_columns={"spec/run_name": "run"}, max_report_frequency=20, print_intermediate_tables=True,
        ),
    )
    # A trial's actor (its process, with torch imported) runs the next trial that asks for the same
    # resources instead of a fresh process per trial. The trials come one at a time from the list
    # (rethink_dist/sweep/feed.py: a grid over the list costs O(trials^2) before the first one starts).
    tuner = tune.Tuner(
        fn, param_space={}, run_config=run_config,
        tune_config=tune.TuneConfig(search_alg=trial_feed([s.to_dict() for s in todo], ctx, per_trial),
                                    num_samples=max(1, len(todo)), max_concurrent_trials=max_concurrent,
                                    reuse_actors=True, trial_name_creator=_trial_name,
                                    trial_dirname_creator=_trial_name),
    )
    return tuner, todo


def _fit(tuner, writer: ResultsWriter):
    """Tune's run; its result grid, or None when the storage refused Tune's own files."""
    # The first Ctrl-C, SIGTERM or SIGHUP stops Tune as its own SIGUSR1 does: no new trials, the
    # results already reported land, fit() returns with some trials unfinished. A second one
    # raises KeyboardInterrupt (rethink_dist/stopping.py).
    try:
        with _tune_signals():
            return tuner.fit()
    except Exception as e:
        # Tune reads back what it wrote (a trial's error file, its state); on a storage that
        # refused writes that can fail too: the sweep stops, the project's records are kept.
        if writer.storage_full is None and not storage_error(e):
            raise
        writer.stop_for_storage(f"Tune could not read back its files ({type(e).__name__}: {e})")
        return None


def _tally(grid, todo: list[TrialSpec], writer: ResultsWriter, table: ResultsTable) -> tuple[int, int]:
    """(failed, unfinished) trials; each trial's rows and MLflow run rewritten from its last checkpoint."""
    errors = unfinished = 0
    for result in grid or []:
        tid = ((result.config or {}).get("spec") or {}).get("trial_id")
        failed = result.error is not None or bool((result.metrics or {}).get("diverged"))
        if failed and writer.storage_full and storage_error(str(result.error)):
            failed = False  # stopped by the full storage, not by a fault of its own: --resume continues it
        done = not failed and bool((result.metrics or {}).get("done_training"))
        errors += failed
        unfinished += not failed and not done
        writer.reconcile(tid, result.checkpoint, finished=done,
                         status="FINISHED" if done else "FAILED" if failed else "KILLED")
    # Trials an interrupted Tune never started have no result at all: unfinished too.
    unfinished += max(0, len(todo) - len(grid)) if grid is not None else \
        sum(not _finished(table, s.trial_id) for s in todo)  # no result grid: by the Parquet table
    return errors, unfinished


def _finished_ids(parquet: Path) -> set[str]:
    """The trials whose last row in ``parquet`` says finished (empty when there is no table)."""
    import pyarrow as pa

    try:
        return {tid for tid, (_, done) in trial_index(parquet).items() if done}
    except (OSError, ValueError, KeyError, pa.ArrowException):
        return set()


def _finished(table: ResultsTable, tid: str) -> bool:
    return table.finished(tid)


def resume_line(sweep: Sweep, table: ResultsTable, tune_dir: str) -> str:
    """What ``--resume`` found, from the project's own records: finished trials, trials that go on
    from a checkpoint, trials not started."""
    done = sum(_finished(table, s.trial_id) for s in sweep.trials)
    begun = sum(table.has_rows(s.trial_id) and not _finished(table, s.trial_id) for s in sweep.trials)
    left = len(sweep.trials) - done - begun
    return (f"resume: {done} of {len(sweep.trials)} trials finished, {begun} go on from their last checkpoint, "
            f"{left} not started yet")


def _tune_state_problem(tune_dir: str) -> str | None:
    """Why Tune's saved experiment state cannot be trusted (a cut-short file), or None. Tune itself
    may restore such a state without a word and fail later, trial by trial (KeyError 'spec')."""
    if "://" in tune_dir:
        return None  # a bucket: Tune's own restore decides
    states = sorted(Path(tune_dir).glob("experiment_state-*.json"))
    if not states:
        return "no experiment_state file"
    try:
        data = json.loads(states[-1].read_text())
        for entry in data["trial_data"]:
            if "spec" not in json.loads(entry[0])["config"]:
                return f"{states[-1].name}: a trial without its spec"
    except (OSError, ValueError, KeyError, TypeError, IndexError) as e:
        return f"{states[-1].name}: {type(e).__name__}: {str(e).splitlines()[0] if str(e) else ''}"
    return None


def _checkpoints_newest_first(trial_dir: Path) -> list[str]:
    """A trial's checkpoint folders that hold a readable history, newest first."""
    out = []
    for d in sorted(trial_dir.glob("checkpoint_*"), reverse=True):
        try:
            json.loads((d / HISTORY_FILE).read_text())
        except (OSError, ValueError):
            continue
        if (d / STATE_FILE).is_file():
            out.append(str(d))
    return out


def _rebuild_plan(sweep: Sweep, table: ResultsTable, tune_dir: str,
                  why: Any) -> tuple[list[TrialSpec], dict[str, list[str]], dict[str, str | None]]:
    """Continue a sweep whose Tune state cannot be read: set that folder aside, and run a new Tune
    experiment of the trials that are not finished (by trials.parquet), each from its newest readable
    checkpoint in the old folder (the trainable tries them newest first). Also returns the finished
    trials' newest checkpoint folder (None: none readable), from which their runs are back-filled."""
    old = Path(tune_dir)
    aside = old.with_name(f"{old.name}.unreadable-{time.strftime('%Y%m%d-%H%M%S')}")
    os.replace(old, aside)
    done = {s.trial_id for s in sweep.trials if _finished(table, s.trial_id)}
    todo = [s for s in sweep.trials if s.trial_id not in done]
    resume_from = {s.trial_id: _checkpoints_newest_first(aside / s.trial_id) for s in todo}
    finished = {s.trial_id: next(iter(_checkpoints_newest_first(aside / s.trial_id)), None)
                for s in sweep.trials if s.trial_id in done}
    reason = "" if why is True else f" ({why})"
    print(f"resume: Tune's experiment state in {str(old)!r} cannot be read{reason}; it is kept as "
          f"{str(aside)!r}, and the {len(todo)} unfinished trials continue from the project's own records "
          f"({sum(bool(v) for v in resume_from.values())} from a checkpoint)", file=sys.stderr, flush=True)
    return todo, resume_from, finished


def run_one_trial(spec: TrialSpec, tracking_uri: str | None = None, experiment: str = "train",
                  max_failures: int = MAX_FAILURES) -> dict[str, Any]:
    """Run one trial (e.g. a data-parallel one from ``rethink-dist train``) on a local Ray through the
    sweep's trainable, with its MLflow run when ``tracking_uri`` is given; returns
    ``{"history", "saved", "error"}`` read from its last checkpoint (``saved``: its summary.json)."""
    import math
    import shutil

    from ray import tune

    res = spec.config.get("resources", {})
    # A local Ray gets enough logical CPUs for the workers and the trial's 0.1 CPU.
    need = math.ceil(res.get("ddp_workers", 0) * res.get("cpus", 1.0) + 1)
    connect_ray(None, max(os.cpu_count() or 1, need))
    tracking = None
    if tracking_uri:
        tracking = {"tracking_uri": tracking_uri, "experiment_id": ensure_experiment(tracking_uri, experiment),
                    "parent_run_id": None, "sweep": experiment}
    writer = ResultsWriter(None, tracking, experiment, {spec.trial_id: spec.to_dict()}, {spec.trial_id: spec.flat()})
    storage = tempfile.mkdtemp(prefix="rethink-trial-")
    try:
        tuner = tune.Tuner(
            tune.with_resources(trainable, _trial_resources),
            param_space={"spec": spec.to_dict(), "ctx": {"report_seconds": REPORT_SECONDS}},
            run_config=tune.RunConfig(name="train", storage_path=storage, verbose=0,
                                      failure_config=tune.FailureConfig(max_failures=max_failures),
                                      checkpoint_config=tune.CheckpointConfig(num_to_keep=2),
                                      callbacks=[writer.as_tune_callback(), slimming_callback()]),
        )
        result = tuner.fit()[0]
        writer.reconcile(spec.trial_id, result.checkpoint, finished=result.error is None,
                         status="FINISHED" if result.error is None else "FAILED")
        error = None
        if result.error is not None or result.checkpoint is None:
            error = str(result.error).splitlines()[0] if result.error else "no checkpoint"
        return {"error": error, "history": read_checkpoint_json(result.checkpoint, HISTORY_FILE),
                "saved": read_checkpoint_json(result.checkpoint, "summary.json")}
    finally:
        writer.flush()
        writer.drain()
        shutil.rmtree(storage, ignore_errors=True)
