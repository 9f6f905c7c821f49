"""bench/gpu_check.py --smoke: the GPU check runs on the CPU, so it cannot rot while no GPU is lent."""

import json
import math
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


def test_gpu_check_smoke_writes_every_section_with_finite_numbers(tmp_path):
    out = tmp_path / "gpu_check.json"
    code = ("import sys, runpy; sys.modules['ray'] = sys.modules['mlflow'] = sys.modules['ffcv'] = None; "
            f"sys.argv = ['gpu_check.py', '--smoke', '--device', 'cpu', '--budget-s', '900', '--out', {str(out)!r}]; "
            f"runpy.run_path({str(REPO / 'bench' / 'gpu_check.py')!r}, run_name='__main__')")
    # Ray, MLflow and FFCV made unimportable: the check must not need them (the GPU machine has none).
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=900)
    assert proc.returncode == 0, proc.stderr[-3000:]
    d = json.loads(out.read_text())
    assert json.loads(proc.stdout) == d  # printed too
    assert d["mode"] == "smoke" and d["env"]["device"] == "cpu"
    for section in ("ceiling", "defects", "archs", "sharing", "inception_v3", "kernel", "phenomenon"):
        assert "error" not in d[section] and "skipped" not in d[section], (section, d[section])
    defects = d["defects"]
    for check in ("augment", "lrn_bf16", "channels_last", "determinism", "profile"):
        assert "error" not in defects[check] and "skipped" not in defects[check], (check, defects[check])
    assert defects["augment"]["images_per_s"] > 0 and defects["augment"]["syncs_counted"] is False  # CUDA only
    lrn = defects["lrn_bf16"]["scale_8"]  # activations large enough for bf16 to show the layer's effect
    assert lrn["shrink_reference_fp64"] > 0.01
    assert abs(lrn["shrink_project_layer"] - lrn["shrink_reference_fp64"]) < 0.1 * lrn["shrink_reference_fp64"]
    assert defects["determinism"]["bitwise_equal"]  # the CPU's kernels are deterministic
    cl = defects["channels_last"]
    assert cl["channels_last"] and cl["batch_is_channels_last"] and cl["train_step_ms"] > 0
    assert set(defects["profile"]["train_step_seconds_by_phase"]) == {"data", "forward", "backward", "optimizer"}
    linear = d["kernel"]["linear"]  # n = 300 > D = 48: solved from the features' SVD, never forming K
    assert linear["solver"] == "svd_pinv" and linear["rank"] == 48 and linear["qr_vs_plain_svd_max_abs_diff"] < 1e-9
    assert d["kernel"]["random_conv"]["max_rel_diff_vs_cpu_fp64"] < 1e-5
    ev = d["phenomenon"]["eval_precision"]
    assert 0 <= ev["flipped_fraction"] <= 1 and ev["train_acc_fp32_eval"] == d["phenomenon"]["train_acc"]
    for arch in ("mlp_1x512", "mlp_3x512", "alexnet_small", "inception_small"):
        for precision in ("fp32", "bf16"):
            row = d["archs"][arch][precision]
            assert row["images_per_s"] > 0 and row["eval_seconds"] > 0 and row["of_ceiling"] > 0
    assert set(d["sharing"]) >= {"procs_1", "procs_2"} and d["sharing"]["procs_1"]["speedup_vs_one"] == 1.0
    assert d["inception_v3"]["batch_2"]["images_per_s"] > 0
    assert d["kernel"]["solver"] == "cholesky_pcg" and d["kernel"]["train_error"] == 0.0
    assert d["phenomenon"]["fitted"] and d["phenomenon"]["steps_to_fit"] > 0
    bad = [(p, v) for p, v in _numbers(d) if v is None or not math.isfinite(v)]
    assert not bad, bad
