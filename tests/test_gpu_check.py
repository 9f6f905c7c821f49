"""bench/gpu_check.py --smoke: the GPU check runs on the CPU, so it cannot rot between GPU runs."""

import json
import math
import os
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]


def _numbers(obj, path=""):
    if isinstance(obj, dict):
        for k, v in obj.items():
            yield from _numbers(v, f"{path}.{k}")
    elif isinstance(obj, list):
        for i, v in enumerate(obj):
            yield from _numbers(v, f"{path}[{i}]")
    elif isinstance(obj, (int, float)) and not isinstance(obj, bool):
        yield path, obj
    elif obj is None:
        yield path, None


def _judge():
    sys.path.insert(0, str(REPO / "bench"))
    import gpu_expectations

    return gpu_expectations


def test_gpu_check_smoke_writes_every_section_with_finite_numbers_and_its_verdicts(tmp_path):
    out = tmp_path / "gpu_check.json"
    code = ("import sys, runpy; sys.modules['ray'] = sys.modules['mlflow'] = sys.modules['ffcv'] = None; "
            f"sys.argv = ['gpu_check.py', '--smoke', '--device', 'cpu', '--budget-s', '900', '--json', {str(out)!r}, "
            "'--break-expectation', 'kernel_qr_route']; "
            f"runpy.run_path({str(REPO / 'bench' / 'gpu_check.py')!r}, run_name='__main__')")
    # Ray, MLflow and FFCV made unimportable: the check must not need them (the GPU machine has none);
    # the paper section's workers are processes of their own and must not need them either.
    blocked = tmp_path / "blocked"
    for name in ("ray", "mlflow", "ffcv"):  # packages of these names first on the path: importing them fails
        (blocked / name).mkdir(parents=True)
        (blocked / name / "__init__.py").write_text(f"raise ImportError('{name} is not on the GPU machine')\n")
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(p for p in (str(blocked), os.environ.get("PYTHONPATH")) if p)}
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=900, env=env)
    assert proc.returncode == 0, proc.stderr[-3000:]
    d = json.loads(out.read_text())
    assert d["mode"] == "smoke" and d["env"]["device"] == "cpu"
    for section in ("ceiling", "defects", "paper", "archs", "sharing", "inception_v3", "kernel"):
        assert "error" not in d[section] and "skipped" not in d[section], (section, d[section])
    defects = d["defects"]
    for check in ("augment", "lrn_bf16", "channels_last", "determinism", "profile"):
        assert "error" not in defects[check] and "skipped" not in defects[check], (check, defects[check])
    assert defects["augment"]["images_per_s"] > 0 and defects["augment"]["syncs_counted"] is False  # CUDA only
    lrn = defects["lrn_bf16"]["scale_8"]  # activations large enough for bf16 to show the layer's effect
    assert lrn["shrink_reference_fp64"] > 0.01
    assert abs(lrn["shrink_project_layer"] - lrn["shrink_reference_fp64"]) < 0.1 * lrn["shrink_reference_fp64"]
    assert defects["determinism"]["bitwise_equal"] and defects["determinism"]["epoch_update_max_abs"] > 0
    cl = defects["channels_last"]
    assert cl["channels_last"] and cl["batch_is_channels_last"] and cl["train_step_ms"] > 0
    assert set(defects["profile"]["train_step_seconds_by_phase"]) == {"data", "forward", "backward", "optimizer"}
    linear = d["kernel"]["linear"]  # n = 300 > D = 48: solved from the features' SVD, never forming K
    assert linear["solver"] == "svd_pinv" and linear["rank"] == 48 and linear["qr_vs_plain_svd_max_abs_diff"] < 1e-9
    assert d["kernel"]["random_conv"]["max_rel_diff_vs_cpu_fp64"] < 1e-5
    # The paper section: the project's trials on (the first images of) Fashion-MNIST, as worker processes.
    paper = d["paper"]
    assert "partial" not in paper and len(paper["trials"]) == 3 and not paper["not_started"]
    for t in paper["trials"]:
        assert t["stop"] == "epoch cap" and len(t["history"]) == 2, t.get("error")  # smoke: 2 epochs, not fitted
        assert t["meta"]["num_train"] == 192 and t["config"]["data.name"] == "fashion_mnist"
        assert t["config"]["data.channels"] == 3 and t["config"]["stop.fit_threshold"] == 0.99
        assert t["config"]["optim.lr"] == (0.1 if t["arch"] == "inception_small" else 0.01)
        ev = t["eval_precision"]
        assert 0 <= ev["flipped_fraction"] <= 1 and abs(ev["train_acc_fp32_eval"] - t["summary"]["train_acc"]) < 1e-6
    for arch in ("mlp_1x512", "mlp_3x512", "alexnet_small", "inception_small"):
        for precision in ("fp32", "bf16"):
            row = d["archs"][arch][precision]
            assert row["images_per_s"] > 0 and row["eval_seconds"] > 0 and row["of_ceiling"] > 0
    assert set(d["sharing"]) >= {"procs_1", "procs_4"} and d["sharing"]["procs_1"]["speedup_vs_one"] == 1.0
    assert d["inception_v3"]["batch_2"]["images_per_s"] > 0
    assert d["kernel"]["solver"] == "cholesky_pcg" and d["kernel"]["train_error"] == 0.0
    bad = [(p, v) for p, v in _numbers({k: v for k, v in d.items() if k != "expectations"}) if v is None or not math.isfinite(v)]
    # None where the record means "none": a trial's unset config fields, unfitted steps_to_fit, the
    # clean/corrupted split where no label changed, the held-out accuracy of a trial on the whole set
    bad = [(p, v) for p, v in bad if ".config." not in p and not p.endswith(("train_acc_clean", "train_acc_corrupted",
                                                                             "heldout_acc", "steps_to_fit"))]
    assert not bad, bad

    # Every expectation is judged, and its number read from this JSON (its wiring); GPU-only ones
    # say so on a CPU; the one broken on purpose is "not met", and met when judged as written.
    ge = _judge()
    rows = {r["name"]: r for r in d["expectations"]}
    assert list(rows) == [e.name for e in ge.EXPECTATIONS]
    for r in rows.values():
        assert r["verdict"] in ("met", "not met", "not measured", "n/a on cpu") and r["why"], r
        if r["verdict"] == "not measured":  # only where the smoke run has nothing to judge
            assert r["name"] in ("paper_random_pixels_faster",), r
    assert rows["kernel_qr_route"]["verdict"] == "not met" and rows["kernel_qr_route"]["broken"]
    assert rows["augment_syncs_per_step"]["verdict"] == "n/a on cpu" and rows["augment_syncs_per_step"]["note"] == "judged on a GPU only"
    for name in ("lrn_bf16_error", "determinism_drift", "kernel_rbf_train_error", "kernel_random_conv"):
        assert rows[name]["verdict"] == "met", rows[name]
    again = {r["name"]: r for r in ge.judge(d, "cpu")}
    assert again["kernel_qr_route"]["verdict"] == "met"
    for name in ("archs_bf16_vs_fp32", "sharing_4_trials", "inception_v3_images_per_s", "paper_true_labels_test"):
        assert rows[name]["value"] is not None and rows[name]["verdict"] == "n/a on cpu", rows[name]
    assert json.loads(proc.stdout) == d  # the JSON on stdout, as every bench prints it; the tables on stderr
    assert "kernel_qr_route" in proc.stderr.splitlines()[-1] and "| not met | kernel_qr_route" in proc.stderr
    assert "| inception_small / random labels | epoch cap | 2 |" in proc.stderr  # the paper's trials, printed


