"""Sweeps: a Python file's list of trials, run as a Ray Tune experiment, logged to MLflow and Parquet.

A sweep file (see sweeps/) defines ``NAME`` and ``trials(data_root) -> list``: each item a
:class:`~rethink_dist.config.TrialConfig` (or its nested dict) for a network trial, or
``{"kind": "expressivity" | "kernel", "params": {...}}`` for a theory trial. It ends with
``if __name__ == "__main__": raise SystemExit(main(__file__))`` so ``python sweeps/X.py`` and
``ray submit CLUSTER.yaml sweeps/X.py`` run it; ``rethink-dist sweep sweeps/X.py`` does the same.

Every trial is checked before Ray starts. Each network trial reports every epoch to Tune with a
checkpoint (model, optimiser, epoch, step, history) and continues from it after a failure
(``FailureConfig``); ``--resume`` restores an interrupted experiment and runs only what is
unfinished. Results: docs/results-format.md.
"""

from __future__ import annotations

import argparse
import dataclasses
import importlib.util
import json
import math
import os
import socket
import sys
import tempfile
import time
import traceback
from pathlib import Path
from typing import Any, Callable

from rethink_dist.config import ConfigError, TrialConfig

THEORY_KINDS = ("expressivity", "kernel")
DEFAULT_STORAGE = "results"
MAX_FAILURES = 5  # retries of one trial (a lost spot node counts as one); -1: unlimited
# A trial sends its epochs to Tune, each send with a checkpoint, at most this often: every epoch
# when epochs are longer, several per send when they are short. A send costs a round trip to the
# driver (the trial waits for it) and a checkpoint, about 40 ms on 2 CPU cores: more than a
# digits MLP's whole epoch. A failure loses at most this much training, redone identically.
REPORT_SECONDS = 1.0


class SweepError(ValueError):
    """A sweep that cannot run (bad file, empty grid, invalid trial): one line, exit 2."""


# ------------------------------------------------------------------------------------------
# Sweep files -> trial specs
# ------------------------------------------------------------------------------------------
@dataclasses.dataclass(frozen=True)
class TrialSpec:
    trial_id: str
    kind: str  # network | expressivity | kernel
    run_name: str
    config: dict[str, Any]  # TrialConfig.to_dict() for networks, the params for theory trials

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    def flat(self) -> dict[str, Any]:
        if self.kind == "network":
            return TrialConfig.from_dict(self.config).to_flat()
        return {f"params.{k}": v for k, v in self.config.items()}


@dataclasses.dataclass
class Sweep:
    name: str
    path: str
    trials: list[TrialSpec]
    doc: str = ""


def _import_file(path: Path):
    if not path.is_file():
        raise SweepError(f"sweep file {str(path)!r} does not exist")
    try:
        compile(path.read_text(), str(path), "exec")
    except SyntaxError as e:
        raise SweepError(f"sweep file {str(path)!r}: syntax error at line {e.lineno}: {e.msg}") from None
    spec = importlib.util.spec_from_file_location(f"rethink_sweep_{path.stem}", path)
    module = importlib.util.module_from_spec(spec)
    try:
        spec.loader.exec_module(module)
    except Exception as e:
        raise SweepError(f"sweep file {str(path)!r} failed to import: {type(e).__name__}: {e}") from None
    return module


def _spec_from_item(item: Any, index: int, path: Path) -> TrialSpec:
    where = f"sweep file {str(path)!r}, trial {index}"
    if isinstance(item, dict) and item.get("kind") in THEORY_KINDS:
        kind, params = item["kind"], item.get("params", {})
        extra = set(item) - {"kind", "params", "name"}
        if extra or not isinstance(params, dict):
            raise SweepError(f"{where}: a theory trial is {{'kind', 'params', 'name'}}, got keys {sorted(item)}")
        try:
            _theory_function(kind, validate=True)(params)
        except (ValueError, ConfigError) as e:
            raise SweepError(f"{where} ({kind}): {e}") from None
        name = item.get("name") or f"{kind}_" + "_".join(f"{k}{v}" for k, v in sorted(params.items()))
        body = {"kind": kind, "params": params}
        return TrialSpec(f"t{index:04d}-{_hash(body)}", kind, name, params)
    try:
        cfg = item if isinstance(item, TrialConfig) else TrialConfig.from_dict(item)
        cfg.validate()
        resolved = cfg.resolved()
    except (ConfigError, ValueError) as e:
        raise SweepError(f"{where}: {e}") from None
    except TypeError:
        raise SweepError(f"{where}: expected a TrialConfig or a dict, got {type(item).__name__}") from None
    return TrialSpec(f"t{index:04d}-{resolved.fingerprint()[:8]}", "network", resolved.name, cfg.to_dict())


