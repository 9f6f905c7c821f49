"""Write a report folder: report.html (self-contained, PNGs embedded as base64), report.md,
figures/*.png and report.json (every table cell and figure series, for tests and analysis).

The folder is built next to its destination and renamed into place, so a failed run leaves
the previous report (or nothing) and never half a report.
"""

from __future__ import annotations

import base64
import html
import json
import os
import shutil
import tempfile
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

from rethink_dist.report.figures import Fig, fig_cluster_timeline, figures
from rethink_dist.report.load import Results
from rethink_dist.report.memorized import memorization_figures
from rethink_dist.report.paper import PAPER_CITATION
from rethink_dist.report.tables import Table, tables


@dataclass
class Report:
    out: Path
    html: Path
    markdown: Path
    data: Path
    tables: list[Table]
    figures: list[Fig]  # the sweep's run (the cluster timeline) first, then the paper's and the others
    unfinished: list[dict[str, Any]]


def build_report(results: Results, out: str | Path) -> Report:
    """Build every table and figure of ``results`` and write them to the folder ``out``."""
    out = Path(out).resolve()
    tabs, run, unfinished = tables(results), [fig_cluster_timeline(results)], results.unfinished()
    # A sweep of subset trials adds the memorization figures (from its folder's per-sample records).
    figs = run + figures(results) + memorization_figures(results.source if Path(results.source).is_dir() else None)
    n_planned, n_done = len(results.planned) + results.not_started, int(results.finals()["trial_id"].nunique())
    generated = datetime.now(timezone.utc).strftime("%Y-%m-%d %H:%M UTC")
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{out.name}.tmp-", dir=out.parent))
    try:
        (tmp / "figures").mkdir()
        for f in figs:
            if f.png:
                (tmp / "figures" / f"{f.id}.png").write_bytes(f.png)
        head = {"sweep": results.sweep, "source": results.source, "generated": generated,
                "planned": n_planned, "finished": n_done, "unfinished": unfinished, "not_started": results.not_started}
        (tmp / "report.json").write_text(json.dumps(
            {**head, "tables": [t.to_json() for t in tabs], "figures": [f.to_json() for f in figs]},
            indent=1, default=_json_default))
        (tmp / "report.md").write_text(_markdown(head, tabs, run, figs[len(run):]))
        (tmp / "report.html").write_text(_html(head, tabs, run, figs[len(run):]))
        os.chmod(tmp, 0o755)
        _replace(tmp, out)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return Report(out, out / "report.html", out / "report.md", out / "report.json", tabs, figs, unfinished)


def splice_block(text: str, begin: str, end: str, before: str, body: str) -> str | None:
    """``text`` with its generated block (from the ``begin`` marker to the ``end`` marker) replaced by
    ``body``; a doc without the block gets it inserted before the heading ``before``. None when the
    doc has neither (the caller says which doc and which block)."""
    if begin in text and end in text:
        a, b = text.index(begin), text.index(end) + len(end)
        return text[:a] + body + text[b:]
    if before in text:
        a = text.index(before)
        return text[:a] + body + "\n\n" + text[a:]
    return None


def _replace(new: Path, out: Path) -> None:
    """Put the folder ``new`` at ``out``, replacing an older report there."""
    if not out.exists():
        new.rename(out)
        return
    if not (out / "report.html").exists() and any(out.iterdir()):
        raise FileExistsError(f"{out} exists and is not a report folder; choose another --out")
    old = out.with_name(f".{out.name}.old-{os.getpid()}")
    out.rename(old)
    new.rename(out)
    shutil.rmtree(old, ignore_errors=True)


def _json_default(v: Any) -> Any:
    if hasattr(v, "item"):  # numpy scalars
        return v.item()
    raise TypeError(f"not JSON serializable: {type(v).__name__}")


# ---------------------------------------------------------------------------------------- markdown
def _md_table(t: Table) -> str:
    lines = ["| " + " | ".join(c.header for c in t.columns) + " |", "|" + "---|" * len(t.columns)]
    lines += ["| " + " | ".join(r) + " |" for r in t.text_rows()]
    return "\n".join(lines)


def _progress(u: dict[str, Any]) -> str:
    if u["epoch"] is None:
        return "not started"
    of = f" of {u['epochs']}" if u["epochs"] else ""
    return f"stopped or running at epoch {u['epoch']}{of}"


def _n_unfinished(head: dict[str, Any]) -> int:
    return len(head["unfinished"]) + head["not_started"]


def _not_started(head: dict[str, Any]) -> str:
    return f"{head['not_started']} more planned trial(s) have no MLflow run yet: not started"


RUN_SECTION = "The sweep's run"
FINISHED_ONLY = ("Only finished trials enter the tables and figures (the cluster timeline draws every trial that ran). "
                 "A missing value is shown as —, never as 0.")


def _md_figure(f: Fig) -> list[str]:
    return [f"### {f.title}", ""] + ([f"![{f.title}](figures/{f.id}.png)", "", f.caption] if f.png
                                     else [f"Missing: {f.missing}."]) + [""]


