"""bench/gpu_check.py --smoke: the GPU check runs on the CPU, so it cannot rot while no GPU is lent."""

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
            f"sys.argv = ['gpu_check.py', '--smoke', '--device', 'cpu', '--budget-s', '900', '--out', {str(out)!r}, "
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
        assert t["meta"]["num_train"] == 64 and t["config"]["data.name"] == "fashion_mnist"
        assert t["config"]["data.channels"] == 3 and t["config"]["stop.fit_threshold"] == 0.99
        assert t["config"]["optim.lr"] == (0.1 if t["arch"] == "inception_small" else 0.01)
        ev = t["eval_precision"]
        assert 0 <= ev["flipped_fraction"] <= 1 and ev["train_acc_fp32_eval"] == t["summary"]["train_acc"]
    for arch in ("mlp_1x512", "mlp_3x512", "alexnet_small", "inception_small"):
        for precision in ("fp32", "bf16"):
            row = d["archs"][arch][precision]
            assert row["images_per_s"] > 0 and row["eval_seconds"] > 0 and row["of_ceiling"] > 0
    assert set(d["sharing"]) >= {"procs_1", "procs_4"} and d["sharing"]["procs_1"]["speedup_vs_one"] == 1.0
    assert d["inception_v3"]["batch_2"]["images_per_s"] > 0
    assert d["kernel"]["solver"] == "cholesky" and d["kernel"]["train_error"] == 0.0
    bad = [(p, v) for p, v in _numbers({k: v for k, v in d.items() if k != "expectations"}) if v is None or not math.isfinite(v)]
    # None where the record means "none": a trial's unset config fields, unfitted steps_to_fit, the
    # clean/corrupted split where no label changed
    bad = [(p, v) for p, v in bad if ".config." not in p and not p.endswith(("train_acc_clean", "train_acc_corrupted",
                                                                             "steps_to_fit"))]
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
    assert rows["augment_syncs_per_step"]["verdict"] == "n/a on cpu"
    for name in ("lrn_bf16_error", "determinism_drift", "kernel_rbf_train_error", "kernel_random_conv"):
        assert rows[name]["verdict"] == "met", rows[name]
    again = {r["name"]: r for r in ge.judge(d, "cpu")}
    assert again["kernel_qr_route"]["verdict"] == "met"
    for name in ("archs_bf16_vs_fp32", "sharing_4_trials", "inception_v3_images_per_s", "paper_true_labels_test"):
        assert rows[name]["value"] is not None and rows[name]["verdict"] == "n/a on cpu", rows[name]
    assert "kernel_qr_route" in proc.stdout.splitlines()[-1] and "| not met | kernel_qr_route" in proc.stdout
    assert "| inception_small / random labels | epoch cap | 2 |" in proc.stdout  # the paper's trials, printed


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