def _hash(obj: Any) -> str:
    import hashlib

    return hashlib.sha256(json.dumps(obj, sort_keys=True, default=str).encode()).hexdigest()[:8]


def unique(items: list[Any]) -> list[Any]:
    """The items in order without repeats: sweep files that compose several grids call this."""
    out, seen = [], set()
    for item in items:
        body = item.to_dict() if isinstance(item, TrialConfig) else item
        key = json.dumps(body, sort_keys=True, default=str)
        if key not in seen:
            seen.add(key)
            out.append(item)
    return out


def load_sweep(path: str | os.PathLike, data_root: str | None = None, smoke: bool = False,
               resources: dict[str, float] | None = None) -> Sweep:
    """Import a sweep file and check every trial; raises SweepError naming the file and trial.

    ``resources`` (e.g. ``{"gpus": 0.5}``) overrides every network trial's resources.
    """
    path = Path(path).resolve()
    module = _import_file(path)
    name = getattr(module, "NAME", None)
    if not isinstance(name, str) or not name or any(c in name for c in "/\\ "):
        raise SweepError(f"sweep file {str(path)!r} must define NAME, a name without spaces or slashes")
    build = getattr(module, "trials", None)
    if not callable(build):
        raise SweepError(f"sweep file {str(path)!r} must define trials(data_root) returning a list of trials")
    try:
        items = list(build(data_root))
    except (ConfigError, SweepError) as e:
        raise SweepError(f"sweep file {str(path)!r}: {e}") from None
    except Exception as e:
        raise SweepError(f"sweep file {str(path)!r}: trials() raised {type(e).__name__}: {e}") from None
    if not items:
        raise SweepError(f"sweep file {str(path)!r} has an empty grid: trials() returned no trials")
    if smoke:
        items = smoke_items(items)
        name = f"{name}-smoke"
    if resources:
        items = [_with_resources(item, resources, i, path) for i, item in enumerate(items)]
    specs = [_spec_from_item(item, i, path) for i, item in enumerate(items)]
    seen: dict[str, int] = {}
    for i, s in enumerate(specs):
        key = json.dumps(s.config, sort_keys=True, default=str) + s.kind
        if key in seen:
            raise SweepError(f"sweep file {str(path)!r}: trial {i} repeats trial {seen[key]} ({s.run_name})")
        seen[key] = i
    _check_data(specs, path)
    return Sweep(name, str(path), specs, (module.__doc__ or "").strip())


def _with_resources(item: Any, resources: dict[str, float], index: int, path: Path) -> Any:
    if isinstance(item, dict) and item.get("kind") in THEORY_KINDS:
        return item
    try:
        cfg = item if isinstance(item, TrialConfig) else TrialConfig.from_dict(item)
        return cfg.replace(**{f"resources.{k}": v for k, v in resources.items()})
    except (ConfigError, TypeError) as e:
        raise SweepError(f"sweep file {str(path)!r}, trial {index}: {e}") from None


