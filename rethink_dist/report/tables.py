"""Tables 1 and 2: measured accuracies (mean ± std over seeds, n) next to the paper's, and the gap.

Cells hold numbers in percent (differences in percentage points) and ``None`` where there is no
data; formatting to text happens only in :meth:`Table.text_rows`.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import pandas as pd

from rethink_dist.report.load import Results
from rethink_dist.report.paper import ARCH_ORDER, TABLE1, TABLE1_DATASET, TABLE2, TABLE2_DATASET, TABLE2_NOTE

MISSING = "—"


@dataclass
class Column:
    key: str
    header: str
    kind: str = "text"  # text | yesno | stat (mean with key_std) | pct | diff | int


@dataclass
class Table:
    id: str
    title: str
    columns: list[Column]
    rows: list[dict[str, Any]]
    notes: list[str] = field(default_factory=list)

    def text_rows(self) -> list[list[str]]:
        """Every cell as text: percentages with two decimals, missing as an em dash, never 0."""
        return [[_cell(row, c) for c in self.columns] for row in self.rows]

    def to_json(self) -> dict[str, Any]:
        return {"id": self.id, "title": self.title, "columns": [c.key for c in self.columns],
                "headers": [c.header for c in self.columns], "rows": self.rows, "notes": self.notes}


def _cell(row: dict[str, Any], c: Column) -> str:
    v = row.get(c.key)
    if v is None:
        return MISSING
    if c.kind == "yesno":
        return "yes" if v else "no"
    if c.kind == "stat":
        sd = row.get(c.key + "_std")
        return f"{v:.2f}" if sd is None else f"{v:.2f} ± {sd:.2f}"
    if c.kind == "pct":
        return f"{v:.2f}"
    if c.kind == "diff":
        return f"{v:+.2f}"
    if c.kind == "int":
        return str(int(v))
    return str(v)


def _stat(values: pd.Series) -> tuple[float | None, float | None]:
    """Mean and sample std in percent over the non-missing values; (None, None) when there are none."""
    v = values.dropna().astype(float) * 100
    if len(v) == 0:
        return None, None
    return float(v.mean()), (float(v.std(ddof=1)) if len(v) > 1 else None)


def _diff(measured: float | None, paper: float | None) -> float | None:
    return None if measured is None or paper is None else measured - paper


def _arch_rank(arch: str) -> tuple[int, str]:
    return (ARCH_ORDER.index(arch), "") if arch in ARCH_ORDER else (len(ARCH_ORDER), arch)


def _table1_trials(finals: pd.DataFrame, dataset: str) -> pd.DataFrame:
    """Finished trials of Table 1's kind on ``dataset``: true labels or random labels (p = 1)."""
    f = finals[(finals["data.name"] == dataset) & finals["corruption"].isin(["true labels", "random labels"])]
    return f.assign(random_labels=f["corruption"] == "random labels")


def table1(results: Results, dataset: str) -> Table:
    """Table 1 for ``dataset``: one row per architecture x (random crop, weight decay, dropout, labels).

    On CIFAR-10 every row of the paper's Table 1 appears (missing where the sweep did not run it)
    with the paper's values and the difference; on other datasets only the rows that ran, and no
    paper columns (the paper's numbers are for CIFAR-10).
    """
    finals = _table1_trials(results.finals(), dataset)
    planned = _planned_keys(results, dataset)
    with_paper = dataset == TABLE1_DATASET
    keys = set(planned) | {(a, bool(c), bool(w), bool(d), bool(r)) for a, c, w, d, r in
                           finals[["arch", "aug", "wd", "dropout", "random_labels"]].itertuples(index=False)}
    paper = {(p.arch, p.random_crop, p.weight_decay, False, p.random_labels): p for p in TABLE1}
    if with_paper:
        keys |= set(paper)
    show_dropout = any(k[3] for k in keys)
    rows = []
    for key in sorted(keys, key=lambda k: (_arch_rank(k[0]), k[4], not k[1], not k[2], k[3])):
        arch, crop, wd, dropout, random_labels = key
        g = finals[(finals["arch"] == arch) & (finals["aug"] == crop) & (finals["wd"] == wd)
                   & (finals["dropout"] == dropout) & (finals["random_labels"] == random_labels)]
        train, train_sd = _stat(g["train_acc"])
        test, test_sd = _stat(g["test_acc"])
        row = {"model": arch, "random_crop": crop, "weight_decay": wd, "dropout": dropout,
               "labels": "random" if random_labels else "true", "n": len(g),
               "train": train, "train_std": train_sd, "test": test, "test_std": test_sd}
        if with_paper:
            p = paper.get(key)
            row.update(paper_train=p.train if p else None, paper_test=p.test if p else None)
            row.update(d_train=_diff(train, row["paper_train"]), d_test=_diff(test, row["paper_test"]))
        rows.append(row)
    cols = [Column("model", "model"), Column("random_crop", "random crop", "yesno"),
            Column("weight_decay", "weight decay", "yesno")]
    if show_dropout:
        cols.append(Column("dropout", "dropout", "yesno"))
    cols += [Column("labels", "labels"), Column("n", "n", "int"), Column("train", "train % (measured)", "stat")]
    if with_paper:
        cols += [Column("paper_train", "train % (paper)", "pct"), Column("d_train", "Δ train", "diff")]
    cols.append(Column("test", "test % (measured)", "stat"))
    if with_paper:
        cols += [Column("paper_test", "test % (paper)", "pct"), Column("d_test", "Δ test", "diff")]
    notes = ["Measured: mean ± sample std over the n finished trials (seeds) of each row; accuracy at the last epoch."]
    if not with_paper:
        notes.append(f"The paper's Table 1 is on CIFAR-10; this sweep ran {dataset}, so there is no paper column.")
    return Table(f"table1-{dataset}", f"Table 1: train and test accuracy on {dataset}", cols, rows, notes)


