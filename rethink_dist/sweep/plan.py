"""A sweep's plan: a sweep file read and checked into trial specs, before (and without) Ray.

A sweep file (see sweeps/) defines ``NAME`` and ``trials(data_root) -> list``: each item a
:class:`~rethink_dist.config.TrialConfig` (or its nested dict) for a network trial, or
``{"kind": "expressivity" | "kernel", "params": {...}, "name": optional}`` for a theory trial.
Every trial is checked here, each error naming the file, the trial's index and its run name.

A sweep whose models or data sets are the user's own code may define ``RUNTIME_ENV``, Ray's
runtime environment for every trial (``py_modules``, ``working_dir``, ``env_vars``, ``pip``, ...):
local paths in ``py_modules`` and ``working_dir`` are relative to the sweep file, and this process
imports from them too (it checks the trials). docs/own-code.md shows it.
"""

from __future__ import annotations

import dataclasses
import hashlib
import importlib.util
import json
import os
import sys
from pathlib import Path
from typing import Any, Callable

from rethink_dist import theory
from rethink_dist.config import TrialConfig, deferred_checks
from rethink_dist.errors import ConfigError, SweepError
from rethink_dist.external import dataset_facts
from rethink_dist.sweep import synthetic


# ------------------------------------------------------------------------------------------
# The kinds of trial: how each is checked and what it asks of Ray
# ------------------------------------------------------------------------------------------
@dataclasses.dataclass(frozen=True)
class TrialKind:
    name: str
    check: Callable[[Any], Any]  # the item's config -> the checked config (ConfigError: one line)
    smoke: dict[str, Any]  # the changes that make a tiny trial of it
    run: Callable[[dict[str, Any]], dict[str, Any]] | None = None  # a theory trial: params -> its result

    @property
    def theory(self) -> bool:
        """One record (the construction's result) instead of epochs."""
        return self.run is not None


def _check_network(item: Any) -> TrialConfig:
    cfg = item if isinstance(item, TrialConfig) else TrialConfig.from_dict(item)
    cfg.validate()
    from rethink_dist.train import preflight  # torch: imported only when a sweep is checked

    preflight(cfg)  # an outside model or data set: built and loaded once here, before Ray
    return cfg


KINDS: dict[str, TrialKind] = {
    "network": TrialKind("network", _check_network, {}),
    "expressivity": TrialKind("expressivity", theory.validate_expressivity, {"n": 200, "d": 64},
                              theory.run_expressivity),
    "kernel": TrialKind("kernel", theory.validate_kernel, {"max_train": 300}, theory.run_kernel),
    # reports made-up epochs without training: the sweep machinery's own cost (bench/driver.py)
    "synthetic": TrialKind("synthetic", synthetic.validate, {"epochs": 3}),
}
THEORY_KINDS = tuple(k for k, v in KINDS.items() if v.theory)


def kind_of(item: Any) -> str:
    """``network`` for a TrialConfig or its dict (which has no ``kind`` key), else the kind the item names."""
    return item["kind"] if isinstance(item, dict) and "kind" in item else "network"


def placed_device(device: str, gpu_ids: list) -> str:
    """The device of a trial on a Ray worker. ``auto`` is CUDA only when the trial holds GPUs: Ray
    does not hide a node's GPUs from a task given none, and such trials would pile onto GPU 0."""
    if device != "auto":
        return device
    return "cuda" if gpu_ids else "cpu"


@dataclasses.dataclass(frozen=True)
class TrialSpec:
    trial_id: str
    kind: str  # a key of KINDS
    run_name: str
    config: dict[str, Any]  # TrialConfig.to_dict() for networks, the params for theory trials

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    def flat(self) -> dict[str, Any]:
        if self.kind == "network":
            return TrialConfig.from_dict(self.config).to_flat()
        return {f"params.{k}": v for k, v in self.config.items()}

    def resources(self) -> dict[str, float]:
        """What the trial's own Tune process asks of Ray."""
        if self.kind == "synthetic":
            return {"cpu": float(self.config.get("cpus", 1.0))}
        if self.kind != "network":
            # device='cuda' (a kernel solve on a GPU) holds a whole GPU; 'auto' runs where it is placed
            return {"cpu": 1, "gpu": 1} if self.config.get("device") == "cuda" else {"cpu": 1}
        r = self.config.get("resources", {})
        if r.get("ddp_workers"):
            return {"cpu": 0.1}  # the driver of a data-parallel trial; its workers ask for their own
        res = {"cpu": float(r.get("cpus", 1.0))}
        if r.get("gpus"):
            res["gpu"] = float(r["gpus"])
        return res


@dataclasses.dataclass
class Sweep:
    name: str
    path: str
    trials: list[TrialSpec]
    doc: str = ""
    runtime_env: dict[str, Any] | None = None  # Ray's runtime environment of every trial (RUNTIME_ENV)


