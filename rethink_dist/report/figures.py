"""The paper's figures (1a, 1b, 1c, 2a, 2b), two beyond it and the sweep's cluster timeline, drawn
with matplotlib's Agg canvas.

Each builder returns a :class:`Fig`: the PNG and the series it drew, as plain data (what tests
and the JSON sidecar read). A figure with no data has no PNG and says what it needs instead.
Only finished trials are drawn (the cluster timeline draws every trial that ran); curves are one
line per trial (seed), one colour per series.
"""

from __future__ import annotations

import io
import math
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import pandas as pd

from rethink_dist.report.load import Results
from rethink_dist.report.paper import ARCH_ORDER, FIG1_ARCHS
from rethink_dist.report.timeline import cluster_timeline

KIND_ORDER = ["true labels", "random labels", "shuffled pixels", "random pixels", "gaussian"]
NUM_CLASSES = {"imagenet": 1000}


@dataclass
class Fig:
    id: str
    title: str
    caption: str
    series: dict[str, Any] = field(default_factory=dict)  # name -> data (lists of runs or points)
    png: bytes | None = None
    missing: str | None = None  # why there is no figure

    def to_json(self) -> dict[str, Any]:
        return {"id": self.id, "title": self.title, "caption": self.caption, "series": self.series,
                "missing": self.missing, "file": f"figures/{self.id}.png" if self.png else None}


def canvas(ncols: int = 1, nrows: int = 1, width: float = 6.0, height: float = 4.0, **subplots):
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    fig = Figure(figsize=(width * ncols, height * nrows), dpi=100, layout="constrained")
    FigureCanvasAgg(fig)
    axes = fig.subplots(nrows, ncols, squeeze=False, **subplots)
    return fig, [a for row in axes for a in row]


def png_bytes(fig) -> bytes:
    buf = io.BytesIO()
    fig.savefig(buf, format="png")
    return buf.getvalue()


def clean_value(v: Any) -> float | None:
    return None if v is None or (isinstance(v, float) and math.isnan(v)) else float(v)


def _runs(curves: pd.DataFrame, y: str, x: str = "step", xscale: float = 1e-3) -> list[dict[str, Any]]:
    """One entry per trial: its x (thousands of steps by default) and y values, epoch by epoch."""
    out = []
    for tid, g in curves.groupby("trial_id", sort=True):
        g = g.sort_values("epoch")
        out.append({"trial_id": tid, "seed": int(g["seed"].iloc[0]), "x": [float(v) * xscale for v in g[x]],
                    "y": [clean_value(v) for v in g[y]]})
    return out


def _plot_runs(ax, runs: list[dict[str, Any]], label: str, color, style: str = "-") -> None:
    for i, r in enumerate(runs):
        y = [np.nan if v is None else v for v in r["y"]]
        ax.plot(r["x"], y, style, color=color, lw=1.3, alpha=0.85, label=label if i == 0 else None)


def _arch_sorted(archs) -> list[str]:
    first = [a for a in FIG1_ARCHS if a in archs]
    rest = sorted((a for a in archs if a not in first), key=lambda a: (ARCH_ORDER.index(a) if a in ARCH_ORDER else 99, a))
    return first + rest


def _colors(n: int) -> list:
    from matplotlib import colormaps

    cmap = colormaps["tab10"]
    return [cmap(i % 10) for i in range(n)]


def _arch_colors(archs: list[str]) -> list:
    """The same colour for an architecture in every figure: the paper's ones first, others after."""
    palette = _colors(10)
    others = sorted(a for a in archs if a not in ARCH_ORDER)
    return [palette[(ARCH_ORDER.index(a) if a in ARCH_ORDER else len(ARCH_ORDER) + others.index(a)) % 10]
            for a in archs]


def missing_fig(fig: Fig, why: str) -> Fig:
    fig.missing = why
    return fig


