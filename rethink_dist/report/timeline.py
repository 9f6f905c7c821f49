"""The sweep's run on the cluster, from the epoch rows' placements (node, node_id, pid, ended_at,
world_size): which node ran which trial when, where trials moved and where they changed size.

:func:`cluster_timeline` is pure data (what the figure draws and the report's JSON keeps). Nodes
are known only through the epochs they ran: a node is alive from the first start to the last end
of an epoch on it. An epoch's start is its end minus its duration (``train_seconds`` +
``eval_seconds``, else the step of the cumulative ``seconds``; 0 when neither is recorded).
Times are seconds since the first epoch's start, rounded to milliseconds.
"""

from __future__ import annotations

import bisect
import math
from typing import Any

import pandas as pd

SHORT_ID = 8  # hex digits of a Ray node id shown as its lane's name


def _known(v: Any) -> bool:
    return v is not None and not bool(pd.isna(v))


def _numbers(rows: pd.DataFrame, column: str) -> pd.Series:
    return pd.to_numeric(rows[column], errors="coerce").astype(float) if column in rows else \
        pd.Series(float("nan"), index=rows.index)


def _durations(rows: pd.DataFrame) -> pd.Series:
    """Each row's epoch duration in seconds; ``rows`` sorted by trial and epoch."""
    measured = _numbers(rows, "train_seconds") + _numbers(rows, "eval_seconds")
    cumulative = _numbers(rows, "seconds")
    step = cumulative.groupby(rows["trial_id"]).diff()
    step = step.where(step.notna() | (rows["epoch"] != 1), cumulative)  # epoch 1: its own cumulative seconds
    return measured.fillna(step).fillna(0.0).clip(lower=0.0)


def _text(rows: pd.DataFrame, column: str) -> pd.Series:
    """A text column with missing and empty values as None."""
    if column not in rows:
        return pd.Series(None, index=rows.index, dtype=object)
    return rows[column].map(lambda v: str(v) if _known(v) and str(v) else None)