RUNTIME_ENV_PATH_KEYS = ("working_dir", "py_modules")


def runtime_env_of(module: Any, path: Path, where: str) -> dict[str, Any] | None:
    """The sweep file's ``RUNTIME_ENV`` with its local paths made absolute (relative to the file), and
    those paths importable here: the trials are checked in this process, which imports the user's code."""
    env = getattr(module, "RUNTIME_ENV", None)
    if env is None:
        return None
    if not isinstance(env, dict):
        raise SweepError(f"{where}: RUNTIME_ENV must be a dict (Ray's runtime_env), got {type(env).__name__}")
    env = dict(env)

    def local(value: Any, key: str) -> Any:
        if not isinstance(value, str) or "://" in value:
            return value  # a remote URI (s3://, gs://) or a module object: Ray takes it as it is
        p = (path.parent / value).resolve()
        if not p.exists():
            raise SweepError(f"{where}: RUNTIME_ENV[{key!r}] names {value!r}, which does not exist at {str(p)!r}; "
                             "valid: a path relative to the sweep file")
        return str(p)

    if "working_dir" in env:
        env["working_dir"] = local(env["working_dir"], "working_dir")
    if "py_modules" in env:
        if not isinstance(env["py_modules"], (list, tuple)):
            raise SweepError(f"{where}: RUNTIME_ENV['py_modules'] must be a list, got {type(env['py_modules']).__name__}")
        env["py_modules"] = [local(v, "py_modules") for v in env["py_modules"]]
    importable = []
    if isinstance(env.get("working_dir"), str) and Path(env["working_dir"]).is_dir():
        importable.append(env["working_dir"])
    for m in env.get("py_modules", []):
        if isinstance(m, str) and Path(m).is_dir():
            importable.append(str(Path(m).parent))  # a package folder: import it by its name
    for folder in importable:
        if folder not in sys.path:
            sys.path.append(folder)
    return env


def spec_from_item(item: Any, index: int, where: str) -> TrialSpec:
    """The checked spec of one trial; SweepError names ``where``, the index and the run name."""
    kind = kind_of(item)
    here = f"{where}, trial {index}"
    if kind != "network":
        if kind not in KINDS:
            raise SweepError(f"{here}: unknown trial kind {kind!r}; valid: {', '.join(KINDS)}")
        params = item.get("params", {})
        extra = set(item) - {"kind", "params", "name"}
        if extra or not isinstance(params, dict):
            raise SweepError(f"{here}: a theory trial is {{'kind', 'params', 'name'}}, got keys {sorted(item)}")
        name = item.get("name") or f"{kind}_" + "_".join(f"{k}{v}" for k, v in sorted(params.items()))
        try:
            KINDS[kind].check(params)
        except (ValueError, ConfigError) as e:
            raise SweepError(f"{here} ({kind}): {e} (run {name})") from None
        body = {"kind": kind, "params": params}
        return TrialSpec(f"t{index:04d}-{_hash(body)}", kind, name, params)
    if not isinstance(item, (TrialConfig, dict)):
        raise SweepError(f"{here}: expected a TrialConfig or a dict, got {type(item).__name__}")
    name = _network_name(item)
    try:
        cfg = KINDS["network"].check(item)
        resolved = cfg.resolved()
    except (ConfigError, ValueError) as e:
        raise SweepError(f"{here}: {e}{f' (run {name})' if name else ''}") from None
    return TrialSpec(f"t{index:04d}-{resolved.fingerprint()[:8]}", "network", resolved.name, cfg.to_dict())


def _network_name(item: Any) -> str | None:
    """The run name of a network trial as far as it can be built from a possibly invalid item."""
    try:
        with deferred_checks():
            cfg = item if isinstance(item, TrialConfig) else TrialConfig.from_dict(item)
            return cfg.resolved().name
    except (ConfigError, ValueError, TypeError, KeyError, AttributeError):
        return item.get("name") if isinstance(item, dict) else None


def _hash(obj: Any) -> str:
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


def _call_trials(build, what: str, data_root: str | None, where: str) -> list:
    """The list a sweep file's ``trials`` (or ``smoke_trials``) builds; its errors as one SweepError line."""
    try:
        with deferred_checks():  # each trial is checked later, by index and name
            return list(build(data_root))
    except (ConfigError, SweepError) as e:
        raise SweepError(f"{where}: {e}") from None
    except Exception as e:
        raise SweepError(f"{where}: {what}() raised {type(e).__name__}: {e}") from None