# ------------------------------------------------------------------------------------ Figure 1a
def fig1a(results: Results, dataset: str) -> Fig:
    """Training loss against thousands of steps, one line per corruption kind (no regularizer)."""
    f = Fig(f"fig1a-{dataset}", f"Figure 1a: training loss, {dataset}",
            "Training loss against thousands of steps, one colour per corruption kind, no explicit regularizer. "
            "Paper: Inception on CIFAR-10; random and gaussian pixels start converging faster than random labels.")
    c = results.curves()
    c = c[(c["data.name"] == dataset) & ~c["regularized"] & c["corruption"].isin(KIND_ORDER)]
    if c.empty:
        return missing_fig(f, "needs finished unregularized trials with true labels, random labels or pixel corruptions")
    kinds_per_arch = c.groupby("arch")["corruption"].nunique()
    arch = max(_arch_sorted(kinds_per_arch.index), key=lambda a: (kinds_per_arch[a], a == "Inception"))
    c = c[c["arch"] == arch]
    f.title += f", {arch}"
    fig, (ax,) = canvas()
    kinds = [k for k in KIND_ORDER if k in set(c["corruption"])]
    for kind, color in zip(kinds, _colors(len(kinds))):
        runs = _runs(c[c["corruption"] == kind], "train_loss")
        f.series[kind] = runs
        _plot_runs(ax, runs, kind, color)
    ax.set(xlabel="thousands of steps", ylabel="training loss", title=f"{arch} on {dataset}")
    ax.legend()
    f.png = png_bytes(fig)
    return f


# ------------------------------------------------------------------------------------ Figures 1b, 1c
def _by_level(finals: pd.DataFrame, dataset: str) -> pd.DataFrame:
    return finals[(finals["data.name"] == dataset) & ~finals["regularized"] & finals["label_level"].notna()]


def fig1b(results: Results, dataset: str) -> Fig:
    """Time to overfit relative to true labels against the label-corruption level, per architecture."""
    f = Fig(f"fig1b-{dataset}", f"Figure 1b: time to overfit, {dataset}",
            "Steps until the training set is first fitted (steps_to_fit), mean over seeds, divided by the mean "
            "with true labels, against the label-corruption level; no explicit regularizer. Trials that never "
            "fitted are left out (count in the series' 'unfitted'); a level with no fitted trial is a gap, not 0. "
            "Paper: it grows by a small constant factor.")
    d = _by_level(results.finals(), dataset)
    fig, (ax,) = canvas()
    archs = _arch_sorted(set(d["arch"]))
    for arch, color in zip(archs, _arch_colors(archs)):
        g = d[d["arch"] == arch]
        levels = sorted(set(g["label_level"]))
        ref = g.loc[g["label_level"] == 0, "steps_to_fit"].dropna()
        if len(levels) < 2 or ref.empty:
            continue
        pts = {"x": [], "y": [], "n": [], "unfitted": []}
        for lv in levels:
            s = g.loc[g["label_level"] == lv, "steps_to_fit"]
            pts["x"].append(float(lv))
            pts["y"].append(float(s.dropna().mean() / ref.mean()) if s.notna().any() else None)
            pts["n"].append(int(s.notna().sum()))
            pts["unfitted"].append(int(s.isna().sum()))
        f.series[arch] = pts
        ax.plot(pts["x"], [np.nan if v is None else v for v in pts["y"]], "o-", color=color, label=arch)
        never = [x for x, y, u in zip(pts["x"], pts["y"], pts["unfitted"]) if y is None and u]
        if never:  # levels where no trial fitted: a cross at the top, not a point at 0
            ax.plot(never, [0.96] * len(never), "x", color=color, ms=9, transform=ax.get_xaxis_transform(),
                    label=f"{arch}: never fitted")
    if not f.series:
        return missing_fig(f, "needs finished unregularized trials of one architecture that fitted with true labels "
                           "and at least one label-corruption level")
    ax.axhline(1.0, color="grey", lw=0.8, ls=":")
    ax.set(xlabel="label corruption", ylabel="time to overfit, relative to true labels", title=dataset)
    ax.legend()
    f.png = png_bytes(fig)
    return f


