"""MLflow: one experiment per sweep, a parent run for the sweep, one child run per trial.

Runs are found by tag, so a resumed or retried trial continues its own run and a resumed sweep
its own parent run: never a second run for one trial. Epochs are logged exactly once: the
sweep's driver logs an epoch when Tune hands it the trial's report, which carries the checkpoint
that holds the epoch, and when a trial ends it back-fills from the checkpoint's history whatever
epochs the run lacks (see :meth:`TrialRun.sync_history`). Keys and tags: :mod:`rethink_dist.records`
and docs/results-format.md.
"""

from __future__ import annotations

import functools
import os
import subprocess
import time
from pathlib import Path
from typing import Any

from rethink_dist.errors import ConfigError
from rethink_dist.files import storage_error

from rethink_dist.records import (DATASET_FINGERPRINT, GIT_COMMIT, METRIC_KEYS, PARENT_RUN, ROLE, SWEEP, TRIAL_ID,
                                  finite_numbers)

_MAX_PARAM_LEN = 6000


def default_tracking_uri(storage: str) -> str:
    """``sqlite:///<storage>/mlflow.db`` for a local storage folder."""
    if "://" in storage:
        raise ConfigError(f"storage {storage!r} is remote: pass --tracking-uri (e.g. the cluster's MLflow server)")
    return f"sqlite:///{Path(storage).resolve() / 'mlflow.db'}"


def git_commit() -> str:
    """The commit of the rethink-dist checkout (or RETHINK_GIT_COMMIT), 'unknown' outside git."""
    if os.environ.get("RETHINK_GIT_COMMIT"):
        return os.environ["RETHINK_GIT_COMMIT"]
    return _checkout_commit()


@functools.lru_cache(maxsize=1)
def _checkout_commit() -> str:  # one git call per process, not one per trial's run
    try:
        out = subprocess.run(["git", "rev-parse", "HEAD"], cwd=Path(__file__).resolve().parent,
                             capture_output=True, text=True, timeout=10)
        return out.stdout.strip() or "unknown"
    except (OSError, subprocess.SubprocessError):
        return "unknown"


def _client(tracking_uri: str):
    os.environ.setdefault("MLFLOW_DISABLE_TELEMETRY", "true")
    from mlflow.tracking import MlflowClient

    return MlflowClient(tracking_uri=tracking_uri)


# A busy SQLite file is retried for up to ~18 s; a server that does not answer only briefly (the
# sweep's driver calls MLflow from Tune's event loop: a long wait there stalls every trial's
# reports, and the driver carries on without MLflow until it answers again).
BUSY_TRIES, UNREACHABLE_TRIES = 8, 3


def _retry(fn, *args, tries: int = BUSY_TRIES, **kwargs):
    """Call an MLflow client method, retrying transient failures (a busy SQLite file, a restarting server)."""
    attempt = 0
    while True:
        try:
            return fn(*args, **kwargs)
        except Exception as e:  # MlflowException, OperationalError, connection errors
            if storage_error(e):  # a full or read-only disk does not pass by waiting
                raise
            text = str(e).lower()
            busy = any(s in text for s in ("locked", "temporarily", "503", "502"))
            unreachable = any(s in text for s in ("timeout", "timed out", "connection"))
            limit = tries if busy else min(tries, UNREACHABLE_TRIES)
            attempt += 1
            if not (busy or unreachable) or attempt >= limit:
                raise
            time.sleep(min(0.25 * 2 ** (attempt - 1), 5.0))


# MLflow 3's UI opens an experiment on its GenAI overview unless the experiment says it is for
# model training: then it opens on the runs table.
EXPERIMENT_KIND = {"mlflow.experimentKind": "custom_model_development"}
# How long the up-front check waits for a tracking server to answer (seconds).
REACH_TIMEOUT_ENV, REACH_TIMEOUT_DEFAULT = "RETHINK_MLFLOW_TIMEOUT", 5.0


def ui_lines(tracking_uri: str, experiment_id: str, mlflow: str = "mlflow") -> list[str]:
    """How to open the experiment on its runs. MLflow 3's UI shows an experiment as GenAI (traces)
    unless the link says ``workflowType=machine_learning`` (or the browser chose it before)."""
    page = f"#/experiments/{experiment_id}/runs?workflowType=machine_learning"
    if tracking_uri.startswith(("http://", "https://")):
        return [f"MLflow UI:     {tracking_uri.rstrip('/')}/{page}"]
    return [f"MLflow UI:     {mlflow} ui --backend-store-uri {tracking_uri} --host 127.0.0.1",
            f"               then open http://127.0.0.1:5000/{page}"]