def test_expectations_judge_sections_not_run_skipped_or_failed():
    ge = _judge()
    rows = {r["name"]: r for r in ge.judge({"defects": {"augment": {"error": "RuntimeError: x"}}, "kernel": {"skipped": "time"}},
                                           "cuda")}
    assert rows["augment_syncs_per_step"]["verdict"] == "not measured" and "RuntimeError" in rows["augment_syncs_per_step"]["note"]
    assert rows["kernel_rbf_train_error"]["note"].startswith("skipped") and rows["paper_random_labels_fitted"]["note"] == "section not run"
    paper = {"trials": [
        {"arch": "alexnet_small", "kind": "labels", "level": 1.0, "summary": {"train_acc": 0.995, "test_acc": 0.101, "steps_to_fit": 9000}},
        {"arch": "alexnet_small", "kind": "random_pixels", "level": 0.0, "summary": {"train_acc": 0.99, "test_acc": 0.1, "steps_to_fit": 4000}},
        {"arch": "inception_small", "kind": "labels", "level": 1.0, "summary": {"train_acc": 0.7, "test_acc": 0.13, "steps_to_fit": None}},
        {"arch": "inception_small", "kind": "none", "level": 0.0, "summary": {"train_acc": 0.99, "test_acc": 0.92, "steps_to_fit": 2000}}]}
    rows = {r["name"]: r for r in ge.judge({"paper": paper}, "cuda")}
    assert rows["paper_random_labels_fitted"]["verdict"] == "not met" and rows["paper_random_labels_fitted"]["value"] == 0.7
    assert rows["paper_random_labels_test"]["verdict"] == "not met"  # 13% is 3 points from chance
    assert rows["paper_true_labels_test"]["verdict"] == "met"
    assert rows["paper_random_pixels_faster"]["verdict"] == "met" and abs(rows["paper_random_pixels_faster"]["value"] - 4 / 9) < 1e-12


