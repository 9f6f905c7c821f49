"""Write docs/results/memorization.md and its figures from real memorization sweeps; nothing in it is typed.

    .venv/bin/python sweeps/memorization.py --storage results       # digits: 2 settings x 100 subset trials
    RETHINK_MEMORIZATION_SECTIONS=fashion .venv/bin/python sweeps/memorization.py --storage results
    .venv/bin/python docs/results/memorization.py                   # estimates, reports, this doc

reads the digits sweep's folder results/memorization (``--folder``) and the Fashion-MNIST sweep's
results/memorization-fashion (``--fashion-folder``; while it does not exist the doc says so where its
section would be), computes the estimates with the code of ``rethink-dist memorization`` (and writes
them, as the command does, to <folder>/memorization/), builds each sweep's report into <folder>/report
and copies its memorization figures beside this file (the digits' in memorization/, Fashion-MNIST's in
memorization/fashion/). The wall time is the sweep's MLflow parent run's, from its start to its end (a
resumed sweep's includes the pause).
"""

from __future__ import annotations

import argparse
import shutil
import sys
from datetime import datetime, timezone
from pathlib import Path

HERE = Path(__file__).resolve().parent
REPO = HERE.parents[1]
DOC = HERE / "memorization.md"
FIGS = HERE / "memorization"
sys.path.insert(0, str(HERE))

from fashion_mnist import machine, num, sweep_times  # noqa: E402  (the same machine line and run times)

FIGURES = ("memorization-scores", "memorization-top", "memorization-influence")


def fmt(v, spec: str = "{:.3f}") -> str:
    return num(v, spec)


def _shown(folder: Path) -> str:
    return str(folder.relative_to(REPO) if folder.is_relative_to(REPO) else folder)


SE_FOR_SAMPLES = 0.15  # a median standard error of mem above this: the estimates tell groups apart, not samples


def _caveats(settings, lowest_train_acc: float) -> list[str]:
    """What the table's own numbers say about how far to read it (from the numbers, not typed)."""
    out = []
    worst = max((s.summary for s in settings), key=lambda r: r["median_mem_se"], default=None)
    if worst is not None and worst["median_mem_se"] > SE_FOR_SAMPLES:
        out.append(
            f"With {worst['trials']} trials per setting the median standard error of mem is "
            f"{worst['median_mem_se']:.3f}, and some samples are held by every trial or by none (min "
            f"{worst['min_trials_in']} / {worst['min_trials_out']} above): the scores separate the corrupted "
            f"samples from the clean ones as groups (the AUC), but a single sample's score, and the influences "
            f"of the third figure (each from the few trials that left a sample out), are too coarse to read one "
            f"by one; more trials per setting (the K variables of sweeps/memorization.py) narrow them as 1/sqrt(K).")
    if lowest_train_acc < 0.99:
        out.append(
            f"Not every trial fitted its training subset within its epoch budget (final training accuracy "
            f"{lowest_train_acc:.4f} at the lowest): a corrupted sample not yet memorized scores near 0, so "
            f"the corrupted group's scores are lower than a fitted network's would be.")
    return ["", *(f"{c}\n" for c in out)] if out else []