def check_reachable(tracking_uri: str) -> None:
    """Fail at once (one line) when nothing answers at an http(s) tracking URI, or when a local
    store's folder cannot be written: before a sweep writes anything or starts Ray."""
    import urllib.error
    import urllib.request

    from rethink_dist.files import check_writable

    if tracking_uri.startswith(("http://", "https://")):
        timeout = float(os.environ.get(REACH_TIMEOUT_ENV, REACH_TIMEOUT_DEFAULT))
        try:
            urllib.request.urlopen(f"{tracking_uri.rstrip('/')}/health", timeout=timeout).close()
        except urllib.error.HTTPError as e:
            raise ConfigError(f"--tracking-uri {tracking_uri} answers, but not as an MLflow tracking server "
                              f"(HTTP {e.code} for /health)") from None
        except (OSError, ValueError) as e:
            why = getattr(e, "reason", None) or e
            raise ConfigError(f"nothing answers at --tracking-uri {tracking_uri} within {timeout:g} s ({why}); start "
                              f"the MLflow server or fix the URI (${REACH_TIMEOUT_ENV} sets the wait)") from None
    elif tracking_uri.startswith("sqlite:///"):
        check_writable(tracking_uri[len("sqlite:///"):], "--tracking-uri")


def default_artifact_location(tracking_uri: str, storage: str, experiment: str) -> str | None:
    """Artifacts beside a local store: ``<storage>/mlartifacts/<experiment>`` (a server decides its own)."""
    if tracking_uri.startswith(("http://", "https://", "databricks")) or "://" in storage:
        return None
    return (Path(storage).resolve() / "mlartifacts" / experiment).as_uri()


def ensure_experiment(tracking_uri: str, name: str, artifact_location: str | None = None) -> str:
    """The experiment's id, created (with ``artifact_location``) if missing; tagged for the model-training UI."""
    client = _client(tracking_uri)
    exp = _retry(client.get_experiment_by_name, name)
    if exp is None:
        try:
            return _retry(client.create_experiment, name, artifact_location=artifact_location, tags=EXPERIMENT_KIND)
        except Exception:  # created concurrently
            exp = _retry(client.get_experiment_by_name, name)
            if exp is None:
                raise
    if exp.lifecycle_stage == "deleted":
        _retry(client.restore_experiment, exp.experiment_id)
    for k, v in EXPERIMENT_KIND.items():
        if exp.tags.get(k) != v:
            _retry(client.set_experiment_tag, exp.experiment_id, k, v)
    return exp.experiment_id


def _trial_runs_where(tracking_uri: str, experiment_id: str, where: str = ""):
    """The experiment's trial runs (``where``: more of the filter), in pages of 5,000."""
    client = _client(tracking_uri)
    token = None
    while True:
        page = _retry(client.search_runs, [experiment_id], filter_string=f"tags.`{ROLE}` = 'trial'{where}",
                      max_results=5000, page_token=token)
        yield from page
        token = page.token
        if not token:
            return


def trial_runs(tracking_uri: str, experiment_id: str) -> dict[str, str]:
    """The experiment's trial runs, trial id -> run id, in one paged search (a sweep's writer asks
    once, instead of one search per trial: that search's cost grows with the experiment)."""
    out: dict[str, str] = {}
    for run in _trial_runs_where(tracking_uri, experiment_id):
        out.setdefault(run.data.tags.get(TRIAL_ID, ""), run.info.run_id)
    return out


def finished_trial_runs(tracking_uri: str, experiment_id: str) -> set[str]:
    """The trial ids whose run ended FINISHED: a trial's closing sets that status last, after its
    every epoch, so such a run lacks nothing (one paged search)."""
    return {run.data.tags.get(TRIAL_ID, "")
            for run in _trial_runs_where(tracking_uri, experiment_id, " and attributes.status = 'FINISHED'")}


def _find_run(client, experiment_id: str, tag: str, value: str):
    runs = _retry(client.search_runs, [experiment_id], filter_string=f"tags.`{tag}` = '{value}'", max_results=2)
    return runs[0] if runs else None


def ensure_parent_run(tracking_uri: str, experiment_id: str, sweep: str, params: dict[str, Any]) -> str:
    """The sweep's parent run (found by tag, created once)."""
    client = _client(tracking_uri)
    client_runs = _retry(client.search_runs, [experiment_id],
                         filter_string=f"tags.`{ROLE}` = 'sweep' and tags.`{SWEEP}` = '{sweep}'", max_results=1)
    if client_runs:
        run_id = client_runs[0].info.run_id
        _retry(client.update_run, run_id, status="RUNNING")
        return run_id
    run = _retry(client.create_run, experiment_id, run_name=sweep,
                 tags={ROLE: "sweep", SWEEP: sweep, GIT_COMMIT: git_commit()})
    log_params(client, run.info.run_id, params)
    return run.info.run_id


def finish_run(tracking_uri: str, run_id: str, status: str = "FINISHED") -> None:
    _retry(_client(tracking_uri).set_terminated, run_id, status)


def log_params(client, run_id: str, params: dict[str, Any]) -> None:
    from mlflow.entities import Param

    items = [Param(k, _param_str(v)) for k, v in sorted(params.items())]
    for i in range(0, len(items), 100):
        _retry(client.log_batch, run_id, params=items[i : i + 100])


def _param_str(v: Any) -> str:
    s = "None" if v is None else str(v)
    return s[:_MAX_PARAM_LEN]


