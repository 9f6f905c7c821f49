"""The report from hand-made results: table cells, figure series, missing cells, unfinished trials,
the command's input errors, and MLflow (a real server) as input and as the place the report goes."""

from __future__ import annotations

import json
import math
import re
import subprocess
import sys
from pathlib import Path

import pandas as pd
import pytest

from rethink_dist.cli import main
from rethink_dist.report import build_report, load_folder
from rethink_dist.report.figures import TIMELINE_MISSING

REPO = Path(__file__).resolve().parents[1]
SWEEP = "handmade"


def _flat(data="cifar10", model="mlp_1x512", kind="none", level=0.0, aug=False, wd=0.0, dropout=0.0, bn=True,
          seed=0, epochs=4):
    return {"data.name": data, "model.name": model, "corruption.kind": kind, "corruption.level": level,
            "corruption.seed": 0, "reg.augment": aug, "reg.weight_decay": wd, "reg.dropout": dropout,
            "reg.batch_norm": bn, "optim.epochs": epochs, "optim.lr": 0.01, "optim.batch_size": 128,
            "stop.stop_when_fitted": False, "seed": seed}


# (trial id, config, final train acc, final test acc, epochs with rows, finished)
TRIALS = [
    ("t00", _flat(model="inception_small", aug=True, wd=5e-4, seed=0), 1.0, 0.88, 4, True),
    ("t01", _flat(model="inception_small", aug=True, wd=5e-4, seed=1), 1.0, 0.90, 4, True),
    ("t02", _flat(model="inception_small"), 1.0, 0.85, 4, True),
    ("t03", _flat(model="inception_small", bn=False), 1.0, 0.80, 4, True),
    ("t04", _flat(), 1.0, 0.50, 4, True),
    ("t05", _flat(kind="labels", level=0.5), 1.0, 0.30, 4, True),
    ("t06", _flat(kind="labels", level=1.0), 0.99, 0.10, 4, True),
    ("t07", _flat(kind="shuffled_pixels"), 1.0, 0.45, 4, True),
    ("t08", _flat(model="alexnet_small", epochs=5), 0.60, 0.40, 2, False),  # running
]
PLANNED_ONLY = ("t09", _flat(model="alexnet_small", wd=5e-4))  # in sweep.json, no rows yet


STARTED = 1_700_000_000.0  # the handmade sweep's first epoch starts then (Unix seconds)