def smoke_items(items: list[Any], max_trials: int = 4) -> list[Any]:
    """A few tiny trials spread over the grid: 2 epochs on at most 256 training samples."""
    pick = [items[round(i * (len(items) - 1) / max(1, min(max_trials, len(items)) - 1))]
            for i in range(min(max_trials, len(items)))] if len(items) > 1 else list(items)
    out, seen = [], set()
    for item in pick:
        if isinstance(item, dict) and item.get("kind") in THEORY_KINDS:
            small = dict(item)
            small["params"] = {**item.get("params", {}), **_smoke_theory(item["kind"])}
            key = json.dumps(small, sort_keys=True, default=str)
        else:
            cfg = item if isinstance(item, TrialConfig) else TrialConfig.from_dict(item)
            changes = {"optim.epochs": 2, "data.max_train": min(cfg.data.max_train or 256, 256),
                       "stop.stop_when_fitted": False, "resources.gpus": 0.0}
            if cfg.resources.ddp_workers:  # two CPU workers on small images
                changes.update({"resources.ddp_workers": 2, "resources.cpus": 1.0, "optim.batch_size": 16,
                                "data.image_size": min(cfg.data.image_size or 96, 96)})
            small = cfg.replace(**changes)
            key = json.dumps(small.to_dict(), sort_keys=True, default=str)
        if key not in seen:
            seen.add(key)
            out.append(small)
    return out


def _smoke_theory(kind: str) -> dict[str, Any]:
    return {"n": 200, "d": 64} if kind == "expressivity" else {"max_train": 300}


def _check_data(specs: list[TrialSpec], path: Path) -> None:
    """Fail before Ray starts when a trial's data folder is missing."""
    for i, s in enumerate(specs):
        if s.kind != "network":
            continue
        d = s.config["data"]
        for key in ("root", "beton_dir"):
            folder = d.get(key)
            if folder and "://" not in folder and not Path(folder).exists():
                raise SweepError(f"sweep file {str(path)!r}, trial {i} ({s.run_name}): data.{key} {folder!r} does not exist")
        from rethink_dist.data import dataset_info

        if dataset_info(d["name"]).needs_root and d.get("loader") == "memory" and not d.get("root"):
            raise SweepError(f"sweep file {str(path)!r}, trial {i} ({s.run_name}): dataset {d['name']!r} needs "
                             "--data-root")


# ------------------------------------------------------------------------------------------
# The Tune trainable (runs on any node; imports only the installed package)
# ------------------------------------------------------------------------------------------
def _resources(spec: dict[str, Any]) -> dict[str, float]:
    if spec["kind"] != "network":
        return {"cpu": 1}
    r = spec["config"].get("resources", {})
    if r.get("ddp_workers"):
        return {"cpu": 0.1}  # the driver of a data-parallel trial; its workers ask for their own
    res = {"cpu": float(r.get("cpus", 1.0))}
    if r.get("gpus"):
        res["gpu"] = float(r["gpus"])
    return res


def _trial_resources(config: dict[str, Any]) -> dict[str, float]:
    return _resources(config["spec"])


def _row(spec: dict[str, Any], sweep: str, record: dict[str, Any], flat: dict[str, Any]) -> dict[str, Any]:
    row = {"trial_id": spec["trial_id"], "sweep": sweep, "run_name": spec["run_name"], "kind": spec["kind"]}
    row.update(record)
    row.update(flat)
    return row


