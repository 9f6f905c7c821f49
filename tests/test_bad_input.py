"""Bad input, found before any work: one line naming the value and what is valid, exit code 2,
nothing left behind. Each kind is tried with more than one instance, through the real command."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import threading
from pathlib import Path

import pytest
import torch

from conftest import one_line_error

REPO = Path(__file__).resolve().parents[1]
CLI = [sys.executable, "-m", "rethink_dist.cli"]


def run(args, timeout=120, env=None):
    return subprocess.run(CLI + [str(a) for a in args], capture_output=True, text=True, timeout=timeout,
                          env={**os.environ, "PYTHONPATH": str(REPO), **(env or {})})


# ------------------------------------------------------------------ output paths, checked first
def _unwritable(tmp_path):
    a_file = tmp_path / "a_file"
    a_file.write_text("not a folder")
    return {"proc": "/proc/rethink-test/out", "file": str(a_file / "out")}


@pytest.mark.parametrize("where", ["proc", "file"])
@pytest.mark.parametrize("command", [
    # digits trains 800 epochs by default: had the path been checked after the work, this would train first
    lambda p: ["train", "--dataset", "digits", "--json", p + ".json"],
    lambda p: ["sweep", str(REPO / "sweeps" / "quick.py"), "--smoke", "--storage", p],
    lambda p: ["prepare", "digits", "--out", p],
    lambda p: ["kernel", "--max-train", "50", "--json", p + ".json"],
    lambda p: ["expressivity", "--n", "10", "--d", "3", "--json", p + ".json"],
])
def test_output_paths_are_checked_before_any_work(tmp_path, where, command):
    path = _unwritable(tmp_path)[where]
    p = run(command(path))
    one_line_error(p, "cannot be written", path.split("/out")[0])
    assert "Traceback" not in p.stderr


def test_sweep_results_dir_and_report_out_are_checked(tmp_path):
    bad = _unwritable(tmp_path)
    p = run(["sweep", str(REPO / "sweeps" / "quick.py"), "--smoke", "--storage", tmp_path / "s",
             "--results-dir", bad["file"]])
    one_line_error(p, "--results-dir", "cannot be written")
    assert not (tmp_path / "s").exists()
    folder = tmp_path / "sweep"
    folder.mkdir()
    p = run(["report", folder, "--out", bad["proc"], "--no-mlflow"])
    one_line_error(p, "--out", "cannot be written")


# ------------------------------------------------------------------ a tracking server that does not answer
def test_dead_tracking_uri_fails_at_once_before_anything_is_written(tmp_path):
    store = tmp_path / "store"
    p = run(["sweep", REPO / "sweeps" / "quick.py", "--smoke", "--storage", store,
             "--tracking-uri", "http://127.0.0.1:1"])
    one_line_error(p, "nothing answers at --tracking-uri http://127.0.0.1:1")
    assert not store.exists(), "the sweep wrote before it knew MLflow answers"


def test_silent_tracking_server_fails_after_the_configured_wait(tmp_path):
    """A port that accepts connections but never answers (a hung server): the check gives up."""
    server = socket.socket()
    server.bind(("127.0.0.1", 0))
    server.listen(8)
    held: list[socket.socket] = []
    stop = threading.Event()

    def accept():
        server.settimeout(0.2)
        while not stop.is_set():
            try:
                held.append(server.accept()[0])  # accept, never reply
            except OSError:
                pass

    t = threading.Thread(target=accept, daemon=True)
    t.start()
    try:
        uri = f"http://127.0.0.1:{server.getsockname()[1]}"
        p = run(["sweep", REPO / "sweeps" / "quick.py", "--smoke", "--storage", tmp_path / "store",
                 "--tracking-uri", uri], env={"RETHINK_MLFLOW_TIMEOUT": "1"})
        one_line_error(p, f"nothing answers at --tracking-uri {uri} within 1 s")
        assert not (tmp_path / "store").exists()
    finally:
        stop.set()
        t.join()
        for c in held:
            c.close()
        server.close()


# ------------------------------------------------------------------ input the machine or data cannot take
@pytest.mark.skipif(torch.cuda.is_available(), reason="needs a machine without CUDA")
def test_cuda_without_a_gpu_is_bad_input(tmp_path):
    one_line_error(run(["train", "--dataset", "digits", "--device", "cuda", "--epochs", "1"]),
                   "device='cuda'", "no CUDA device")
    one_line_error(run(["kernel", "--device", "cuda", "--max-train", "50"]), "device='cuda'", "no CUDA device")


@pytest.mark.parametrize("args, needle", [
    (["--dataset", "digits", "--image-size", "40"], "data.image_size=40 is larger than the 8x8 images"),
    (["--dataset", "fashion_mnist", "--image-size", "29"], "data.image_size=29 is larger than the 28x28 images"),
    (["--dataset", "digits", "--channels", "0"], "data.channels=0 is not valid"),
])
def test_sizes_that_do_not_fit_the_data(args, needle):
    one_line_error(run(["train", *args, "--epochs", "1"]), needle)


def test_data_that_does_not_fit_the_model_is_said_in_one_line():
    """A model whose convolutions do not fit the images: found by one forward pass before training."""
    from rethink_dist.config import TrialConfig
    from rethink_dist.errors import ConfigError
    from rethink_dist.train import check_input_fits

    cfg = TrialConfig.from_dict({"data": {"name": "digits"}, "model": {"name": "alexnet_small"}})
    conv = torch.nn.Sequential(torch.nn.Conv2d(1, 4, kernel_size=5), torch.nn.Flatten())
    check_input_fits(conv, cfg, (1, 8, 8), torch.device("cpu"))  # fits
    for shape in ((1, 3, 3), (3, 8, 8)):  # smaller than the kernel; the wrong channels
        with pytest.raises(ConfigError, match="cannot take the .* inputs of dataset 'digits'"):
            check_input_fits(conv, cfg, shape, torch.device("cpu"))


# ------------------------------------------------------------------ a sweep's invalid trial is named
TRIAL_CONFIGS = """
from rethink_dist.config import TrialConfig
NAME = "named"
def trials(data_root=None):
    out = [TrialConfig.from_dict({"corruption": {"kind": "labels", "level": i / 20}}) for i in range(16)]
    out.append(TrialConfig.from_dict({"corruption": {"kind": "labels", "level": 2.0}}))
    return out