def _fake_gpu_json(path):
    """A GPU check's JSON as command 1 and 2 write it, with made-up numbers (the generators' input)."""
    def trial(arch, kind, level, epochs, fit_at, test):
        hist = []
        for e in range(1, epochs + 1):
            acc = min(0.995, 0.2 + 0.8 * e / fit_at) if fit_at else 0.5
            hist.append({"epoch": e, "step": 469 * e, "train_loss": 2.3 / e, "train_acc": acc, "train_acc_clean": None,
                         "train_acc_corrupted": None, "test_acc": test, "test_top5": 0.5, "best_test_acc": test,
                         "lr": 0.01, "images_per_s": 50000.0, "train_seconds": 1.2, "eval_seconds": 0.4,
                         "seconds": 1.6 * e, "steps_to_fit": 469 * fit_at if fit_at and e >= fit_at else None})
        cfg = {"data.name": "fashion_mnist", "model.name": arch, "corruption.kind": kind, "corruption.level": level,
               "seed": 0, "reg.batch_norm": True, "reg.weight_decay": 0.0, "reg.augment": False, "optim.momentum": 0.9,
               "optim.batch_size": 128, "optim.lr": 0.1 if arch == "inception_small" else 0.01,
               "optim.lr_decay": 0.995, "optim.epochs": 450, "stop.fit_threshold": 0.99, "data.channels": 3,
               "data.max_train": None}
        from rethink_dist.records import summarize

        return {"trial": f"{arch} / {kind}", "arch": arch, "kind": kind, "level": level, "config": cfg,
                "meta": {"num_train": 60000}, "history": hist, "summary": summarize(hist),
                "stop": "fitted" if fit_at and fit_at <= epochs else "time cap",
                "eval_precision": {"flipped_fraction": 0.001, "train_acc_fp32_eval": 0.99, "train_acc_bf16_eval": 0.99}}

    trials = [trial("inception_small", "labels", 1.0, 30, None, 0.1), trial("alexnet_small", "labels", 1.0, 40, 35, 0.1),
              trial("inception_small", "none", 0.0, 10, 8, 0.92), trial("alexnet_small", "none", 0.0, 12, 10, 0.9),
              trial("alexnet_small", "random_pixels", 0.0, 9, 7, 0.1)]
    env = {"gpu": "NVIDIA H200", "torch": "2.11.0+cu130", "cuda": "13.0", "cpu_count": 16, "device": "cuda",
           "date": "2026-12-05T10:00:00Z"}
    one = {"mode": "full", "env": env, "command": "python3 bench/gpu_check.py --sections defects,paper",
           "paper": {"data": "all of .data/fashion-mnist", "slots": 6, "wall_seconds": 250.0, "trials": trials,
                     "not_started": ["inception_small / gaussian"]},
           "expectations": [{"name": "paper_random_labels_fitted", "section": "paper", "expects": "conv nets fit",
                             "op": ">=", "threshold": 0.99, "value": 0.5, "verdict": "not met"}]}
    archs = {a: {"bf16": {"images_per_s": ips, "eval_seconds": ev, "train_seconds": 50000 / ips}}
             for a, ips, ev in (("mlp_1x512", 400000.0, 0.1), ("mlp_3x512", 300000.0, 0.1),
                                ("alexnet_small", 60000.0, 0.3), ("inception_small", 15000.0, 1.5))}
    two = {"mode": "full", "env": {**env, "date": "2026-12-05T10:07:00Z"}, "archs": archs,
           "sharing": {"procs_4": {"speedup_vs_one": 2.5}},
           "inception_v3": {"image_size": 299, "batch_128": {"images_per_s": 3000.0}}}
    (path / "gpu-check-1.json").write_text(json.dumps(one))
    (path / "gpu-check-2.json").write_text(json.dumps(two))
    return [path / "gpu-check-1.json", path / "gpu-check-2.json"]