def trainable(config: dict[str, Any]) -> None:
    """Tune function trainable: one trial, its epochs reported with a checkpoint (see REPORT_SECONDS)."""
    import logging

    from ray import tune

    logging.getLogger("ray.train").setLevel(logging.WARNING)  # not a line per checkpoint
    spec, ctx = config["spec"], config["ctx"]
    if spec["kind"] in THEORY_KINDS:
        return _run_theory(spec, ctx)
    if spec["config"].get("resources", {}).get("ddp_workers"):
        from rethink_dist.distributed import run_ddp_trial

        return run_ddp_trial(spec, ctx)

    import torch

    from rethink_dist.tracking import TrialRun
    from rethink_dist.train import Trial

    cfg = TrialConfig.from_dict(spec["config"])
    trial = Trial(cfg)
    checkpoint = tune.get_checkpoint()
    if checkpoint is not None:
        with checkpoint.as_directory() as d:
            trial.load_state_dict(torch.load(Path(d) / "state.pt", map_location=trial.device, weights_only=False))
    run = TrialRun(ctx["tracking_uri"], ctx["experiment_id"], spec["trial_id"], spec["run_name"],
                   ctx["parent_run_id"], ctx["sweep"])
    run.start(trial.config, trial.meta)
    run.sync_history(trial.history)  # epochs checkpointed before a failure but not yet in MLflow
    import ray

    extra = {"labels_fingerprint": trial.meta.get("labels_fingerprint", ""), "node": socket.gethostname(),
             "node_id": ray.get_runtime_context().get_node_id(), "pid": os.getpid()}
    report_seconds = float(ctx.get("report_seconds", REPORT_SECONDS))
    pending: list[dict[str, Any]] = []  # epochs run since the last report
    last_report = time.monotonic()
    try:
        while not trial.done:
            pending.append({**trial.run_epoch(), **extra, "steps_to_fit": trial.steps_to_fit})
            if not trial.done and time.monotonic() - last_report < report_seconds:
                continue
            with tempfile.TemporaryDirectory(prefix="rethink-ckpt-") as d:
                torch.save(trial.state_dict(), Path(d) / "state.pt")
                (Path(d) / "history.json").write_text(json.dumps(trial.history, default=str))
                # The last epoch's metrics for Tune's table; every epoch of the send in "records"
                tune.report({**pending[-1], "done_training": trial.done, "records": pending},
                            checkpoint=tune.Checkpoint.from_directory(d))
            for record in pending:
                run.log_epoch(record)  # only after Tune holds the checkpoint: exactly once
            pending, last_report = [], time.monotonic()
    except Exception:
        error = traceback.format_exc()[-4000:]
        run.flush()
        run.set_tags({"rethink.last_error": error})
        raise
    run.finish(trial.summary())


def _theory_function(kind: str, validate: bool = False) -> Callable[[dict[str, Any]], Any]:
    """The theory module's entry point for ``kind`` (``validate``: its parameter check only)."""
    from rethink_dist import theory

    name = f"{'validate' if validate else 'run'}_{kind}"
    fn = getattr(theory, name, None)
    if fn is None:
        raise SweepError(f"trial kind {kind!r} is not available (rethink_dist.theory.{name} is missing)")
    return fn


def _run_theory(spec: dict[str, Any], ctx: dict[str, Any]) -> None:
    from ray import tune

    from rethink_dist import theory
    from rethink_dist.tracking import TrialRun, epoch_metrics, log_params

    run = TrialRun(ctx["tracking_uri"], ctx["experiment_id"], spec["trial_id"], spec["run_name"],
                   ctx["parent_run_id"], ctx["sweep"])
    have = set(run.client.get_run(run.run_id).data.params)
    log_params(run.client, run.run_id, {f"params.{k}": v for k, v in spec["config"].items() if f"params.{k}" not in have})
    result = _theory_function(spec["kind"])(spec["config"])
    record = {"epoch": 1, **{k: v for k, v in result.items() if isinstance(v, (int, float, bool)) or v is None}}
    tune.report({**record, "done_training": True})
    run.finish(epoch_metrics(result, result.keys()))  # a theory trial's results are its summary


# ------------------------------------------------------------------------------------------
# The driver
# ------------------------------------------------------------------------------------------
def _connect_ray(address: str | None, num_cpus: int | None) -> None:
    import ray

    if ray.is_initialized():
        return
    os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")
    address = address or os.environ.get("RAY_ADDRESS")
    if address in (None, "", "auto"):
        # Under `ray submit` / `ray job submit` this node belongs to a cluster: join it.
        if address == "auto" or Path(tempfile.gettempdir(), "ray", "ray_current_cluster").exists():
            try:
                ray.init(address="auto", log_to_driver=True)
                return
            except (ConnectionError, RuntimeError):
                if address == "auto":
                    raise
        address = "local"
    if address == "local":
        # address="local" starts a new instance even where another Ray runs on this machine
        ray.init(address="local", num_cpus=num_cpus, include_dashboard=False, log_to_driver=True)
    else:
        ray.init(address=address, log_to_driver=True)


