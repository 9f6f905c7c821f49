"""Load a sweep's results, from its folder (trials.parquet, sweep.json) or from MLflow.

Both roads give one :class:`Results`: the per-epoch rows of docs/results-format.md, the planned
trials, and where the sweep's MLflow parent run lives (if anywhere). Derived columns used by the
tables and figures are added once here (:func:`_derive`).
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pandas as pd

from rethink_dist.errors import ReportError
from rethink_dist.parquet import read_results
from rethink_dist.records import METRIC_KEYS, ROLE, SAMPLES_DIR, TRIAL_ID
from rethink_dist.report.paper import arch_label

REQUIRED = ("trial_id", "epoch", "step", "train_loss", "train_acc", "test_acc", "finished",
            "data.name", "model.name", "corruption.kind", "corruption.level", "seed")
OPTIONAL_FLOAT = ("train_acc_clean", "train_acc_corrupted", "heldout_acc", "test_top5", "best_test_acc", "steps_to_fit",
                  "reg.weight_decay", "reg.dropout", "optim.epochs", "seconds")
OPTIONAL_BOOL = {"reg.augment": False, "reg.batch_norm": True}



@dataclass
class Results:
    sweep: str
    source: str  # the folder, or "URI experiment NAME"
    rows: pd.DataFrame  # one row per trial x epoch, plus the derived columns of _derive
    planned: list[dict[str, Any]] = field(default_factory=list)  # {"trial_id", "run_name", "flat"}
    tracking_uri: str | None = None
    experiment: str | None = None
    # Planned trials known only by count: from MLflow, the parent run's num_trials minus the runs seen.
    not_started: int = 0
    # Per-sample memorization records (records.SAMPLE_KEYS) of the trials that kept them, from the
    # folder's samples/*.parquet (None: none kept, or results read from MLflow).
    samples: pd.DataFrame | None = None

    def finals(self) -> pd.DataFrame:
        """One row per finished trial: its last epoch."""
        r = self.rows
        done = r.loc[r["finished"], "trial_id"].unique()
        last = r[r["trial_id"].isin(done)].sort_values(["trial_id", "epoch"]).groupby("trial_id").tail(1)
        return last.reset_index(drop=True)

    def curves(self) -> pd.DataFrame:
        """Every epoch row of the finished trials, in epoch order."""
        r = self.rows
        done = r.loc[r["finished"], "trial_id"].unique()
        return r[r["trial_id"].isin(done)].sort_values(["trial_id", "epoch"]).reset_index(drop=True)

    def unfinished(self) -> list[dict[str, Any]]:
        """Planned trials without a finished row: their name and how far they got."""
        r = self.rows
        done = set(r.loc[r["finished"], "trial_id"])
        out = []
        for t in self.planned:
            if t["trial_id"] in done:
                continue
            mine = r[r["trial_id"] == t["trial_id"]]
            last = mine.sort_values("epoch").iloc[-1] if len(mine) else None
            epochs = t.get("flat", {}).get("optim.epochs")
            out.append({
                "trial_id": t["trial_id"],
                "run_name": t.get("run_name") or t["trial_id"],
                "epoch": None if last is None else int(last["epoch"]),
                "epochs": None if epochs is None else int(epochs),
                "train_acc": None if last is None else _num(last["train_acc"]),
                "test_acc": None if last is None else _num(last["test_acc"]),
            })
        return out

    def datasets(self) -> list[str]:
        names = set(self.rows["data.name"].dropna())
        names |= {t["flat"]["data.name"] for t in self.planned if t.get("flat", {}).get("data.name")}
        return sorted(names)


def _num(v: Any) -> float | None:
    try:
        f = float(v)
    except (TypeError, ValueError):
        return None
    return None if math.isnan(f) else f


# ---------------------------------------------------------------------------------------- folder
def load_folder(path: str | Path) -> Results:
    """Read ``<storage>/<sweep>/`` (trials.parquet and sweep.json), or a trials.parquet (the folder of
    parts a sweep writes, or one Parquet file)."""
    p = Path(path)
    if p.suffix == ".parquet" and p.exists():
        folder, parquet = p.parent, p
    elif p.is_dir():
        folder, parquet = p, p / "trials.parquet"
    else:
        raise ReportError(f"results {str(path)!r} not found; expected a sweep folder (<storage>/<sweep>) "
                          "or a trials.parquet file")
    plan_file = folder / "sweep.json"
    if not parquet.exists() and not plan_file.exists():
        inner = sorted(d.name for d in p.iterdir() if (d / "trials.parquet").exists() or (d / "sweep.json").exists()) \
            if p.is_dir() else []
        hint = f"; sweeps inside it: {', '.join(inner)}" if inner else ""
        raise ReportError(f"no trials.parquet or sweep.json in {str(folder)!r}{hint}")
    plan: dict[str, Any] = {}
    if plan_file.exists():
        try:
            plan = json.loads(plan_file.read_text())
        except (OSError, json.JSONDecodeError) as e:
            raise ReportError(f"cannot read {plan_file}: {e}") from None
    if parquet.exists():
        try:
            rows = read_results(parquet)
        except Exception as e:  # pyarrow raises several types for a damaged file
            raise ReportError(f"cannot read {parquet}: {str(e).splitlines()[0] if str(e) else type(e).__name__}") from None
    else:
        rows = pd.DataFrame({c: [] for c in REQUIRED})
    planned = _planned(plan, rows)
    sweep = plan.get("sweep") or (str(rows["sweep"].iloc[0]) if "sweep" in rows and len(rows) else folder.name)
    # Where the sweep logged to MLflow: sweep.json says; a local sweep's default is <storage>/mlflow.db.
    store = folder.parent / "mlflow.db"
    uri = plan.get("tracking_uri") or (f"sqlite:///{store.resolve()}" if store.exists() else None)
    return Results(sweep, str(folder), _derive(rows, str(parquet)), planned, uri, sweep if uri else None,
                   samples=_samples(folder / SAMPLES_DIR))


def _samples(folder: Path) -> pd.DataFrame | None:
    """Every trial's per-sample records in ``folder`` (samples/<trial_id>.parquet), or None."""
    files = sorted(folder.glob("*.parquet")) if folder.is_dir() else []
    if not files:
        return None
    try:
        df = pd.concat([pd.read_parquet(f) for f in files], ignore_index=True)
    except Exception as e:  # pyarrow raises several types for a damaged file
        raise ReportError(f"cannot read the per-sample records in {folder}: "
                          f"{str(e).splitlines()[0] if str(e) else type(e).__name__}") from None
    # Files of an earlier version: training samples only, every one trained on.
    if "split" not in df:
        df["split"] = "train"
    if "in_subset" not in df:
        df["in_subset"] = True
    df["split"] = df["split"].fillna("train")
    df["in_subset"] = df["in_subset"].fillna(df["split"] == "train").astype(bool)
    return df