def test_generators_render_the_gpu_rows_and_cost_or_say_there_is_none(tmp_path):
    import runpy
    import shutil

    sys.path.insert(0, str(REPO))
    gen = runpy.run_path(str(REPO / "docs" / "results" / "fashion_mnist.py"))
    doc = tmp_path / "fashion-mnist.md"
    shutil.copy(REPO / "docs" / "results" / "fashion-mnist.md", doc)
    figs = tmp_path / "figs"
    files = _fake_gpu_json(tmp_path)
    assert gen["main"](["--gpu-only", "--doc", str(doc), "--figs", str(figs), "--gpu", str(files[0]),
                        "--gpu", str(files[1])]) == 0
    text = doc.read_text()
    assert "measured on NVIDIA H200" in text and "2026-12-05T10:00:00Z" in text
    assert "| AlexNet | no | random | 40 | 99.50 | 10.00 | 99.82 | 9.86 |" in text  # beside the paper's row
    assert "| Inception | no | random | 30 | 50.00 | 10.00 | 100.0 | 9.78 |" in text and "time cap" in text
    assert "| AlexNet | random pixels | 9 |" in text and "Not started (no time left): inception_small / gaussian" in text
    assert "**not met**: conv nets fit" in text
    assert (figs / "fig1a-gpu.png").stat().st_size > 1000 and (figs / "fig1b-gpu.png").exists()
    assert text.count("## Table 1: the MLP rows") == 1 and "| MLP 1x512 | no | random | 388 |" in text  # the rest kept
    again = doc.read_text()
    assert gen["main"](["--gpu-only", "--doc", str(doc), "--figs", str(figs), "--gpu", str(files[0])]) == 0
    assert doc.read_text() == again  # rewriting the blocks is idempotent
    empty = tmp_path / "none.json"
    empty.write_text(json.dumps({"mode": "full", "env": {}}))
    assert gen["main"](["--gpu-only", "--doc", str(doc), "--figs", str(figs), "--gpu", str(empty)]) == 0
    lines = [l for l in doc.read_text().splitlines() if "no GPU run yet" in l]
    assert len(lines) == 2 and "measured on NVIDIA H200" not in doc.read_text()

    table = runpy.run_path(str(REPO / "bench" / "table.py"))
    cluster = tmp_path / "cluster.md"
    shutil.copy(REPO / "docs" / "cluster.md", cluster)
    assert table["main"](["cost", "--doc", str(cluster), str(files[0]), str(files[1])]) == 0
    text = cluster.read_text()
    # 24 small Inception trials x 100 epochs x (50,000 / 15,000 + 1.5) s
    assert "| inception_small | 24 | 100 | 4.83 | 4.83 | 3.22 |" in text and "**Measured** on one NVIDIA H200" in text
    assert "MLP 1x512: 2.50x" in text and "3,000 training images/s" in text
    assert table["main"](["cost", "--doc", str(cluster), str(empty)]) == 0
    assert "No GPU measurement yet" in cluster.read_text() and "**Measured**" not in cluster.read_text()