def _storage_paths(storage: str, sweep: str) -> tuple[str, Path | None]:
    """(Tune storage_path, local folder for sweep.json / trials.parquet or None when remote)."""
    if "://" in storage:
        return f"{storage.rstrip('/')}/{sweep}", None
    folder = Path(storage).resolve() / sweep
    return str(folder), folder


def run_sweep(sweep: Sweep, storage: str = DEFAULT_STORAGE, tracking_uri: str | None = None, resume: bool = False,
              max_concurrent: int | None = None, ray_address: str | None = None, num_cpus: int | None = None,
              results_dir: str | None = None, verbose: int = 1, max_failures: int = MAX_FAILURES,
              report_seconds: float = REPORT_SECONDS) -> dict[str, Any]:
    """Run (or resume) a sweep; returns {"results_dir", "parquet", "tracking_uri", "summary": [rows]}."""
    # The classic live trial table, with the columns a researcher watches (set before Tune loads).
    os.environ.setdefault("RAY_AIR_NEW_OUTPUT", "0")
    # Checkpointing every epoch is the point (exact resume); Tune's advice against it is noise here.
    os.environ.setdefault("TUNE_WARN_EXCESSIVE_EXPERIMENT_CHECKPOINT_SYNC_THRESHOLD_S", "0")
    from ray import tune

    from rethink_dist.parquet import ResultsTable
    from rethink_dist.tracking import default_tracking_uri, ensure_experiment, ensure_parent_run, finish_run

    tune_storage, folder = _storage_paths(storage, sweep.name)
    if folder is None:
        if results_dir is None:
            raise SweepError(f"storage {storage!r} is remote: pass --results-dir for sweep.json and trials.parquet")
        folder = Path(results_dir).resolve() / sweep.name
    tune_dir = f"{tune_storage}/tune"
    exists = _can_restore(tune_dir)
    if resume and not exists:
        raise SweepError(f"--resume: no interrupted sweep at {tune_dir!r}; run without --resume to start it")
    if not resume and exists:
        raise SweepError(f"sweep {sweep.name!r} already has results at {tune_dir!r}; pass --resume to continue it, "
                         "or choose another --storage")
    folder.mkdir(parents=True, exist_ok=True)
    tracking_uri = tracking_uri or default_tracking_uri(storage)
    plan = {"sweep": sweep.name, "file": sweep.path, "created": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
            "tracking_uri": tracking_uri, "storage": tune_storage,
            "trials": [{**s.to_dict(), "flat": s.flat()} for s in sweep.trials]}
    plan_path = folder / "sweep.json"
    if resume and plan_path.exists():
        old = json.loads(plan_path.read_text())
        if [t["trial_id"] for t in old["trials"]] != [s.trial_id for s in sweep.trials]:
            raise SweepError(f"--resume: the trials of {sweep.path!r} changed since the sweep started; "
                             "Tune cannot change a running sweep's grid: start a new sweep (another --storage)")
    else:
        tmp = plan_path.with_suffix(".json.tmp")
        tmp.write_text(json.dumps(plan, indent=1, default=str))
        os.replace(tmp, plan_path)

    experiment_id = ensure_experiment(tracking_uri, sweep.name)
    parent = ensure_parent_run(tracking_uri, experiment_id, sweep.name,
                               {"sweep_file": sweep.path, "num_trials": len(sweep.trials), "storage": tune_storage})
    ctx = {"tracking_uri": tracking_uri, "experiment_id": experiment_id, "parent_run_id": parent,
           "sweep": sweep.name, "report_seconds": report_seconds}
    table = ResultsTable(folder / "trials.parquet")
    flats = {s.trial_id: s.flat() for s in sweep.trials}
    callback = ResultsWriter(table, sweep.name, flats, {s.trial_id: s.to_dict() for s in sweep.trials})

    _connect_ray(ray_address, num_cpus)
    fn = tune.with_resources(trainable, _trial_resources)
    run_config = tune.RunConfig(
        name="tune", storage_path=tune_storage,
        failure_config=tune.FailureConfig(max_failures=max_failures),
        checkpoint_config=tune.CheckpointConfig(num_to_keep=2),
        callbacks=[callback.as_tune_callback()], verbose=verbose,
        progress_reporter=tune.CLIReporter(
            metric_columns={"epoch": "epoch", "train_acc": "train acc", "test_acc": "test acc",
                            "steps_to_fit": "fitted at step", "images_per_s": "img/s"},
            parameter_columns={"spec/run_name": "run"}, max_report_frequency=20, print_intermediate_tables=True,
        ),
    )
    status = "FINISHED"
    try:
        with table.live():  # on --resume, Tune's restored callback writes this same table
            if resume:
                tuner = tune.Tuner.restore(tune_dir, fn, resume_unfinished=True, resume_errored=True)
            else:
                param_space = {"spec": tune.grid_search([s.to_dict() for s in sweep.trials]), "ctx": ctx}
                # A trial's actor (its process, with torch and MLflow imported) runs the next trial
                # that asks for the same resources: a fresh process cost ~9 s per trial.
                tuner = tune.Tuner(
                    fn, param_space=param_space, run_config=run_config,
                    tune_config=tune.TuneConfig(max_concurrent_trials=max_concurrent, reuse_actors=True,
                                                trial_name_creator=_trial_name, trial_dirname_creator=_trial_name),
                )
            grid = tuner.fit()  # returns normally after a Ctrl-C too: then some trials are unfinished
            errors, unfinished = 0, 0
            for result in grid:
                tid = ((result.config or {}).get("spec") or {}).get("trial_id")
                done = result.error is None and bool((result.metrics or {}).get("done_training"))
                errors += result.error is not None
                unfinished += result.error is None and not done
                callback.reconcile(tid, result.checkpoint, finished=done)
        status = "FAILED" if errors else "KILLED" if unfinished else "FINISHED"
    except BaseException:
        status = "KILLED"
        raise
    finally:
        table.flush()
        finish_run(tracking_uri, parent, status)
    summary = [rows[-1] for rows in (table.trial_rows(s.trial_id) for s in sweep.trials) if rows]
    return {"results_dir": str(folder), "parquet": str(folder / "trials.parquet"), "tracking_uri": tracking_uri,
            "experiment": sweep.name, "summary": summary, "errors": errors, "unfinished": unfinished,
            "planned": len(sweep.trials)}