def load_sweep(path: str | os.PathLike, data_root: str | None = None, smoke: bool = False,
               resources: dict[str, float] | None = None) -> Sweep:
    """Import a sweep file and check every trial; raises SweepError naming the file and trial.

    ``resources`` (e.g. ``{"gpus": 0.5}``) overrides every network trial's resources.
    """
    path = Path(path).resolve()
    where = f"sweep file {str(path)!r}"
    module = _import_file(path)
    runtime_env = runtime_env_of(module, path, where)  # before the trials are checked: they import from it
    name = getattr(module, "NAME", None)
    if not isinstance(name, str) or not name or any(c in name for c in "/\\ "):
        raise SweepError(f"{where} must define NAME, a name without spaces or slashes")
    build = getattr(module, "trials", None)
    if not callable(build):
        raise SweepError(f"{where} must define trials(data_root) returning a list of trials")
    items = _call_trials(build, "trials", data_root, where)
    if not items:
        raise SweepError(f"{where} has an empty grid: trials() returned no trials")
    # Every trial as written is checked first, so an error names the trial the file built.
    specs = [spec_from_item(item, i, where) for i, item in enumerate(items)]
    if smoke:
        # A sweep file may say what its smoke run is (smoke_trials(data_root)); else a few of its trials, made tiny.
        own = getattr(module, "smoke_trials", None)
        items = _call_trials(own, "smoke_trials", data_root, where) if callable(own) else smoke_items(items)
        if not items:
            raise SweepError(f"{where}: smoke_trials() returned no trials")
        name = f"{name}-smoke"
    if resources:
        items = [_with_resources(item, resources, i, where) for i, item in enumerate(items)]
    if smoke or resources:
        specs = [spec_from_item(item, i, where) for i, item in enumerate(items)]
    seen: dict[str, int] = {}
    for i, s in enumerate(specs):
        key = json.dumps(s.config, sort_keys=True, default=str) + s.kind
        if key in seen:
            raise SweepError(f"{where}: trial {i} repeats trial {seen[key]} ({s.run_name})")
        seen[key] = i
    _check_data(specs, where)
    return Sweep(name, str(path), specs, (module.__doc__ or "").strip(), runtime_env)


def _with_resources(item: Any, resources: dict[str, float], index: int, where: str) -> Any:
    if kind_of(item) != "network":
        return item
    try:
        cfg = item if isinstance(item, TrialConfig) else TrialConfig.from_dict(item)
        if cfg.resources.ddp_workers and not float(resources.get("gpus", 0)).is_integer():
            # NCCL needs whole GPUs: a data-parallel trial keeps its own (one per worker)
            resources = {k: v for k, v in resources.items() if k != "gpus"}
        return cfg.replace(**{f"resources.{k}": v for k, v in resources.items()})
    except (ConfigError, TypeError) as e:
        raise SweepError(f"{where}, trial {index}: {e}") from None


def smoke_items(items: list[Any], max_trials: int = 4) -> list[Any]:
    """A few tiny trials spread over the grid: 2 epochs on at most 256 training samples."""
    pick = [items[round(i * (len(items) - 1) / max(1, min(max_trials, len(items)) - 1))]
            for i in range(min(max_trials, len(items)))] if len(items) > 1 else list(items)
    out, seen = [], set()
    for item in pick:
        kind = kind_of(item)
        if kind != "network":
            small = dict(item)
            small["params"] = {**item.get("params", {}), **KINDS[kind].smoke}
            key = json.dumps(small, sort_keys=True, default=str)
        else:
            cfg = item if isinstance(item, TrialConfig) else TrialConfig.from_dict(item)
            changes = {"optim.epochs": 2, "data.max_train": min(cfg.data.max_train or 256, 256),
                       "stop.stop_when_fitted": False, "resources.gpus": 0.0}
            if cfg.resources.ddp_workers:  # two CPU workers on small images
                changes.update({"resources.ddp_workers": 2, "resources.cpus": 1.0, "optim.batch_size": 16,
                                "resources.ddp_min_workers": None if cfg.resources.ddp_min_workers is None else 1,
                                "data.image_size": min(cfg.data.image_size or 96, 96)})
            small = cfg.replace(**changes)
            key = json.dumps(small.to_dict(), sort_keys=True, default=str)
        if key not in seen:
            seen.add(key)
            out.append(small)
    return out


def _check_data(specs: list[TrialSpec], where: str) -> None:
    """Fail before Ray starts when a trial's data folder is missing."""
    for i, s in enumerate(specs):
        if s.kind != "network":
            continue
        d = s.config["data"]
        for key in ("root", "beton_dir"):
            folder = d.get(key)
            if folder and "://" not in folder and not Path(folder).exists():
                raise SweepError(f"{where}, trial {i} ({s.run_name}): data.{key} {folder!r} does not exist")
        if dataset_facts(d["name"]).needs_root and d.get("loader") == "memory" and not d.get("root"):
            raise SweepError(f"{where}, trial {i} ({s.run_name}): dataset {d['name']!r} needs --data-root")