def section(folder: Path, figs: Path, fig_rel: str, level: str) -> list[str]:
    """A sweep's measured lines: what ran, the estimates' table, its report's memorization figures."""
    import numpy as np

    from rethink_dist.memorization import estimate_folder, folder_estimates
    from rethink_dist.report import build_report, load_folder

    estimate_folder(folder)  # the command's files, beside the sweep
    settings, summary = folder_estimates(folder)
    results = load_folder(folder)
    report = build_report(results, folder / "report")
    figs.mkdir(parents=True, exist_ok=True)
    for f in report.figures:
        if f.id in FIGURES and f.png:
            shutil.copy(report.out / "figures" / f"{f.id}.png", figs / f"{f.id}.png")
    rows = results.rows
    start, end, minutes = sweep_times(results)
    epochs = rows.groupby("trial_id")["epoch"].max()
    fitted = rows[rows["finished"].astype(bool)]["train_acc"]
    lines = [
        f"From `{_shown(folder)}`. The sweep: {rows['trial_id'].nunique()} subset trials (`sweeps/memorization.py`: "
        f"MLP 1x512, each on its own random 70% of the training set, trained until it fits it or its epoch "
        f"budget ends), {int(epochs.sum()):,} epochs in all (median {int(epochs.median())} a trial); its final "
        f"training accuracy {fitted.min():.4f} at the lowest. Wall time {fmt(minutes, '{:.1f}')} minutes ({start} "
        f"to {end}), every trial on this one machine.",
        "",
        "| setting | trials | samples | median se of mem | trials holding a sample (min) | leaving it out (min) "
        "| median mem, clean | median mem, corrupted | AUC corrupted vs clean | corrupted among the top k |",
        "|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for s in settings:
        sc, row = s.scores, s.summary
        clean, corrupted = sc[~sc["label_changed"]]["mem"], sc[sc["label_changed"]]["mem"]
        lines.append(
            f"| {s.name} | {row['trials']} | {len(sc):,} | {fmt(row['median_mem_se'])} | {row['min_trials_in']} "
            f"| {row['min_trials_out']} | {fmt(float(np.nanmedian(clean)) if len(clean) else None)} "
            f"| {fmt(float(np.nanmedian(corrupted)) if len(corrupted) else None)} "
            f"| {fmt(row.get('auc_corrupted'))} | {fmt(row.get('corrupted_in_top'))} |")
    lines += [f"| {r['setting']} | {r['trials']} of {r['planned']} | — | — | — | — | — | — | — | — |"
              for r in summary if r.get("note")]
    lines += _caveats(settings, fitted.min())
    lines += ["", f"From the sweep's report (`rethink-dist report {_shown(folder)}`, [docs/report.md](../report.md)).", ""]
    captions = {f.id: f for f in report.figures}
    for fid in FIGURES:
        f = captions.get(fid)
        if f is None:
            continue
        lines += [f"{level} {f.title}", ""]
        lines += ([f"![{f.title}]({fig_rel}/{fid}.png)", "", f.caption, ""] if f.png else [f"Missing: {f.missing}.", ""])
    return lines


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--folder", default=str(REPO / "results" / "memorization"), help="the digits sweep's folder")
    p.add_argument("--fashion-folder", default=str(REPO / "results" / "memorization-fashion"),
                   help="the Fashion-MNIST sweep's folder (its section says 'not measured' while it does not exist)")
    args = p.parse_args(argv)
    folder, fashion = Path(args.folder), Path(args.fashion_folder)
    if not (folder / "sweep.json").is_file():
        print(f"memorization.py: error: --folder {str(folder)!r} holds no sweep (no sweep.json); run "
              "`.venv/bin/python sweeps/memorization.py --storage results` first", file=sys.stderr)
        return 2

    lines = [
        "# Which samples a network memorizes: measured on digits and Fashion-MNIST",
        "",
        "<!-- generated by docs/results/memorization.py; do not edit by hand -->",
        "",
        f"Generated {datetime.now(timezone.utc).strftime('%Y-%m-%d %H:%M UTC')} on {machine()}, by",
        "",
        "```bash",
        ".venv/bin/python sweeps/memorization.py --storage results",
        "RETHINK_MEMORIZATION_SECTIONS=fashion .venv/bin/python sweeps/memorization.py --storage results",
        ".venv/bin/python docs/results/memorization.py",
        "```",
        "",
        "Estimates (`rethink_dist/memorization.py`): mem(i) = Pr[right | i held] − Pr[right | i not held] per "
        "training sample, with its standard error (binomial, Agresti–Coull); the AUC of mem for telling the "
        "samples whose label was changed from the others, and the fraction of changed samples among the k "
        "samples of largest mem (k = the number of changed samples).",
        "",
        "## Digits",
        "",
    ]
    lines += section(folder, FIGS, "memorization", "###")
    lines += ["## Fashion-MNIST", ""]
    if (fashion / "sweep.json").is_file():
        lines += section(fashion, FIGS / "fashion", "memorization/fashion", "###")
    else:
        lines += [f"Not measured yet: no sweep in `{_shown(fashion)}`; the second command above runs it "
                  "(`RETHINK_MEMORIZATION_FASHION_K` trials per setting, default 8, of at most "
                  "`RETHINK_MEMORIZATION_FASHION_EPOCHS` epochs, default 60, on 42,000 images each).", ""]
    DOC.write_text("\n".join(lines))
    print(f"wrote {DOC.relative_to(REPO)} and its figures in {FIGS.relative_to(REPO)}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