def _can_restore(path: str) -> bool:
    from ray import tune

    try:
        return tune.Tuner.can_restore(path)
    except Exception:
        return False


def _trial_name(trial) -> str:
    spec = trial.config.get("spec", {})
    return spec.get("trial_id", trial.trial_id)


class ResultsWriter:
    """Driver side: every reported epoch goes into the Parquet table as it arrives."""

    def __init__(self, table, sweep: str, flats: dict[str, dict[str, Any]], specs: dict[str, dict[str, Any]]):
        self.table, self.sweep, self.flats, self.specs = table, sweep, flats, specs

    def on_trial_result(self, iteration, trials, trial, result, **info):
        tid = trial.config.get("spec", {}).get("trial_id")  # result["trial_id"] is Tune's own id
        if tid not in self.specs:
            return
        for epoch in result.get("records") or [result]:  # a report carries one epoch or several
            record = {k: epoch[k] for k in _RECORD_KEYS if k in epoch}
            record["finished"] = False
            self.table.add(_row(self.specs[tid], self.sweep, record, self.flats[tid]))

    def on_trial_complete(self, iteration, trials, trial, **info):
        tid = trial.config.get("spec", {}).get("trial_id")
        self.reconcile(tid, trial.checkpoint, finished=True)

    def reconcile(self, tid: str | None, checkpoint, finished: bool) -> None:
        """Rewrite a trial's rows from its checkpoint's history: nothing lost, nothing doubled."""
        if tid not in self.specs:
            return
        rows = self.table.trial_rows(tid)
        if checkpoint is not None:
            try:
                with checkpoint.as_directory() as d:
                    hist_path = Path(d) / "history.json"
                    if hist_path.exists():
                        history = json.loads(hist_path.read_text())
                        known = {int(r["epoch"]): r for r in rows}
                        rows = []
                        for rec in history:
                            base = {k: v for k, v in known.get(int(rec["epoch"]), {}).items()
                                    if k in ("node", "node_id", "pid", "labels_fingerprint", "steps_to_fit")}
                            rows.append(_row(self.specs[tid], self.sweep, {**rec, **base}, self.flats[tid]))
            except Exception as e:  # keep the rows we have; say so
                print(f"rethink-dist: could not read the checkpoint of {tid}: {e}", file=sys.stderr)
        if rows:
            for r in rows:
                r["finished"] = False
            rows[-1]["finished"] = finished
            self.table.replace_trial(tid, rows)

    def on_experiment_end(self, trials, **info):
        self.table.flush()

    def as_tune_callback(self):
        """This writer as a ray.tune.Callback (built here so importing this module needs no Ray)."""
        from ray.tune import Callback

        writer = self

        class _Callback(Callback):
            def on_trial_result(self, iteration, trials, trial, result, **info):
                writer.on_trial_result(iteration, trials, trial, result, **info)

            def on_trial_complete(self, iteration, trials, trial, **info):
                writer.on_trial_complete(iteration, trials, trial, **info)

            def on_experiment_end(self, trials, **info):
                writer.on_experiment_end(trials, **info)

        return _Callback()