def fig1c(results: Results, dataset: str) -> Fig:
    """Test error (mean ± std over seeds) at the end of training against the label-corruption level."""
    chance = 1 - 1 / NUM_CLASSES.get(dataset, 10)
    f = Fig(f"fig1c-{dataset}", f"Figure 1c: test error, {dataset}",
            f"Test error at the last epoch (mean, bars: std over seeds) against the label-corruption level; no "
            f"explicit regularizer. Dotted: chance ({chance:.2f}). Paper: it climbs steadily to chance at p = 1.")
    d = _by_level(results.finals(), dataset)
    fig, (ax,) = canvas()
    archs = _arch_sorted(set(d["arch"]))
    for arch, color in zip(archs, _arch_colors(archs)):
        g = d[d["arch"] == arch]
        levels = sorted(set(g["label_level"]))
        if len(levels) < 2:
            continue
        err = 1 - g["test_acc"]
        pts = {"x": [float(v) for v in levels],
               "y": [clean_value(err[g["label_level"] == lv].mean()) for lv in levels],
               "std": [clean_value(err[g["label_level"] == lv].std(ddof=1)) for lv in levels],
               "n": [int(err[g["label_level"] == lv].notna().sum()) for lv in levels]}
        f.series[arch] = pts
        ax.errorbar(pts["x"], [np.nan if v is None else v for v in pts["y"]],
                    yerr=[0 if v is None else v for v in pts["std"]], fmt="o-", color=color, capsize=3, label=arch)
    if not f.series:
        return missing_fig(f, "needs finished unregularized trials of one architecture at two or more label-corruption levels")
    ax.axhline(chance, color="grey", lw=0.8, ls=":")
    ax.set(xlabel="label corruption", ylabel="test error", ylim=(0, 1), title=dataset)
    ax.legend()
    f.png = png_bytes(fig)
    return f


# ------------------------------------------------------------------------------------ Figure 2a
def _reg_name(aug: bool, wd: bool, dropout: bool) -> str:
    parts = [n for n, on in (("random crop", aug), ("weight decay", wd), ("dropout", dropout)) if on]
    return " + ".join(parts) if parts else "no regularizer"


def fig2a(results: Results, dataset: str) -> Fig:
    """Test accuracy over training with and without regularizers; best seen (star) against final (circle)."""
    f = Fig(f"fig2a-{dataset}", f"Figure 2a: test accuracy with and without regularizers, {dataset}",
            "Test accuracy against thousands of steps on true labels, one colour per regularizer setting; "
            "star: best value seen (early stopping), circle: final value. Paper: ImageNet, Inception V3.")
    c = results.curves()
    c = c[(c["data.name"] == dataset) & (c["corruption"] == "true labels")]
    if c.empty:
        return missing_fig(f, "needs finished trials with true labels")
    settings = c.assign(reg=[_reg_name(a, w, d) for a, w, d in zip(c["aug"], c["wd"], c["dropout"])])
    n_regs = settings.groupby("arch")["reg"].nunique()
    arch = "Inception V3" if "Inception V3" in n_regs else max(_arch_sorted(n_regs.index), key=lambda a: n_regs[a])
    settings = settings[settings["arch"] == arch]
    f.title += f", {arch}"
    fig, (ax,) = canvas()
    regs = sorted(set(settings["reg"]), key=lambda r: (r == "no regularizer", r))
    for reg, color in zip(regs, _colors(len(regs))):
        runs = _runs(settings[settings["reg"] == reg], "test_acc")
        for r in runs:
            ys = [np.nan if v is None else v for v in r["y"]]
            i_best = int(np.nanargmax(ys)) if not np.all(np.isnan(ys)) else None
            r["best"] = None if i_best is None else [r["x"][i_best], r["y"][i_best]]
            r["final"] = [r["x"][-1], r["y"][-1]]
            if r["best"]:
                ax.plot(*r["best"], "*", color=color, ms=11)
            ax.plot(r["x"][-1], ys[-1], "o", color=color, ms=6, mfc="none")
        f.series[reg] = runs
        _plot_runs(ax, runs, reg, color)
    ax.set(xlabel="thousands of steps", ylabel="test accuracy", title=f"{arch} on {dataset}")
    ax.legend()
    f.png = png_bytes(fig)
    return f