"""
DICTS = """
NAME = "named"
def trials(data_root=None):
    return [{"optim": {"epochs": 1}}, {"optim": {"epochs": 2}}, {"optim": {"batch_size": 0}}]
"""
REPLACED = """
from rethink_dist.config import TrialConfig
NAME = "named"
def trials(data_root=None):
    base = TrialConfig.from_dict({"model": {"name": "mlp_3x512"}})
    return [base, base.replace(**{"reg.dropout": 1.5})]
"""
THEORY = """
NAME = "named"
def trials(data_root=None):
    return [{"kind": "kernel", "params": {"max_train": 100}}, {"kind": "kernel", "params": {"kernel": "poly"}}]
"""


@pytest.mark.parametrize("body, needle", [
    (TRIAL_CONFIGS, "trial 16: corruption.level=2.0 is out of range; valid: [0, 1] "
                    "(run digits_labels2_mlp_1x512_lr0.01_wd0_aug0_s0)"),
    (DICTS, "trial 2: optim.batch_size must be >= 1, got 0 (run digits_true_mlp_1x512_lr0.01_wd0_aug0_s0)"),
    (REPLACED, "trial 1: reg.dropout=1.5 is out of range; valid: [0, 1) "
               "(run digits_true_mlp_3x512_lr0.01_wd0_aug0_do1.5_s0)"),
    (THEORY, "trial 1 (kernel): kernel='poly' is not valid; valid: linear, rbf, laplacian (run kernel_kernelpoly)"),
])
def test_an_invalid_trial_is_named_by_index_and_run_name(tmp_path, body, needle):
    path = tmp_path / "named.py"
    path.write_text(body)
    one_line_error(run(["sweep", path, "--dry-run"]), needle)


def test_a_server_that_is_not_mlflow_is_refused_at_once(tmp_path):
    """Something answers at the URI (here a plain web server: 404 for everything), but not MLflow."""
    import http.server

    class NotFound(http.server.BaseHTTPRequestHandler):
        def do_GET(self):
            self.send_error(404)

        def log_message(self, *args):
            pass

    server = http.server.HTTPServer(("127.0.0.1", 0), NotFound)
    t = threading.Thread(target=server.serve_forever, daemon=True)
    t.start()
    try:
        uri = f"http://127.0.0.1:{server.server_address[1]}"
        p = run(["sweep", REPO / "sweeps" / "quick.py", "--smoke", "--storage", tmp_path / "store",
                 "--tracking-uri", uri])
        one_line_error(p, f"--tracking-uri {uri} answers, but not as an MLflow tracking server (HTTP 404")
        assert not (tmp_path / "store").exists()
    finally:
        server.shutdown()
        server.server_close()
        t.join()