_RECORD_KEYS = (
    "epoch", "step", "train_loss", "train_acc", "train_acc_clean", "train_acc_corrupted", "test_acc", "test_top5",
    "best_test_acc", "lr", "images_per_s", "train_seconds", "eval_seconds", "seconds", "steps_to_fit",
    "labels_fingerprint", "node", "node_id", "pid",
    # theory trials
    "n", "d", "params", "max_abs_error", "min_eigenvalue", "n_train", "n_test", "train_error", "test_error", "norm",
)


# ------------------------------------------------------------------------------------------
# Command line (sweep files call main(__file__); `rethink-dist sweep FILE` calls it too)
# ------------------------------------------------------------------------------------------
def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--data-root", help="folder with the raw dataset files (CIFAR-10 batches, ImageNet folders)")
    p.add_argument("--storage", default=DEFAULT_STORAGE,
                   help="folder or URI (s3://...) for Tune checkpoints and results (default ./results)")
    p.add_argument("--results-dir", help="local folder for sweep.json and trials.parquet when --storage is remote")
    p.add_argument("--tracking-uri", help="MLflow tracking URI (default sqlite:///<storage>/mlflow.db)")
    p.add_argument("--resume", action="store_true", help="continue an interrupted sweep: only unfinished trials run")
    p.add_argument("--smoke", action="store_true", help="a few tiny trials of this sweep (about a minute)")
    p.add_argument("--max-concurrent", type=int, help="at most this many trials at once")
    p.add_argument("--max-failures", type=int, default=MAX_FAILURES,
                   help=f"retries of a trial whose worker or node died (default {MAX_FAILURES}; -1 unlimited, "
                        "for long runs on spot nodes)")
    p.add_argument("--cpus-per-trial", type=float, help="override every network trial's CPUs")
    p.add_argument("--gpus-per-trial", type=float,
                   help="override every network trial's GPUs (fractions share a GPU: 0.25 = four trials per GPU)")
    p.add_argument("--report-seconds", type=float, default=REPORT_SECONDS,
                   help=f"a trial reports to Tune (with a checkpoint) at most this often, several short epochs "
                        f"per report (default {REPORT_SECONDS:g}; 0: every epoch)")
    p.add_argument("--ray-address", help="Ray cluster address; 'local' starts a new local Ray "
                                         "(default: $RAY_ADDRESS, else this node's cluster, else local)")
    p.add_argument("--num-cpus", type=int, help="CPUs of a local Ray (default: all)")
    p.add_argument("--dry-run", action="store_true", help="check the sweep and list its trials; run nothing")


THEORY_COLUMNS = {"expressivity": ("n", "d", "params", "max_abs_error", "min_eigenvalue"),
                  "kernel": ("n_train", "train_error", "test_error", "norm")}