# ------------------------------------------------------------------------------------ Figure 2b
def fig2b(results: Results, dataset: str) -> Fig:
    """Inception (small) with and without BatchNorm: training and test accuracy over training."""
    f = Fig(f"fig2b-{dataset}", f"Figure 2b: Inception with and without BatchNorm, {dataset}",
            "Training (dashed) and test (solid) accuracy against thousands of steps, true labels, no other "
            "regularizer. Paper: CIFAR-10.")
    c = results.curves()
    c = c[(c["data.name"] == dataset) & (c["corruption"] == "true labels") & ~c["regularized"]
          & c["arch"].isin(["Inception", "Inception w/o BN"])]
    if c.empty:
        return missing_fig(f, "needs finished unregularized inception_small trials on true labels "
                           "(reg.batch_norm true and false)")
    fig, (ax,) = canvas()
    archs = [a for a in ("Inception", "Inception w/o BN") if a in set(c["arch"])]
    for arch, color in zip(archs, _arch_colors(archs)):
        g = c[c["arch"] == arch]
        for what, col, style in (("train", "train_acc", "--"), ("test", "test_acc", "-")):
            runs = _runs(g, col)
            f.series[f"{arch} {what}"] = runs
            _plot_runs(ax, runs, f"{arch} {what}", color, style)
    ax.set(xlabel="thousands of steps", ylabel="accuracy", ylim=(0, 1.02), title=dataset)
    ax.legend()
    f.png = png_bytes(fig)
    return f


# ------------------------------------------------------------------------------------ beyond the paper
def fig_memorization(results: Results, dataset: str) -> Fig:
    """For each label-corruption level: training accuracy on clean and on corrupted samples over time."""
    f = Fig(f"memorization-{dataset}", f"Beyond the paper: which samples are fitted first, {dataset}",
            "For each label-corruption level p (one panel), training accuracy against thousands of steps on the "
            "samples whose label was kept (solid) and on those whose label was changed (dashed, measured "
            "against the changed label), one colour per architecture, no explicit regularizer.")
    c = results.curves()
    c = c[(c["data.name"] == dataset) & ~c["regularized"] & (c["corruption.kind"] == "labels")
          & (c["label_level"] > 0) & c["train_acc_corrupted"].notna()]
    if c.empty:
        return missing_fig(f, "needs finished unregularized label-corruption trials (p > 0) that logged "
                           "train_acc_clean and train_acc_corrupted")
    levels = sorted(set(c["label_level"]))
    archs = _arch_sorted(set(c["arch"]))
    colors = dict(zip(archs, _arch_colors(archs)))
    ncols = min(3, len(levels))
    nrows = math.ceil(len(levels) / ncols)
    fig, axes = canvas(ncols, nrows, width=4.2, height=3.2)
    for ax, lv in zip(axes, levels):
        for arch in archs:
            g = c[(c["label_level"] == lv) & (c["arch"] == arch)]
            if g.empty:
                continue
            for what, col, style in (("clean", "train_acc_clean", "-"), ("corrupted", "train_acc_corrupted", "--")):
                runs = _runs(g, col)
                f.series[f"p={lv:g} {arch} {what}"] = runs
                _plot_runs(ax, runs, f"{arch} {what}", colors[arch], style)
        ax.set(title=f"p = {lv:g}", xlabel="thousands of steps", ylabel="training accuracy", ylim=(0, 1.02))
        ax.legend(fontsize=7)
    for ax in axes[len(levels):]:
        ax.set_visible(False)
    f.png = png_bytes(fig)
    return f