def _planned_keys(results: Results, dataset: str) -> set[tuple[str, bool, bool, bool, bool]]:
    """Table-1 keys of the planned trials, so a row appears (as missing) before its trials finish."""
    from rethink_dist.report.paper import arch_label

    keys = set()
    for t in results.planned:
        f = t.get("flat") or {}
        if f.get("data.name") != dataset or not f.get("model.name"):
            continue
        kind, level = f.get("corruption.kind", "none"), float(f.get("corruption.level") or 0.0)
        if kind == "none" or (kind == "labels" and level in (0.0, 1.0)):
            keys.add((arch_label(f["model.name"], bool(f.get("reg.batch_norm", True))), bool(f.get("reg.augment")),
                      float(f.get("reg.weight_decay") or 0) > 0, float(f.get("reg.dropout") or 0) > 0,
                      kind == "labels" and level == 1.0))
    return keys


def table2(results: Results) -> Table:
    """Table 2: ImageNet (Inception V3): top-1 train, top-1 test (and best seen), top-5 test."""
    finals = _table1_trials(results.finals(), TABLE2_DATASET)
    paper = {(p.augment, p.dropout, p.weight_decay, p.random_labels): p for p in TABLE2}
    keys = {(a, bool(c), bool(d), bool(w), bool(r)) for a, c, d, w, r in
            finals[["arch", "aug", "dropout", "wd", "random_labels"]].itertuples(index=False)}
    keys |= {("Inception V3", *k) for k in paper}
    rows = []
    for key in sorted(keys, key=lambda k: (_arch_rank(k[0]), k[4], not k[1], not k[2], not k[3])):
        arch, aug, dropout, wd, random_labels = key
        g = finals[(finals["arch"] == arch) & (finals["aug"] == aug) & (finals["dropout"] == dropout)
                   & (finals["wd"] == wd) & (finals["random_labels"] == random_labels)]
        p = paper.get(key[1:]) if arch == "Inception V3" else None
        row: dict[str, Any] = {"model": arch, "augment": aug, "dropout": dropout, "weight_decay": wd,
                               "labels": "random" if random_labels else "true", "n": len(g)}
        for name, col, ref in (("train_top1", "train_acc", "train_top1"), ("test_top1", "test_acc", "test_top1"),
                               ("best_test_top1", "best_test_acc", "best_test_top1"), ("test_top5", "test_top5", "test_top5")):
            m, sd = _stat(g[col])
            pv = getattr(p, ref) if p else None
            row.update({name: m, name + "_std": sd, "paper_" + name: pv, "d_" + name: _diff(m, pv)})
        row["note"] = p.note if p and p.note else None
        rows.append(row)
    cols = [Column("model", "model"), Column("augment", "aug", "yesno"), Column("dropout", "dropout", "yesno"),
            Column("weight_decay", "weight decay", "yesno"), Column("labels", "labels"), Column("n", "n", "int")]
    for name, header in (("train_top1", "top-1 train"), ("test_top1", "top-1 test"),
                         ("best_test_top1", "top-1 test, best seen"), ("test_top5", "top-5 test")):
        cols += [Column(name, f"{header} % (measured)", "stat"), Column("paper_" + name, f"{header} % (paper)", "pct"),
                 Column("d_" + name, "Δ", "diff")]
    cols.append(Column("note", "note"))
    notes = ["Measured: mean ± sample std over the n finished trials of each row, at the last epoch; "
             "'best seen' is the best test accuracy up to then (early stopping).", TABLE2_NOTE]
    if finals.empty:
        notes.insert(0, "This sweep has no finished ImageNet trials: every measured cell is missing.")
    return Table("table2", "Table 2: ImageNet, Inception V3", cols, rows, notes)


def tables(results: Results) -> list[Table]:
    """Table 1 for each dataset the sweep ran (CIFAR-10 when it ran none but ImageNet), then Table 2."""
    datasets = [d for d in results.datasets() if d != TABLE2_DATASET] or [TABLE1_DATASET]
    return [table1(results, d) for d in datasets] + [table2(results)]