def print_summary(rows: list[dict[str, Any]], stream=sys.stdout) -> None:
    """The final table: accuracies for network trials, the measured quantities for theory trials."""
    from rethink_dist.metrics import fmt

    if not rows:
        print("no results", file=stream)
        return
    width = max(len(r["run_name"]) for r in rows)
    nets = [r for r in rows if r.get("kind", "network") == "network"]
    if nets:
        print(f"{'trial':<{width}}  epochs  train%  test%  steps_to_fit", file=stream)
        for r in nets:
            stf = r.get("steps_to_fit")
            stf = "-" if stf is None or stf != stf else int(stf)
            print(f"{r['run_name']:<{width}}  {r.get('epoch', '-'):>6}  {fmt(r.get('train_acc')):>6}  "
                  f"{fmt(r.get('test_acc')):>5}  {stf:>12}", file=stream)
    for r in rows:
        cols = THEORY_COLUMNS.get(r.get("kind", "network"))
        if cols:
            values = "  ".join(f"{c}={fmt(r.get(c), pct=False)}" for c in cols)
            print(f"{r['run_name']:<{width}}  {values}", file=stream)


def run_from_args(path: str, args: argparse.Namespace) -> int:
    if args.max_concurrent is not None and args.max_concurrent < 1:
        raise SweepError(f"--max-concurrent must be >= 1, got {args.max_concurrent}")
    if args.max_failures < -1:
        raise SweepError(f"--max-failures must be >= -1 (-1: unlimited), got {args.max_failures}")
    if not (math.isfinite(args.report_seconds) and args.report_seconds >= 0):
        raise SweepError(f"--report-seconds must be a finite number >= 0 (0: every epoch), got {args.report_seconds}")
    overrides = {k: v for k, v in (("cpus", args.cpus_per_trial), ("gpus", args.gpus_per_trial)) if v is not None}
    sweep = load_sweep(path, data_root=args.data_root, smoke=args.smoke, resources=overrides)
    if args.dry_run:
        for s in sweep.trials:
            print(f"{s.trial_id}  {s.kind:<12} {s.run_name}")
        print(f"{len(sweep.trials)} trials in sweep {sweep.name!r}")
        return 0
    print(f"sweep {sweep.name!r}: {len(sweep.trials)} trials", file=sys.stderr, flush=True)
    out = run_sweep(sweep, storage=args.storage, tracking_uri=args.tracking_uri, resume=args.resume,
                    max_concurrent=args.max_concurrent, ray_address=args.ray_address, num_cpus=args.num_cpus,
                    results_dir=args.results_dir, max_failures=args.max_failures,
                    report_seconds=args.report_seconds)
    print(sweep_outcome(sweep.name, out))
    print_summary(out["summary"])
    print(f"\nParquet table: {out['parquet']}")
    print(f"MLflow store:  {out['tracking_uri']}  (experiment {out['experiment']!r})")
    if out["tracking_uri"].startswith("sqlite:"):
        print(f"Open the MLflow UI: mlflow ui --backend-store-uri {out['tracking_uri']} --host 127.0.0.1")
    return exit_code(out)


def sweep_outcome(name: str, out: dict[str, Any]) -> str:
    """The line after a sweep: how many trials have results, failed, or were left unfinished."""
    line = f"\nsweep {name!r}: {len(out['summary'])}/{out['planned']} trials with results, {out['errors']} failed"
    if out["unfinished"]:
        line += f", {out['unfinished']} unfinished (interrupted: continue with --resume)"
    return line


def exit_code(out: dict[str, Any]) -> int:
    """1 when a trial failed, 130 (as for Ctrl-C) when the sweep was interrupted, else 0."""
    return 1 if out["errors"] else 130 if out["unfinished"] else 0


def main(path: str, argv: list[str] | None = None) -> int:
    """Entry point of a sweep file run as a script."""
    parser = argparse.ArgumentParser(prog=Path(path).name, description=f"Run the sweep {Path(path).name}.")
    add_arguments(parser)
    args = parser.parse_args(argv)
    try:
        return run_from_args(path, args)
    except (SweepError, ConfigError) as e:
        print(f"{Path(path).name}: error: {e}", file=sys.stderr)
        return 2