def _markdown(head: dict[str, Any], tabs: list[Table], run: list[Fig], figs: list[Fig]) -> str:
    out = [f"# Report: sweep `{head['sweep']}`", "",
           f"Source: `{head['source']}`. Generated {head['generated']}. "
           f"Trials: {head['planned']} planned, {head['finished']} finished, {_n_unfinished(head)} unfinished.",
           f"Compared with: {PAPER_CITATION}", "",
           FINISHED_ONLY, ""]
    if _n_unfinished(head):
        out += ["## Unfinished trials", ""]
        out += [f"- `{u['run_name']}` ({u['trial_id']}): {_progress(u)}" for u in head["unfinished"]]
        if head["not_started"]:
            out.append(f"- {_not_started(head)}")
        out.append("")
    out += [f"## {RUN_SECTION}", ""] + [line for f in run for line in _md_figure(f)]
    for t in tabs:
        out += [f"## {t.title}", "", _md_table(t), ""] + [f"- {n}" for n in t.notes] + [""]
    out += ["## Figures", ""] + [line for f in figs for line in _md_figure(f)]
    return "\n".join(out)


# ---------------------------------------------------------------------------------------- html
CSS = """
body { font-family: system-ui, sans-serif; margin: 2em auto; max-width: 1200px; padding: 0 1em; color: #222; }
.tablewrap { overflow-x: auto; }
table { border-collapse: collapse; margin: 0.5em 0 0.3em; font-size: 0.9em; }
th, td { border: 1px solid #ccc; padding: 0.25em 0.55em; text-align: right; }
th { background: #f3f3f3; }
td.text { text-align: left; }
td.missing { color: #999; text-align: center; }
.notes { font-size: 0.85em; color: #555; }
figure { margin: 1.5em 0; }
figure img { max-width: 100%; border: 1px solid #eee; }
figcaption, .missingfig { font-size: 0.9em; color: #444; max-width: 900px; }
.missingfig { color: #999; }
"""


def _html_table(t: Table) -> str:
    e = html.escape
    head = "".join(f"<th>{e(c.header)}</th>" for c in t.columns)
    body = []
    for row, texts in zip(t.rows, t.text_rows()):
        cells = []
        for c, text in zip(t.columns, texts):
            cls = "missing" if row.get(c.key) is None else ("text" if c.kind in ("text", "yesno") else "num")
            cells.append(f'<td class="{cls}">{e(text)}</td>')
        body.append("<tr>" + "".join(cells) + "</tr>")
    notes = "".join(f"<li>{e(n)}</li>" for n in t.notes)
    return (f'<h2 id="{e(t.id)}">{e(t.title)}</h2>\n<div class="tablewrap"><table><thead><tr>{head}</tr></thead><tbody>\n'
            + "\n".join(body) + f'\n</tbody></table></div>\n<ul class="notes">{notes}</ul>\n')


def _html_figure(f: Fig) -> str:
    e = html.escape
    if not f.png:
        return f'<h3 id="{e(f.id)}">{e(f.title)}</h3>\n<p class="missingfig">Missing: {e(f.missing or "")}.</p>\n'
    data = base64.b64encode(f.png).decode("ascii")
    return (f'<figure id="{e(f.id)}"><h3>{e(f.title)}</h3>\n<img alt="{e(f.title)}" src="data:image/png;base64,{data}">\n'
            f"<figcaption>{e(f.caption)}</figcaption></figure>\n")


def _html(head: dict[str, Any], tabs: list[Table], run: list[Fig], figs: list[Fig]) -> str:
    e = html.escape
    parts = ["<!doctype html>", '<html lang="en"><head><meta charset="utf-8">',
             '<meta name="viewport" content="width=device-width, initial-scale=1">',
             '<link rel="icon" href="data:,">',
             f"<title>rethink-dist report: {e(head['sweep'])}</title><style>{CSS}</style></head><body>",
             f"<h1>Report: sweep <code>{e(head['sweep'])}</code></h1>",
             f"<p>Source: <code>{e(head['source'])}</code>. Generated {e(head['generated'])}. "
             f"Trials: {head['planned']} planned, {head['finished']} finished, "
             f"{_n_unfinished(head)} unfinished.</p>",
             f"<p>Compared with: {e(PAPER_CITATION)}</p>",
             f"<p>{e(FINISHED_ONLY)}</p>"]
    if _n_unfinished(head):
        items = "".join(f"<li><code>{e(u['run_name'])}</code> ({e(u['trial_id'])}): {e(_progress(u))}</li>"
                        for u in head["unfinished"])
        items += f"<li>{e(_not_started(head))}</li>" if head["not_started"] else ""
        parts.append(f'<h2 id="unfinished">Unfinished trials</h2><ul>{items}</ul>')
    parts.append(f'<h2 id="run">{e(RUN_SECTION)}</h2>')
    parts += [_html_figure(f) for f in run]
    parts += [_html_table(t) for t in tabs]
    parts.append("<h2>Figures</h2>")
    parts += [_html_figure(f) for f in figs]
    parts.append("</body></html>\n")
    return "\n".join(parts)
