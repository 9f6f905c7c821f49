"""Markdown tables from the benches' JSON, so the numbers in the docs are generated, not typed.

    .venv/bin/python bench/table.py train bench/results/cpu-train-2026-12-03.json
    .venv/bin/python bench/table.py loaders bench/results/cpu-loaders-2026-12-03.json

prints the table (and a line naming the machine) for docs/speed.md or docs/ffcv.md.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Any

KINDS = ("train", "loaders")


def _n(x: float, digits: int = 0) -> str:
    return f"{x:,.{digits}f}"


def train_table(doc: dict[str, Any]) -> str:
    """bench/train.py's JSON: one row per architecture."""
    head = ("| arch | epoch images (train / test) | ours img/s | baseline img/s | ratio (fastest / median of rounds) "
            "| train MFLOP/img | ours GFLOP/s | matmul GFLOP/s | of matmul | eval s | train s | eval / train |")
    rows = [head, "|" + "---|" * head.count(" | ") + "---|"]
    for r in doc["results"]:
        size = f"{_n(r['train_images'])} / {_n(r['test_images'])}" + (" (real)" if r["real_size_epochs"] else "")
        rows.append(
            f"| {r['arch']} | {size} | {_n(r['ours_images_per_s'])} | {_n(r['baseline_images_per_s'])} "
            f"| {r['ratio']:.1f} / {r['ratio_median_of_rounds']:.1f} | {r['train_flops_per_image'] / 1e6:.1f} "
            f"| {r['flops_per_s'] / 1e9:.0f} | {r['matmul_flops_per_s'] / 1e9:.0f} | {r['fraction_of_matmul']:.0%} "
            f"| {r['eval_seconds']:.3f} | {r['train_epoch_seconds']:.3f} | {r['eval_fraction_of_train_epoch']:.0%} |")
    m = doc["machine"]
    load = ", ".join(f"{x:.1f}" for x in m["load_average_at_end"])
    rows.append("")
    rows.append(f"{m['cpu']}, {m['cores']} cores, torch {m['torch']}, {doc['precision']}, {doc['rounds']} timed "
                f"rounds per loop, load average at the end [{load}], {doc['seconds']:.0f} s.")
    return "\n".join(rows)


def _kinds_rows(body: dict[str, Any]) -> list[str]:
    """One row per corruption: images/s end to end and of FFCV's pipeline alone, each with its cost."""
    rows = ["| corruption | end to end img/s | cost | FFCV pipeline alone img/s | cost |", "|---|---|---|---|---|",
            f"| none | {_n(body['ffcv'])} | | {_n(body['ffcv_pipeline'])} | |"]
    cost = body["corruption_cost"]
    for kind, rate in body["ffcv_corrupted_by_kind"].items():
        rows.append(f"| {kind} | {_n(rate)} | {cost['end_to_end'][kind]:.1%} "
                    f"| {_n(body['ffcv_pipeline_corrupted_by_kind'][kind])} | {cost['pipeline_only'][kind]:.1%} |")
    return rows


def loaders_table(doc: dict[str, Any]) -> str:
    """bench/loaders.py's JSON: the raw CIFAR-format case, the other loaders, and the JPEG case."""
    out = [f"Raw 32x32 CIFAR-format .beton ({_n(doc['n_train'])} images, batch {doc['batch_size']}, "
           f"{doc['image']}):", ""]
    out += _kinds_rows(doc)
    out += ["", "| loader (no corruption) | img/s |", "|---|---|",
            f"| FFCV | {_n(doc['ffcv'])} |", f"| in-memory | {_n(doc['memory'])} |",
            f"| torch DataLoader, per-sample transforms | {_n(doc['torch_dataloader'])} |"]
    jpeg = doc.get("imagenet_jpeg")
    if jpeg:
        out += ["", f"ImageNet-layout JPEG .beton ({_n(jpeg['n_train'])} images, {jpeg['image']}; "
                f"prepared in {jpeg['prepare_seconds']} s):", ""]
        out += _kinds_rows(jpeg)
    m = doc["machine"]
    out += ["", ", ".join(f"{k} {v}" for k, v in m.items()) + "."]
    return "\n".join(out)


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    if len(argv) != 2 or argv[0] not in KINDS:
        print(f"bench/table.py: usage: bench/table.py {{{'|'.join(KINDS)}}} FILE.json", file=sys.stderr)
        return 2
    path = Path(argv[1])
    try:
        doc = json.loads(path.read_text())
    except (OSError, ValueError) as e:
        print(f"bench/table.py: cannot read {str(path)!r} as JSON: {e}", file=sys.stderr)
        return 2
    print(train_table(doc) if argv[0] == "train" else loaders_table(doc))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