def fig_first_fit(results: Results, dataset: str) -> Fig:
    """From the per-sample records: when clean and corrupted samples are fitted for good."""
    f = Fig(f"first-fit-{dataset}", f"Beyond the paper: when each sample is fitted for good, {dataset}",
            "From the per-sample records (sample_records): for each architecture (one panel) and label-corruption "
            "level p (one colour), the fraction of the training samples whose first-fit epoch (the first epoch from "
            "which the network classifies the sample as its training label at every later evaluation) is at most "
            "the epoch on the x axis: samples whose label was kept (solid), samples whose label was changed "
            "(dashed). Samples not fitted at the end never count. No explicit regularizer.")
    samples = results.samples
    if samples is None or samples.empty:
        return missing_fig(f, "needs trials run with sample_records on (the shipped sweeps switch it on)")
    samples = samples[(samples["split"] == "train") & samples["in_subset"]]  # what each trial trained on
    samples = samples.assign(label_changed=samples["label_changed"].astype(bool))
    finals = results.finals()
    finals = finals[(finals["data.name"] == dataset) & ~finals["regularized"] & (finals["corruption.kind"] == "labels")
                    & (finals["label_level"] > 0)]
    trials = finals[finals["trial_id"].isin(set(samples["trial_id"]))]
    if trials.empty:
        return missing_fig(f, "needs finished unregularized label-corruption trials (p > 0) with per-sample records")
    archs = _arch_sorted(set(trials["arch"]))
    levels = sorted(set(trials["label_level"]))
    colors = dict(zip(levels, _colors(len(levels))))
    fig, axes = canvas(len(archs), 1, width=4.6, height=3.4)
    for ax, arch in zip(axes, archs):
        last_epoch = 1
        for _, t in trials[trials["arch"] == arch].sort_values("label_level").iterrows():
            mine = samples[samples["trial_id"] == t["trial_id"]]
            epochs = np.arange(0, int(t["epoch"]) + 1)
            last_epoch = max(last_epoch, int(t["epoch"]))
            for what, part, style in (("clean", mine[~mine["label_changed"]], "-"),
                                      ("corrupted", mine[mine["label_changed"]], "--")):
                if part.empty:
                    continue
                first = part["first_fit_epoch"].to_numpy(dtype=float)  # NaN: not fitted at the end
                cdf = [float(np.mean(first <= e)) for e in epochs]
                f.series[f"{arch} p={t['label_level']:g} {what}"] = {
                    "epoch": epochs.tolist(), "fraction_fitted": cdf, "samples": int(len(part)),
                    "median_first_fit": clean_value(float(np.nanmedian(first)) if np.isfinite(first).any() else None),
                    "forgettings_mean": float(part["forgettings"].mean())}
                ax.plot(epochs, cdf, style, color=colors[t["label_level"]],
                        label=f"p={t['label_level']:g} {what}")
        ax.set(title=arch, xlabel="epoch", ylabel="fraction fitted for good", ylim=(0, 1.02), xlim=(0, last_epoch))
        ax.legend(fontsize=6, ncol=2)
    f.png = png_bytes(fig)
    return f


# ------------------------------------------------------------------------------------ the sweep's run
LABEL_BOX = {"boxstyle": "round,pad=0.1", "fc": "white", "alpha": 0.7, "lw": 0}  # marks' text, over the bars
TIMELINE_MISSING = ("needs the epochs' end times (ended_at) in trials.parquet: tables written before it was "
                    "recorded, and results read from MLflow, lack them")