def _rows(tid, flat, train, test, n_epochs, finished, total_epochs=4):
    rows, best = [], 0.0
    i = int(tid[1:])  # two nodes, two trials at a time (the cluster timeline): 5 s apart, 1.1 s per epoch
    level = flat["corruption.level"] if flat["corruption.kind"] == "labels" else 0.0
    for e in range(1, n_epochs + 1):
        frac = e / total_epochs
        tr, te = train * frac, test * (0.5 + 0.5 * frac)
        best = max(best, te)
        fitted = finished and e == n_epochs and train >= 1.0
        rows.append({
            "trial_id": tid, "sweep": SWEEP, "run_name": f"{tid}_{flat['model.name']}", "kind": "network",
            "epoch": e, "step": 100 * e, "train_loss": 2.3 * (1 - 0.9 * frac), "train_acc": tr,
            # p=1.0 still keeps about 10% of the labels: both subsets exist; p=0 has no corrupted samples.
            "train_acc_clean": min(1.0, tr * 1.1) if level > 0 else tr,
            "train_acc_corrupted": tr * 0.8 if level > 0 else None,
            "test_acc": te, "test_top5": min(1.0, te + 0.3), "best_test_acc": best, "lr": 0.01,
            "images_per_s": 1000.0, "train_seconds": 1.0, "eval_seconds": 0.1, "seconds": 1.1 * e,
            "steps_to_fit": 100 * e * (1 + 2 * level) if fitted else None,
            "finished": finished and e == n_epochs, **flat,
            "node": f"host{i % 2}", "node_id": f"{i % 2:02d}" * 28, "pid": 1000 + i,
            "ended_at": STARTED + 5 * (i // 2) + 1.1 * e, "world_size": 1,
        })
    return rows


def write_handmade(folder: Path) -> Path:
    """A sweep folder (sweep.json + trials.parquet) with the values of TRIALS; returns the folder."""
    folder.mkdir(parents=True, exist_ok=True)
    rows = [r for t in TRIALS for r in _rows(*t)]
    df = pd.DataFrame(rows)
    df["steps_to_fit"] = df["steps_to_fit"].astype("Int64")
    df.to_parquet(folder / "trials.parquet")
    planned = [{"trial_id": t[0], "run_name": f"{t[0]}_{t[1]['model.name']}", "kind": "network", "flat": t[1]}
               for t in TRIALS + [(*PLANNED_ONLY,)]]
    (folder / "sweep.json").write_text(json.dumps({"sweep": SWEEP, "trials": planned}))
    # Per-sample records of t05 (p = 0.5, 4 epochs): 4 clean samples fitted for good at epochs 1, 1,
    # 2 and never; 2 corrupted ones at 3 and never. The other trials kept none.
    import numpy as np

    from rethink_dist.parquet import write_sample_records

    write_sample_records(folder / "samples" / "t05.parquet", "t05", {
        "sample": np.arange(6), "label_changed": np.array([0, 0, 0, 0, 1, 1], bool),
        "first_fit_epoch": np.array([1, 1, 2, -1, 3, -1]), "forgettings": np.array([0, 1, 0, 2, 0, 0])})
    return folder


def _row(table, **match):
    hits = [r for r in table.rows if all(r[k] == v for k, v in match.items())]
    assert len(hits) == 1, (match, hits)
    return hits[0]


@pytest.fixture(scope="module")
def report(tmp_path_factory):
    folder = write_handmade(tmp_path_factory.mktemp("storage") / SWEEP)
    return build_report(load_folder(folder), folder / "report")


def test_table1_cells_against_the_paper(report):
    t1 = next(t for t in report.tables if t.id == "table1-cifar10")
    r = _row(t1, model="Inception", random_crop=True, weight_decay=True, labels="true")
    assert r["n"] == 2
    assert r["train"] == pytest.approx(100.0) and r["train_std"] == pytest.approx(0.0)
    assert r["test"] == pytest.approx(89.0) and r["test_std"] == pytest.approx(math.sqrt(2))
    assert r["paper_test"] == 89.05 and r["d_test"] == pytest.approx(-0.05)
    r = _row(t1, model="MLP 1x512", random_crop=False, weight_decay=False, labels="random")
    assert (r["n"], r["train"], r["test"], r["paper_train"], r["paper_test"]) == (1, pytest.approx(99.0),
                                                                                  pytest.approx(10.0), 99.34, 10.61)
    assert r["train_std"] is None  # one seed: no std, not 0
    # Every paper row is there; rows the sweep did not finish are missing, never zero.
    assert len([r for r in t1.rows if r["paper_test"] is not None]) == 19
    nobn = _row(t1, model="Inception w/o BN", random_crop=False, weight_decay=True, labels="true")
    assert (nobn["n"], nobn["train"], nobn["test"], nobn["d_test"], nobn["paper_test"]) == (0, None, None, None, 83.0)
    running = _row(t1, model="AlexNet", random_crop=False, weight_decay=False, labels="true")
    assert running["n"] == 0 and running["test"] is None  # its trial has rows but did not finish
    text = dict(zip([c.key for c in t1.columns], t1.text_rows()[t1.rows.index(running)]))
    assert text["test"] == "—" and text["d_test"] == "—" and text["paper_test"] == "76.07"


def test_table2_without_imagenet_is_all_missing(report):
    t2 = next(t for t in report.tables if t.id == "table2")
    assert len(t2.rows) == 5 and all(r["n"] == 0 and r["test_top1"] is None for r in t2.rows)
    no_reg = _row(t2, augment=False, dropout=False, weight_decay=False, labels="true")
    assert (no_reg["paper_test_top1"], no_reg["paper_best_test_top1"]) == (59.80, 63.16)
    assert "0.00" not in {cell for row in t2.text_rows() for cell in row}


def test_figures_have_the_expected_series(report):
    figs = {f.id: f for f in report.figures}
    assert set(figs["fig1a-cifar10"].series) == {"true labels", "random labels", "shuffled pixels"}
    assert "MLP 1x512" in figs["fig1a-cifar10"].title
    loss = figs["fig1a-cifar10"].series["true labels"][0]
    assert loss["x"] == [0.1, 0.2, 0.3, 0.4] and loss["y"][0] == pytest.approx(2.3 * (1 - 0.9 / 4))
    fig1b = figs["fig1b-cifar10"].series
    assert set(fig1b) == {"MLP 1x512"}  # Inception ran at one level only: no line
    assert fig1b["MLP 1x512"]["x"] == [0.0, 0.5, 1.0]
    # p=1 never fitted (train 99%): a gap, not a zero.
    assert fig1b["MLP 1x512"]["y"] == [1.0, pytest.approx(2.0), None]
    assert fig1b["MLP 1x512"]["unfitted"] == [0, 0, 1]
    assert figs["fig1c-cifar10"].series["MLP 1x512"]["y"] == [pytest.approx(0.5), pytest.approx(0.7), pytest.approx(0.9)]
    fig2a = figs["fig2a-cifar10"]
    assert set(fig2a.series) == {"random crop + weight decay", "no regularizer"} and "Inception" in fig2a.title
    run = fig2a.series["random crop + weight decay"][1]
    assert run["best"] == [0.4, pytest.approx(0.90)] and run["final"] == [0.4, pytest.approx(0.90)]
    assert set(figs["fig2b-cifar10"].series) == {"Inception train", "Inception test", "Inception w/o BN train",
                                                 "Inception w/o BN test"}
    assert set(figs["memorization-cifar10"].series) == {"p=0.5 MLP 1x512 clean", "p=0.5 MLP 1x512 corrupted",
                                                        "p=1 MLP 1x512 clean", "p=1 MLP 1x512 corrupted"}
    for f in report.figures:
        assert f.png and f.png.startswith(b"\x89PNG") and (report.out / "figures" / f"{f.id}.png").exists()


def test_unfinished_trials_and_files(report):
    assert [u["trial_id"] for u in report.unfinished] == ["t08", "t09"]
    assert (report.unfinished[0]["epoch"], report.unfinished[0]["epochs"]) == (2, 5)
    assert report.unfinished[1]["epoch"] is None
    page = report.html.read_text()
    assert "Unfinished trials" in page and "t08_alexnet_small" in page and "not started" in page
    assert page.count("data:image/png;base64,") == len(report.figures) and "figures/" not in page
    text = re.sub(r"data:image/png;base64,[A-Za-z0-9+/=]+", "", page)
    assert not re.search(r"\bnan\b", text, re.I) and not re.search(r"\bNone\b", text)
    md = report.markdown.read_text()
    assert "| Inception | yes | yes | true | 2 | 100.00 ± 0.00 | 100.00 | +0.00 | 89.00 ± 1.41 | 89.05 | -0.05 |" in md
    data = json.loads(report.data.read_text())
    assert data["planned"] == 10 and data["finished"] == 8
    assert {f["id"] for f in data["figures"]} == {f.id for f in report.figures}


def test_missing_figures_say_why(tmp_path):
    folder = tmp_path / "s"
    folder.mkdir()
    (folder / "sweep.json").write_text(json.dumps({"sweep": "s", "trials": [
        {"trial_id": "a", "run_name": "a", "flat": _flat(data="digits")}]}))
    rep = build_report(load_folder(folder), tmp_path / "out")
    assert all(f.png is None and f.missing for f in rep.figures)
    t1 = rep.tables[0]
    assert t1.id == "table1-digits" and "paper_test" not in [c.key for c in t1.columns]
    assert [(r["model"], r["n"], r["test"]) for r in t1.rows] == [("MLP 1x512", 0, None)]
    assert "Missing: needs" in rep.html.read_text() and rep.unfinished[0]["trial_id"] == "a"


def test_command_writes_report_and_prints_html_path(tmp_path, capsys):
    folder = write_handmade(tmp_path / SWEEP)
    assert main(["report", str(folder)]) == 0
    out = capsys.readouterr().out.strip()
    assert out == str(folder.resolve() / "report" / "report.html") and Path(out).exists()
    assert main(["report", str(folder), "--out", str(tmp_path / "elsewhere")]) == 0  # and again: replaced
    assert main(["report", str(folder), "--out", str(tmp_path / "elsewhere")]) == 0
    assert sorted(p.name for p in tmp_path.iterdir()) == ["elsewhere", SWEEP]  # no temp folders left


@pytest.mark.parametrize("argv, expected", [
    (["report"], "give RESULTS"),
    (["report", "/nonexistent/sweep"], "'/nonexistent/sweep' not found"),
    (["report", "--experiment", "x"], "give RESULTS"),
])
def test_bad_input_is_one_line_exit_2(argv, expected, capsys):
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert expected in err and err.count("\n") == 1


def test_bad_parquet_leaves_nothing_written(tmp_path, capsys):
    folder = tmp_path / "s"
    folder.mkdir()
    pd.DataFrame({"trial_id": ["a"], "epoch": [1]}).to_parquet(folder / "trials.parquet")
    assert main(["report", str(folder)]) == 2
    err = capsys.readouterr().err
    assert "lacks column(s) step, train_loss" in err and err.count("\n") == 1
    assert sorted(p.name for p in folder.iterdir()) == ["trials.parquet"]
    (folder / "trials.parquet").write_bytes(b"not parquet")
    assert main(["report", str(folder)]) == 2
    assert "cannot read" in capsys.readouterr().err


def test_out_that_is_not_a_report_folder_is_refused(tmp_path, capsys):
    folder = write_handmade(tmp_path / SWEEP)
    precious = tmp_path / "precious"
    precious.mkdir()
    (precious / "thesis.tex").write_text("keep me")
    assert main(["report", str(folder), "--out", str(precious)]) == 2
    assert "not a report folder" in capsys.readouterr().err
    assert [p.name for p in precious.iterdir()] == ["thesis.tex"]
    assert sorted(p.name for p in tmp_path.iterdir()) == [SWEEP, "precious"]


def test_help_is_fast_and_lists_report():
    out = subprocess.run([sys.executable, "-m", "rethink_dist.cli", "report", "--help"], capture_output=True,
                         text=True, cwd=REPO, timeout=60)
    assert out.returncode == 0 and "--tracking-uri" in out.stdout


# ---------------------------------------------------------------------------------------- MLflow
FOLDER_ONLY = ("first-fit", "cluster-timeline")  # figures of data that the sweep's folder has and MLflow has not


def _log_handmade_sweep(uri: str, experiment: str, trials: list = TRIALS) -> str:
    """Write ``trials`` to MLflow in the layout of docs/results-format.md; returns the parent run id."""
    from mlflow.entities import Metric, Param, RunTag
    from mlflow.tracking import MlflowClient

    client = MlflowClient(uri)
    exp = client.create_experiment(experiment)
    parent = client.create_run(exp, run_name=experiment, tags={"rethink.role": "sweep", "rethink.sweep": experiment})
    client.log_param(parent.info.run_id, "num_trials", str(len(trials) + 1))  # one planned trial never started
    for tid, flat, train, test, n_epochs, finished in trials:
        run = client.create_run(exp, run_name=f"{tid}_{flat['model.name']}", tags={
            "mlflow.parentRunId": parent.info.run_id, "rethink.role": "trial", "rethink.sweep": experiment,
            "rethink.trial_id": tid})
        metrics = []
        for r in _rows(tid, flat, train, test, n_epochs, finished):
            metrics += [Metric(k, float(r[k]), 0, r["epoch"]) for k in
                        ("step", "train_loss", "train_acc", "train_acc_clean", "train_acc_corrupted", "test_acc",
                         "test_top5", "best_test_acc", "seconds") if r[k] is not None]
            if r["finished"] and r["steps_to_fit"] is not None:
                metrics.append(Metric("summary.steps_to_fit", float(r["steps_to_fit"]), 0, 0))
        client.log_batch(run.info.run_id, metrics=metrics, params=[Param(k, str(v)) for k, v in flat.items()])
        client.set_terminated(run.info.run_id, "FINISHED" if finished else "RUNNING")
    client.set_terminated(parent.info.run_id, "FINISHED")
    return parent.info.run_id


def test_report_from_mlflow_matches_parquet_and_is_logged(mlflow_server, tmp_path, capsys):
    from mlflow.tracking import MlflowClient

    parent = _log_handmade_sweep(mlflow_server, "handmade-mlflow")
    capsys.readouterr()  # MLflow's own "View run" lines
    out = tmp_path / "rep"
    assert main(["report", "--tracking-uri", mlflow_server, "--experiment", "handmade-mlflow", "--out", str(out)]) == 0
    assert capsys.readouterr().out.strip() == str(out / "report.html")
    from_mlflow = json.loads((out / "report.json").read_text())
    assert (from_mlflow["planned"], from_mlflow["finished"]) == (len(TRIALS) + 1, len([t for t in TRIALS if t[5]]))
    assert [u["trial_id"] for u in from_mlflow["unfinished"]] == ["t08"] and from_mlflow["not_started"] == 1
    assert "1 more planned trial(s) have no MLflow run yet" in (out / "report.html").read_text()
    parquet = build_report(load_folder(write_handmade(tmp_path / SWEEP)), tmp_path / "rep2")
    assert from_mlflow["tables"] == json.loads(parquet.data.read_text())["tables"]
    # (per-sample records and epoch end times live in the sweep's folder only: from MLflow the first-fit
    # figure and the cluster timeline are missing)
    assert {f["id"]: sorted(f["series"]) for f in from_mlflow["figures"] if not f["id"].startswith(FOLDER_ONLY)} == \
        {f.id: sorted(f.series) for f in parquet.figures if not f.id.startswith(FOLDER_ONLY)}
    assert next(f for f in from_mlflow["figures"] if f["id"] == "cluster-timeline")["missing"] == TIMELINE_MISSING
    logged = {a.path for a in MlflowClient(mlflow_server).list_artifacts(parent, "report")}
    assert {"report/report.html", "report/report.md", "report/report.json", "report/figures"} <= logged


def test_folder_report_logs_to_its_sweeps_parent_run(mlflow_server, tmp_path, capsys):
    from mlflow.tracking import MlflowClient

    parent = _log_handmade_sweep(mlflow_server, SWEEP + "-folder", trials=[])  # the data comes from the folder
    folder = write_handmade(tmp_path / SWEEP)
    capsys.readouterr()
    assert main(["report", str(folder), "--tracking-uri", mlflow_server, "--experiment", SWEEP + "-folder"]) == 0
    assert f"MLflow run {parent}" in capsys.readouterr().err
    figs = {a.path for a in MlflowClient(mlflow_server).list_artifacts(parent, "report/figures")}
    assert "report/figures/fig1a-cifar10.png" in figs


def test_unknown_experiment_names_the_valid_ones(mlflow_server, capsys):
    assert main(["report", "--tracking-uri", mlflow_server, "--experiment", "no-such-sweep"]) == 2
    err = capsys.readouterr().err
    assert "no MLflow experiment 'no-such-sweep'" in err and "valid:" in err and err.count("\n") == 1


def test_no_parent_run_is_a_note_not_an_error(tmp_path, capsys):
    folder = write_handmade(tmp_path / SWEEP)
    uri = f"sqlite:///{tmp_path / 'other.db'}"
    assert main(["report", str(folder), "--tracking-uri", uri]) == 0
    captured = capsys.readouterr()
    assert "no sweep parent run in MLflow experiment 'handmade'" in captured.err
    assert Path(captured.out.strip().splitlines()[-1]).exists()


def test_first_fit_figure_from_per_sample_records(tmp_path):
    """The first-fit figure: per architecture and level, the fraction of clean / corrupted samples
    fitted for good by each epoch, from samples/<trial_id>.parquet."""
    folder = write_handmade(tmp_path / SWEEP)  # with t05's per-sample records
    report = build_report(load_folder(folder), folder / "report")
    fig = next(f for f in report.figures if f.id == "first-fit-cifar10")
    assert fig.png and not fig.missing
    assert sorted(fig.series) == ["MLP 1x512 p=0.5 clean", "MLP 1x512 p=0.5 corrupted"]  # t06 kept no records
    clean, corrupted = fig.series["MLP 1x512 p=0.5 clean"], fig.series["MLP 1x512 p=0.5 corrupted"]
    assert clean["epoch"] == [0, 1, 2, 3, 4]
    assert clean["fraction_fitted"] == [0.0, 0.5, 0.75, 0.75, 0.75]
    assert corrupted["fraction_fitted"] == [0.0, 0.0, 0.0, 0.5, 0.5]
    assert (clean["samples"], corrupted["samples"], clean["median_first_fit"]) == (4, 2, 1.0)
    assert clean["forgettings_mean"] == pytest.approx(0.75)
    samples = pd.read_parquet(folder / "samples" / "t05.parquet")
    assert samples["first_fit_epoch"].isna().tolist() == [False, False, False, True, False, True]
    # Without any records the figure says what it needs.
    (folder / "samples" / "t05.parquet").unlink()
    again = build_report(load_folder(folder), tmp_path / "again")
    assert next(f for f in again.figures if f.id == "first-fit-cifar10").missing.startswith("needs trials run with")


def test_the_folder_of_parts_reads_as_the_one_file_did(tmp_path):
    """A sweep's trials.parquet is a folder of per-trial parts; an earlier version's one file becomes
    one when a driver opens it: the report reads the same rows either way, from the sweep folder or
    from the table itself."""
    from rethink_dist.parquet import ResultsTable

    one_file = load_folder(write_handmade(tmp_path / "a" / SWEEP))
    folder = write_handmade(tmp_path / "b" / SWEEP)
    ResultsTable(folder / "trials.parquet")  # the conversion a driver's --resume makes
    assert (folder / "trials.parquet").is_dir() and len(list((folder / "trials.parquet").glob("t*.parquet"))) > 1
    for parts in (load_folder(folder), load_folder(folder / "trials.parquet")):
        cols = ["trial_id", "epoch", "train_acc", "test_acc", "model.name"]
        a = one_file.rows[cols].sort_values(["trial_id", "epoch"]).reset_index(drop=True)
        b = parts.rows[cols].sort_values(["trial_id", "epoch"]).reset_index(drop=True)
        pd.testing.assert_frame_equal(a, b)