def _planned(plan: dict[str, Any], rows: pd.DataFrame) -> list[dict[str, Any]]:
    """The planned trials from sweep.json; without it, the trials that have rows."""
    if plan.get("trials"):
        return [{"trial_id": t["trial_id"], "run_name": t.get("run_name"), "flat": t.get("flat") or {}}
                for t in plan["trials"] if t.get("kind", "network") == "network"]
    out = []
    for tid, g in rows.groupby("trial_id", sort=True) if len(rows) else []:
        first = g.iloc[0]
        flat = {c: first[c] for c in g.columns if "." in c}
        out.append({"trial_id": tid, "run_name": first.get("run_name"), "flat": flat})
    return out


# ---------------------------------------------------------------------------------------- mlflow
def load_mlflow(tracking_uri: str, experiment: str) -> Results:
    """Read a sweep from MLflow: the child runs (``rethink.role=trial``) of ``experiment``."""
    from mlflow.exceptions import MlflowException
    from mlflow.tracking import MlflowClient

    client = MlflowClient(tracking_uri)
    try:
        exp = client.get_experiment_by_name(experiment)
        if exp is None:
            names = sorted(e.name for e in client.search_experiments())
            raise ReportError(f"no MLflow experiment {experiment!r} at {tracking_uri}; "
                              f"valid: {', '.join(names) or 'none'}")
        runs = _search_all(client, exp.experiment_id, f"tags.`{ROLE}` = 'trial'")
        parents = _search_all(client, exp.experiment_id, f"tags.`{ROLE}` = 'sweep'")
    except MlflowException as e:
        raise ReportError(f"cannot read MLflow at {tracking_uri}: {str(e).splitlines()[0]}") from None
    except OSError as e:
        raise ReportError(f"cannot reach MLflow at {tracking_uri}: {e}") from None

    records, planned = [], []
    for run in runs:
        tid = run.data.tags.get(TRIAL_ID, run.info.run_id)
        flat = {k: _param(v) for k, v in run.data.params.items()}
        planned.append({"trial_id": tid, "run_name": run.info.run_name, "flat": flat})
        by_epoch: dict[int, dict[str, Any]] = {}
        for key in METRIC_KEYS:
            if key not in run.data.metrics:
                continue
            for m in client.get_metric_history(run.info.run_id, key):
                by_epoch.setdefault(int(m.step), {})[key] = m.value
        last = max(by_epoch) if by_epoch else None
        # Runs logged before steps_to_fit was an epoch metric have it once, as a summary metric.
        if last is not None and "steps_to_fit" not in by_epoch[last] and "summary.steps_to_fit" in run.data.metrics:
            by_epoch[last]["steps_to_fit"] = run.data.metrics["summary.steps_to_fit"]
        for epoch in sorted(by_epoch):
            rec = {"trial_id": tid, "sweep": experiment, "run_name": run.info.run_name, "epoch": epoch,
                   "finished": run.info.status == "FINISHED" and epoch == last, **flat}
            rec.update(by_epoch[epoch])
            records.append(rec)
    rows = pd.DataFrame.from_records(records) if records else pd.DataFrame({c: [] for c in REQUIRED})
    for c in REQUIRED:
        if c not in rows:
            rows[c] = float("nan") if c == "step" else None
    num_trials = _param(parents[0].data.params.get("num_trials", "0")) if parents else 0
    not_started = max(0, num_trials - len(runs)) if isinstance(num_trials, int) else 0
    return Results(experiment, f"{tracking_uri} experiment {experiment}", _derive(rows, f"MLflow experiment {experiment!r}"),
                   planned, tracking_uri, experiment, not_started)