def fig_cluster_timeline(results: Results) -> Fig:
    """Which Ray node ran which trial when; where trials moved or changed their world size."""
    f = Fig("cluster-timeline", "The sweep's run: cluster timeline",
            "One lane per Ray node (the first 8 hex digits of its node id; its host where the table has no node "
            "id), one bar per trial segment (a trial's consecutive epochs in one process on that node, from its "
            "first epoch's start, the epoch's end time minus its training and evaluation seconds, to its last "
            "epoch's end), one colour per trial, trials a node ran at once in rows of its lane; every trial with "
            "rows, finished or not. Red x: the trial's next "
            "epoch ran in another process or on another node before the trial finished, 'lost' where the old "
            "node ran no epoch after the trial resumed, else 'moved'. Triangle: the number of processes training "
            "the trial (world size) changed. Lower panel: nodes alive and trials running. The figure knows nodes "
            "only through the epochs they ran: a node is alive from the first start to the last end of an epoch "
            "on it (an idle node does not appear), and each end time is the clock of the node that ran it.")
    tl = cluster_timeline(results.rows)
    if tl is None:
        return missing_fig(f, TIMELINE_MISSING)
    f.series = tl
    nodes, segments = tl["nodes"], tl["segments"]
    span = max([n["last"] for n in nodes] + [1e-9])
    unit, scale = ("minutes", 1 / 60) if span > 300 else ("seconds", 1.0)
    base, rows = {}, 0.0  # a node's lane: one row per trial it ran at once (its slots), lanes 0.6 apart
    for n in nodes:
        base[n["lane"]], rows = rows, rows + n["slots"] + 0.6
    lanes_height = max(1.8, 0.3 * rows)
    fig, (ax, counts) = canvas(1, 2, width=9.0, height=(lanes_height + 1.6) / 2, sharex=True,
                                height_ratios=[lanes_height, 1.6])
    trials = list(dict.fromkeys(s["trial_id"] for s in segments))
    colors = dict(zip(trials, _colors(len(trials))))
    legend, seen = len(trials) <= 10, set()

    def row(s: dict[str, Any]) -> float:
        return base[s["lane"]] + s["slot"]

    def seg_of(trial_id: str, epoch: int) -> int:  # the index of the segment that ran this epoch
        return next(i for i, s in enumerate(segments)
                    if s["trial_id"] == trial_id and s["first_epoch"] <= epoch <= s["last_epoch"])

    for s in segments:
        ax.barh(row(s), max(s["end"] - s["start"], span * 2e-3) * scale, left=s["start"] * scale, height=0.8,
                color=colors[s["trial_id"]], edgecolor="black", lw=0.4,
                label=s["run_name"] if legend and s["trial_id"] not in seen else None)
        seen.add(s["trial_id"])
    for m in tl["moves"]:
        y = row(segments[seg_of(m["trial_id"], m["epoch"]) - 1])  # the end of the segment before the move
        ax.plot(m["at"] * scale, y, "x", color="red", ms=9, mew=2)
        ax.annotate("lost" if m["node_lost"] else "moved", (m["at"] * scale, y), xytext=(3, 5),
                    textcoords="offset points", color="red", fontsize=8, bbox=LABEL_BOX)
    for z in tl["resizes"]:
        y = row(segments[seg_of(z["trial_id"], z["epoch"])])
        ax.plot(z["at"] * scale, y, "v" if z["to"] < z["from"] else "^", color="black", ms=8)
        ax.annotate(f"world {z['from']}→{z['to']}", (z["at"] * scale, y), xytext=(3, -12),
                    textcoords="offset points", fontsize=8, bbox=LABEL_BOX)
    ax.set_yticks([base[n["lane"]] + (n["slots"] - 1) / 2 for n in nodes],
                  [n["label"] + (f"\n{n['host']}" if n["host"] and n["host"] != n["label"] else "") for n in nodes],
                  fontsize=8)
    for n in nodes[1:]:
        ax.axhline(base[n["lane"]] - 0.8, color="grey", lw=0.5)
    ax.set_ylim(-0.7, rows - 0.9)
    ax.invert_yaxis()
    ax.set(ylabel="Ray node", title=f"{len(nodes)} node(s), {len(trials)} trial(s), {len(tl['moves'])} move(s), "
                                    f"{len(tl['resizes'])} resize(s)")
    if legend:
        ax.legend(fontsize=7, loc="upper left", bbox_to_anchor=(1.0, 1.0))
    c = tl["counts"]
    t = [v * scale for v in c["t"]]
    counts.step(t, c["nodes"], where="post", lw=2.5, alpha=0.6, label="nodes alive")
    counts.step(t, c["trials"], where="post", ls="--", color="black", lw=1, label="trials running")
    counts.set(xlabel=f"{unit} since the sweep's first epoch started", ylabel="count")
    counts.set_ylim(0, max(c["nodes"] + c["trials"] + [1]) + 0.5)
    counts.yaxis.get_major_locator().set_params(integer=True)
    counts.legend(fontsize=7, loc="upper left", bbox_to_anchor=(1.0, 1.0))
    f.png = png_bytes(fig)
    return f


def figures(results: Results) -> list[Fig]:
    """Every figure for every dataset the sweep ran (Figure 2a alone for ImageNet, as in the paper)."""
    out = []
    for d in results.datasets() or ["cifar10"]:
        if d == "imagenet":
            out.append(fig2a(results, d))
            continue
        out += [fig1a(results, d), fig1b(results, d), fig1c(results, d), fig2a(results, d), fig2b(results, d),
                fig_memorization(results, d), fig_first_fit(results, d)]
    return out