def cluster_timeline(rows: pd.DataFrame) -> dict[str, Any] | None:
    """The run's nodes, trial segments, moves, resizes and counts over time; None without ``ended_at``.

    A segment is a trial's consecutive epochs in one process (node and pid). A move is a trial whose
    next epoch ran in another process: ``node_lost`` when the old node ran no epoch that ended after
    the trial's next segment started. A resize is a change of ``world_size`` between consecutive
    epochs of a trial (rows without it are not compared).
    """
    ended = _numbers(rows, "ended_at")
    if not ended.notna().any():
        return None
    r = rows.assign(ended_at=ended)
    untimed = int(r["ended_at"].isna().sum())
    r = r[r["ended_at"].notna()].sort_values(["trial_id", "epoch"]).reset_index(drop=True)
    node_id, host = _text(r, "node_id"), _text(r, "node")
    r["lane"] = node_id.fillna(host).fillna("unknown")
    r["node_id"], r["host"] = node_id, host
    r["pid"] = _numbers(r, "pid")
    r["world_size"] = _numbers(r, "world_size")
    r["start"] = r["ended_at"] - _durations(r)
    t0 = float(r["start"].min())
    r["start"], r["ended_at"] = (r["start"] - t0).round(3), (r["ended_at"] - t0).round(3)

    same_trial = r["trial_id"].eq(r["trial_id"].shift())
    pid_before = r["pid"].shift()
    same_process = r["lane"].eq(r["lane"].shift()) & (r["pid"].eq(pid_before) | (r["pid"].isna() & pid_before.isna()))
    r["segment"] = (~(same_trial & same_process)).cumsum()
    segments = []
    for _, g in r.groupby("segment", sort=True):
        first, last = g.iloc[0], g.iloc[-1]
        segments.append({
            "trial_id": str(first["trial_id"]),
            "run_name": str(first["run_name"] if "run_name" in g and _known(first["run_name"]) else first["trial_id"]),
            "lane": first["lane"], "node_id": first["node_id"], "host": first["host"],
            "pid": None if math.isnan(first["pid"]) else int(first["pid"]),
            "first_epoch": int(first["epoch"]), "last_epoch": int(last["epoch"]), "epochs": len(g),
            "start": float(first["start"]), "end": float(last["ended_at"]), "finished": bool(last["finished"])})

    nodes: dict[str, dict[str, Any]] = {}
    for s in segments:
        n = nodes.setdefault(s["lane"], {"lane": s["lane"], "label": s["lane"][:SHORT_ID] if s["node_id"] else s["lane"],
                                         "node_id": s["node_id"], "host": s["host"], "first": s["start"],
                                         "last": s["end"], "segments": 0, "epochs": 0})
        n.update(first=min(n["first"], s["start"]), last=max(n["last"], s["end"]), segments=n["segments"] + 1,
                 epochs=n["epochs"] + s["epochs"])
    for lane, n in nodes.items():
        n["slots"] = _stack([s for s in segments if s["lane"] == lane])
    ids = [n["node_id"] for n in nodes.values() if isinstance(n["node_id"], str)]
    if len({i[:SHORT_ID] for i in ids}) < len(ids):  # ids that share their start (Ray's local provider's)
        for n in nodes.values():
            if isinstance(n["node_id"], str):
                n["label"] = "…" + n["node_id"][-SHORT_ID:]

    moves = [{"trial_id": old["trial_id"], "epoch": new["first_epoch"], "from": old["lane"], "to": new["lane"],
              "from_pid": old["pid"], "to_pid": new["pid"], "at": old["end"],
              "node_lost": nodes[old["lane"]]["last"] <= new["start"]}
             for old, new in zip(segments, segments[1:]) if old["trial_id"] == new["trial_id"]]

    before = r["world_size"].shift()
    resized = r[same_trial & r["world_size"].notna() & before.notna() & r["world_size"].ne(before)]
    resizes = [{"trial_id": str(row["trial_id"]), "epoch": int(row["epoch"]), "from": int(before[i]),
                "to": int(row["world_size"]), "lane": row["lane"], "at": float(r["ended_at"][i - 1])}
               for i, row in resized.iterrows()]

    return {"t0": t0, "nodes": sorted(nodes.values(), key=lambda n: (n["first"], n["lane"])), "segments": segments,
            "moves": moves, "resizes": resizes, "counts": _counts(list(nodes.values()), segments),
            "rows_without_time": untimed}


def _stack(segments: list[dict[str, Any]]) -> int:
    """Give each of one node's segments a ``slot``: the lowest row free at its start, so that segments
    that overlap in time (trials the node ran at once) sit in different rows; returns the rows used."""
    ends: list[float] = []  # per slot, the end of its last segment
    for s in sorted(segments, key=lambda s: (s["start"], s["end"])):
        s["slot"] = next((i for i, end in enumerate(ends) if end <= s["start"]), len(ends))
        ends[s["slot"]:s["slot"] + 1] = [s["end"]]
    return len(ends)


def _counts(nodes: list[dict[str, Any]], segments: list[dict[str, Any]]) -> dict[str, list]:
    """Nodes alive and trials running from each change on (a step function: value i holds from
    t[i] to t[i + 1]; both are 0 from the last time on)."""
    node_iv = [(n["first"], n["last"]) for n in nodes]
    seg_iv = [(s["start"], s["end"]) for s in segments]
    times = sorted({t for iv in node_iv + seg_iv for t in iv})
    return {"t": times, "nodes": _running(node_iv, times), "trials": _running(seg_iv, times)}


def _running(intervals: list[tuple[float, float]], times: list[float]) -> list[int]:
    """How many of ``intervals`` hold each of ``times`` (start <= t < end)."""
    starts, ends = sorted(a for a, _ in intervals), sorted(b for _, b in intervals)
    return [bisect.bisect_right(starts, t) - bisect.bisect_right(ends, t) for t in times]
