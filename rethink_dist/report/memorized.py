"""The report's memorization figures, from a sweep of subset trials (sweeps/memorization.py).

The estimates are computed from the sweep's per-sample records by rethink_dist.memorization (the
same code as ``rethink-dist memorization``; nothing is written). For each setting: the histogram of
the memorization scores of clean and of corrupted samples; the most memorized training images with
their given and true labels; and the training images with the largest influence on a test image,
each beside the test images it most influences. The images come from the data set itself, loaded
and corrupted as the trials' config says (corruption is a pure function of the sample's index).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np

from rethink_dist.report.figures import Fig, canvas, clean_value, missing_fig, png_bytes

TOP_IMAGES = 24  # the grid of the most memorized images
INFLUENCE_ROWS, INFLUENCE_COLS = 6, 4  # training images, and the test images each influences most


def _slug(name: str) -> str:
    return "".join(c if c.isalnum() else "-" for c in name).strip("-").lower()


def _images(config: dict[str, Any]) -> tuple[Any, Any] | str:
    """The data set of a trial's config after its corruption, or why it cannot be loaded."""
    from rethink_dist.config import TrialConfig
    from rethink_dist.data import load
    from rethink_dist.data.memory import corrupt_dataset

    cfg = TrialConfig.from_dict(config)
    try:
        ds = load(cfg.data.name, cfg.data.root, False).subset_train(cfg.data.max_train)
    except Exception as e:  # a data set not on this machine: the figure says so
        return f"the images of {cfg.data.name} cannot be loaded here ({str(e).splitlines()[0] if str(e) else type(e).__name__})"
    return ds, corrupt_dataset(ds, cfg.corruption)


def _show(ax, img: np.ndarray, title: str, color: str = "black") -> None:
    ax.imshow(img[..., 0] if img.shape[-1] == 1 else img, cmap="gray" if img.shape[-1] == 1 else None,
              interpolation="nearest")
    ax.set_xticks([])
    ax.set_yticks([])
    ax.set_title(title, fontsize=7, color=color)


def fig_mem_histogram(settings: list) -> Fig:
    f = Fig("memorization-scores", "Beyond the paper: memorization scores of clean and corrupted samples",
            "Per setting (one panel): the histogram of the memorization score mem(i) = Pr[classified as its label | "
            "i in the training subset] - Pr[same | i not in it] (Feldman and Zhang 2020), estimated from the sweep's "
            "subset trials, for the samples whose label was kept (blue) and those whose label was changed (red); "
            "the legend gives each group's count and median. Corrupted samples can only be fitted by memorizing "
            "them: their scores sit near 1.")
    if not settings:
        return missing_fig(f, "needs at least 2 finished subset trials of one setting with per-sample records")
    fig, axes = canvas(len(settings), 1, width=4.6, height=3.3)
    bins = np.linspace(-1, 1, 41)
    blue, red = "tab:blue", "tab:red"
    for ax, s in zip(axes, settings):
        sc = s.scores
        for what, part, color in (("clean", sc[~sc["label_changed"]], blue), ("corrupted", sc[sc["label_changed"]], red)):
            mem = part["mem"].dropna().to_numpy()
            if not len(mem):
                continue
            counts, _ = np.histogram(mem, bins)
            f.series[f"{s.name} {what}"] = {"bins": bins.tolist(), "counts": counts.tolist(), "samples": int(len(mem)),
                                            "median": float(np.median(mem))}
            ax.hist(mem, bins, color=color, alpha=0.6, label=f"{what} (n={len(mem)}, median {np.median(mem):.2f})")
        trials = s.summary["trials"]
        extra = f", AUC {s.summary['auc_corrupted']:.3f}" if "auc_corrupted" in s.summary else ""
        ax.set(title=f"{s.name}\n{trials} trials{extra}", xlabel="memorization score", ylabel="training samples")
        ax.set_yscale("log")
        ax.title.set_fontsize(8)
        ax.legend(fontsize=7)
    f.png = png_bytes(fig)
    return f


def _with_corruption(settings: list) -> Any:
    """The setting to draw images for: the first with corrupted labels, else the first."""
    return next((s for s in settings if s.scores["label_changed"].any()), settings[0]) if settings else None