def _search_all(client: Any, experiment_id: str, filter_string: str) -> list[Any]:
    runs, token = [], None
    while True:
        page = client.search_runs([experiment_id], filter_string, max_results=1000, page_token=token)
        runs += list(page)
        token = page.token
        if not token:
            return runs


def _param(text: str) -> Any:
    """MLflow params are strings: turn the flat config's values back into bool, None, int, float."""
    if text in ("True", "False"):
        return text == "True"
    if text == "None":
        return None
    for cast in (int, float):
        try:
            return cast(text)
        except ValueError:
            pass
    return text


def find_parent_run(tracking_uri: str, experiment: str) -> str | None:
    """The run id of the sweep's parent run (tag ``rethink.role=sweep``), or None."""
    from mlflow.tracking import MlflowClient

    client = MlflowClient(tracking_uri)
    exp = client.get_experiment_by_name(experiment)
    if exp is None:
        return None
    runs = client.search_runs([exp.experiment_id], f"tags.`{ROLE}` = 'sweep'", max_results=1,
                              order_by=["attributes.start_time DESC"])
    return runs[0].info.run_id if runs else None


def log_to_parent_run(tracking_uri: str, experiment: str, folder: str | Path) -> str | None:
    """Log ``folder`` as artifacts ``report/`` of the sweep's parent run; its run id, or None if none."""
    from mlflow.tracking import MlflowClient

    parent = find_parent_run(tracking_uri, experiment)
    if parent is not None:
        MlflowClient(tracking_uri).log_artifacts(parent, str(folder), artifact_path="report")
    return parent


# ---------------------------------------------------------------------------------------- derive
def _derive(rows: pd.DataFrame, where: str) -> pd.DataFrame:
    """Check the contract's columns, coerce types, and add the columns the report groups by."""
    missing = [c for c in REQUIRED if c not in rows.columns]
    if missing:
        raise ReportError(f"{where} lacks column(s) {', '.join(missing)}; expected the columns of docs/results-format.md")
    r = rows.copy()
    if "kind" in r:
        r = r[r["kind"].fillna("network") == "network"]
    for c in OPTIONAL_FLOAT:
        r[c] = pd.to_numeric(r[c], errors="coerce").astype(float) if c in r else float("nan")
    for c in ("epoch", "step", "train_loss", "train_acc", "test_acc", "corruption.level", "seed"):
        r[c] = pd.to_numeric(r[c], errors="coerce")
    for c, default in OPTIONAL_BOOL.items():
        r[c] = r[c].map(lambda v, d=default: d if v is None or (isinstance(v, float) and math.isnan(v)) else bool(v)) \
            if c in r else default
    r["finished"] = r["finished"].map(lambda v: bool(v) if v is not None and v == v else False).astype(bool)
    r["reg.weight_decay"] = r["reg.weight_decay"].fillna(0.0)
    r["reg.dropout"] = r["reg.dropout"].fillna(0.0)
    r["arch"] = [arch_label(m, bn) for m, bn in zip(r["model.name"], r["reg.batch_norm"])]
    r["aug"] = r["reg.augment"].astype(bool)
    r["wd"] = r["reg.weight_decay"] > 0
    r["dropout"] = r["reg.dropout"] > 0
    r["regularized"] = r["aug"] | r["wd"] | r["dropout"]
    kind, level = r["corruption.kind"], r["corruption.level"].fillna(0.0)
    # The label-corruption axis of Figures 1b/1c: true labels are level 0; pixel corruptions are off it.
    r["label_level"] = level.where(kind == "labels", 0.0).where(kind.isin(["none", "labels"]))
    r["corruption"] = [_corruption_name(k, lv) for k, lv in zip(kind, level)]
    return r.reset_index(drop=True)


CORRUPTION_NAMES = {"none": "true labels", "shuffled_pixels": "shuffled pixels", "random_pixels": "random pixels",
                    "gaussian": "gaussian"}


def _corruption_name(kind: str, level: float) -> str:
    if kind == "labels":
        return "true labels" if level == 0 else "random labels" if level == 1 else f"labels p={level:g}"
    return CORRUPTION_NAMES.get(kind, str(kind))