class TrialRun:
    """The child run of one trial: its params, epochs (exactly once), summary and status."""

    def __init__(self, tracking_uri: str, experiment_id: str, trial_id: str, run_name: str,
                 parent_run_id: str | None = None, sweep: str = "", extra_tags: dict[str, str] | None = None,
                 known: dict[str, str] | None = None):
        """``known``: the experiment's trial runs (:func:`trial_runs`), when the caller has them: this
        trial's run is looked up there instead of searched for."""
        self.client = _client(tracking_uri)
        self.trial_id = trial_id
        tags = {ROLE: "trial", TRIAL_ID: trial_id, SWEEP: sweep, GIT_COMMIT: git_commit()}
        if parent_run_id:
            tags[PARENT_RUN] = parent_run_id
        tags.update(extra_tags or {})
        if known is not None:
            existing = known.get(trial_id)
        else:
            found = _find_run(self.client, experiment_id, TRIAL_ID, trial_id)
            existing = found.info.run_id if found is not None else None
        if existing is not None:
            self.run_id = existing
            self.resumed = True
            _retry(self.client.update_run, self.run_id, status="RUNNING")
        else:
            self.run_id = _retry(self.client.create_run, experiment_id, run_name=run_name, tags=tags).info.run_id
            self.resumed = False
            if known is not None:
                known[trial_id] = self.run_id
        # A new run has no epochs or params yet: no need to ask the server for them.
        self._logged_epochs: set[int] | None = None if self.resumed else set()
        self._logged_params: dict[str, str] | None = None if self.resumed else {}
        self._pending: list[Any] = []
        self._last_flush = time.monotonic()

    def set_tags(self, tags: dict[str, Any]) -> None:
        from mlflow.entities import RunTag

        _retry(self.client.log_batch, self.run_id, tags=[RunTag(k, _param_str(v)) for k, v in tags.items()])

    def log_params(self, params: dict[str, Any]) -> None:
        """Log the params the run lacks (params are immutable in MLflow: a resumed trial has the same
        config, and a changed value would be an error we want to hear about). What the run has is
        asked of the store once (a resumed run), then kept here."""
        if self._logged_params is None:
            self._logged_params = dict(_retry(self.client.get_run, self.run_id).data.params)
        new = {k: v for k, v in params.items() if k not in self._logged_params}
        if new:
            log_params(self.client, self.run_id, new)
            self._logged_params.update({k: _param_str(v) for k, v in new.items()})

    def log_meta(self, meta: dict[str, Any]) -> None:
        """The trial's facts (parameter count, device, data fingerprint, ...) as ``meta.*`` params."""
        had = dict(self._logged_params or {})
        self.log_params({f"meta.{k}": v for k, v in meta.items()})
        if "dataset_fingerprint" in meta and "meta.dataset_fingerprint" not in had:
            self.set_tags({DATASET_FINGERPRINT: meta["dataset_fingerprint"]})

    def logged_epochs(self) -> set[int]:
        if self._logged_epochs is None:
            hist = _retry(self.client.get_metric_history, self.run_id, "train_loss")
            self._logged_epochs = {int(m.step) for m in hist}
        return self._logged_epochs

    # Epochs are sent in batches, at most every FLUSH_SECONDS (one database write per epoch is slow
    # for short epochs). Nothing can be lost by waiting: an epoch reaches log_epoch only after Tune
    # holds the checkpoint whose history contains it, and the end of a trial back-fills from that
    # history whatever the run lacks (sync_history).
    FLUSH_SECONDS = 2.0
    MAX_PENDING_METRICS = 900  # MLflow's log_batch takes at most 1,000 metrics

    def log_epoch(self, record: dict[str, Any]) -> None:
        from mlflow.entities import Metric

        epoch = int(record["epoch"])
        if epoch in self.logged_epochs():
            return
        ts = int(time.time() * 1000)
        self._pending.extend(Metric(k, v, ts, epoch) for k, v in finite_numbers(record, METRIC_KEYS).items())
        self._logged_epochs.add(epoch)
        if (time.monotonic() - self._last_flush >= self.FLUSH_SECONDS
                or len(self._pending) >= self.MAX_PENDING_METRICS):
            self.flush()

    def flush(self) -> None:
        """Send the epochs logged since the last flush."""
        while self._pending:
            batch = self._pending[:self.MAX_PENDING_METRICS]
            _retry(self.client.log_batch, self.run_id, metrics=batch)
            del self._pending[:len(batch)]  # only once sent: a failed send is sent again next time
        self._last_flush = time.monotonic()

    def sync_history(self, history: list[dict[str, Any]]) -> None:
        """Log every epoch of ``history`` that the run does not have yet (after a resume)."""
        for record in history:
            self.log_epoch(record)
        self.flush()

    def finish(self, summary: dict[str, Any], status: str = "FINISHED") -> None:
        from mlflow.entities import Metric

        self.flush()
        ts = int(time.time() * 1000)
        vals = {f"summary.{k}": v for k, v in finite_numbers(summary, summary).items()}
        if vals:
            _retry(self.client.log_batch, self.run_id, metrics=[Metric(k, v, ts, 0) for k, v in vals.items()])
        _retry(self.client.set_terminated, self.run_id, status)