def fig_mem_top(settings: list, data: tuple[Any, Any] | str | None = None) -> Fig:
    f = Fig("memorization-top", "Beyond the paper: the most memorized training images",
            f"For one setting (named in the title; one with corrupted labels where the sweep has it): the {TOP_IMAGES} "
            "training images with the largest memorization score, largest first, each titled with its score, its "
            "given label (the one trained on) and, where the corruption changed it, its true label (red).")
    s = _with_corruption(settings)
    if s is None:
        return missing_fig(f, "needs at least 2 finished subset trials of one setting with per-sample records")
    data = _images(s.config) if data is None else data
    if isinstance(data, str):
        return missing_fig(f, data)
    ds, arrays = data
    sc = s.scores.dropna(subset=["mem"]).sort_values(["mem", "sample"], ascending=[False, True]).head(TOP_IMAGES)
    ncols = 8
    nrows = max(1, -(-len(sc) // ncols))
    fig, axes = canvas(ncols, nrows, width=1.25, height=1.45)
    fig.suptitle(s.name, fontsize=9)
    rows = []
    for ax, (_, r) in zip(axes, sc.iterrows()):
        i = int(r["sample"])
        given, true = int(arrays.train_y[i]), int(arrays.true_train_y[i])
        text = f"{r['mem']:.2f}: {ds.classes[given]}" + (f"\n(true {ds.classes[true]})" if given != true else "\n")
        _show(ax, arrays.train_x[i], text, "red" if given != true else "black")
        rows.append({"sample": i, "mem": clean_value(r["mem"]), "mem_se": clean_value(r["mem_se"]), "given": given, "true": true})
    for ax in axes[len(sc):]:
        ax.set_visible(False)
    f.series[s.name] = rows
    f.png = png_bytes(fig)
    return f


def fig_mem_influence(settings: list, data: tuple[Any, Any] | str | None = None) -> Fig:
    f = Fig("memorization-influence", "Beyond the paper: memorized training images and the test images they influence",
            f"For one setting (named in the title): the {INFLUENCE_ROWS} training images (left column) with the "
            "largest influence on some test image, where influence(i, j) = Pr[test image j classified right | i in "
            "the training subset] - Pr[same | i not in it]; beside each, the test images it influences most, each "
            f"titled with the influence and its label (at most {INFLUENCE_COLS}). A training image that is memorized "
            "and influences a test image is a near-duplicate or a rare subpopulation the test set shares.")
    s = _with_corruption(settings)
    if s is None or s.pairs is None or s.pairs.empty:
        return missing_fig(f, "needs at least 2 finished subset trials of one setting with test outcomes in their records")
    data = _images(s.config) if data is None else data
    if isinstance(data, str):
        return missing_fig(f, data)
    ds, arrays = data
    pairs = s.pairs.sort_values(["influence", "train_sample", "test_sample"], ascending=[False, True, True])
    train_ids = list(dict.fromkeys(pairs["train_sample"].tolist()))[:INFLUENCE_ROWS]
    fig, axes = canvas(INFLUENCE_COLS + 1, len(train_ids), width=1.35, height=1.5)
    fig.suptitle(s.name, fontsize=9)
    mem = s.scores.set_index("sample")["mem"]
    rows = []
    for r, i in enumerate(train_ids):
        given, true = int(arrays.train_y[i]), int(arrays.true_train_y[i])
        label = ds.classes[given] + (f" (true {ds.classes[true]})" if given != true else "")
        _show(axes[r * (INFLUENCE_COLS + 1)], arrays.train_x[i], f"train {i}, mem {mem[i]:.2f}\n{label}",
              "red" if given != true else "black")
        mine = pairs[pairs["train_sample"] == i].head(INFLUENCE_COLS)
        for c in range(INFLUENCE_COLS):
            ax = axes[r * (INFLUENCE_COLS + 1) + 1 + c]
            if c >= len(mine):
                ax.set_visible(False)
                continue
            p = mine.iloc[c]
            j = int(p["test_sample"])
            _show(ax, arrays.test_x[j], f"infl {p['influence']:.2f}\n{ds.classes[int(arrays.test_y[j])]}")
        rows.append({"train_sample": int(i), "mem": clean_value(mem[i]), "given": given, "true": true,
                     "tests": [{"test_sample": int(p["test_sample"]), "influence": float(p["influence"]),
                                "influence_se": clean_value(p["influence_se"])} for _, p in mine.iterrows()]})
    f.series[s.name] = rows
    f.png = png_bytes(fig)
    return f


def memorization_figures(folder: str | Path | None) -> list[Fig]:
    """The three figures for a sweep folder that plans subset trials; none for any other sweep."""
    from rethink_dist.memorization import folder_estimates, has_subset_trials

    if folder is None or not has_subset_trials(folder):
        return []
    settings, _ = folder_estimates(folder, top=INFLUENCE_ROWS * INFLUENCE_COLS * 50)
    drawn = _with_corruption(settings)
    data = _images(drawn.config) if drawn is not None else None  # loaded once for both image figures
    return [fig_mem_histogram(settings), fig_mem_top(settings, data), fig_mem_influence(settings, data)]
