"""Any model, your own data: ``torchvision:``, ``timm:`` and ``module:callable`` names, through the
real command line and the real loop. (A sweep of a user's model and data set shipped to a
two-node Ray by ``ray job submit`` is in test_cluster.py.)"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import pytest

from rethink_dist.config import TrialConfig
from rethink_dist.errors import ConfigError, DataError
from rethink_dist.external import check_user_arrays
from rethink_dist.train import Trial

from conftest import one_line_error

REPO = Path(__file__).resolve().parents[1]
EXAMPLE = REPO / "examples" / "own_code"
CLI = [sys.executable, "-m", "rethink_dist.cli"]


def run(args, cwd=None, pythonpath=(), pre="", timeout=300):
    """The command line in a fresh interpreter; ``pre``: Python run before it (e.g. hiding a package)."""
    code = f"import sys\n{pre}\nfrom rethink_dist.cli import main\nsys.exit(main({[str(a) for a in args]!r}))"
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(REPO), *map(str, pythonpath)])}
    return subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=timeout, env=env,
                          cwd=cwd)


# ------------------------------------------------------------------ library models
def test_torchvision_resnet18_trains_on_digits_with_the_cifar_stem(tmp_path):
    out = tmp_path / "r.json"
    p = run(["train", "--dataset", "digits", "--arch", "torchvision:resnet18", "--corruption", "labels", "--level",
             "1", "--epochs", "2", "--max-train", "96", "--json", out])
    assert p.returncode == 0, p.stderr[-3000:]
    assert "adapted to the data: stem: 3x3 stride-1 conv on 1 channels, no max pooling" in p.stdout + p.stderr
    res = json.loads(out.read_text())
    assert res["config"]["model"]["name"] == "torchvision:resnet18"
    assert [h["epoch"] for h in res["history"]] == [1, 2]
    meta = res["meta"]
    # torchvision's resnet18 has 11,689,512 parameters at 1000 classes: 10 classes and one input channel
    # (3x3 stem instead of 7x7x3) give 11,689,512 - 513 * 990 - 64 * (7*7*3 - 3*3*1) = 11,172,810.
    assert meta["params"] == 11_689_512 - 513 * 990 - 64 * (7 * 7 * 3 - 3 * 3 * 1) == 11_172_810
    assert meta["model_adapted"].startswith("stem:")


def test_timm_model_trains_when_the_extra_is_installed(tmp_path):
    out = tmp_path / "t.json"
    p = run(["train", "--dataset", "digits", "--arch", "timm:test_resnet", "--epochs", "2", "--max-train", "128",
             "--dropout", "0.1", "--json", out])
    assert p.returncode == 0, p.stderr[-3000:]
    res = json.loads(out.read_text())
    assert res["meta"]["model_adapted"] == "in_chans=1" and len(res["history"]) == 2


def test_timm_missing_names_the_extra():
    p = run(["train", "--dataset", "digits", "--arch", "timm:test_resnet", "--epochs", "1"],
            pre="sys.modules['timm'] = None  # as if timm were not installed")
    one_line_error(p, "needs timm", "pip install 'rethink-dist[timm]'")


@pytest.mark.parametrize("changes, needles", [
    ({"model.name": "torchvision:resnet1"}, ("torchvision has no classification model 'resnet1'", "resnet18")),
    ({"model.name": "torchvision:fasterrcnn_resnet50_fpn"}, ("no classification model",)),
    ({"model.name": "timm:resnet_nope"}, ("timm has no model 'resnet_nope'",)),
    ({"model.name": "torchvision:resnet18", "reg.dropout": 0.5}, ("reg.dropout=0.5 is not supported", "'dropout'")),
    ({"model.name": "timm:test_resnet", "reg.batch_norm": False},
     ("reg.batch_norm=False is not supported by 'timm:test_resnet'",)),
    ({"model.name": "torchvision:vit_b_16"}, ("could not be built", "torchvision:vit_b_16")),
    ({"model.name": "torchvision:alexnet"}, ("cannot take the 1x8x8 inputs",)),
    ({"model.name": "no_such_pkg.nets:make"}, ("module 'no_such_pkg.nets' does not import", "RUNTIME_ENV")),
    ({"model.name": "my_research.nets:nothing_here"}, ("has no attribute 'nothing_here'",)),
    ({"model.name": "bad name:x"}, ("is not a valid name",)),
    ({"data.name": "my_research.data:nope"}, ("has no attribute 'nope'",)),
])
def test_bad_outside_names_are_one_line_errors(changes, needles):
    from rethink_dist.train import preflight

    sys.path.insert(0, str(EXAMPLE))
    try:
        with pytest.raises(ConfigError) as e:
            preflight(TrialConfig().replace(**changes))
    finally:
        sys.path.remove(str(EXAMPLE))
    assert "\n" not in str(e.value)
    for n in needles:
        assert n in str(e.value), (n, str(e.value))


def test_bad_outside_names_exit_2_before_training(tmp_path):
    for arch, needle in (("torchvision:resnet1", "no classification model 'resnet1'"),
                         ("no_such_pkg.nets:make", "does not import")):
        p = run(["train", "--epochs", "1", "--arch", arch, "--json", tmp_path / "out.json"])
        one_line_error(p, needle)
        assert not (tmp_path / "out.json").exists()


# ------------------------------------------------------------------ your own code
def test_own_model_and_data_train_and_take_regularizers():
    sys.path.insert(0, str(EXAMPLE))
    try:
        cfg = TrialConfig.from_dict({"data": {"name": "my_research.data:gratings", "max_train": 256},
                                     "model": {"name": "my_research.nets:make_net", "kwargs": {"width": 8}},
                                     "corruption": {"kind": "labels", "level": 0.5}, "reg": {"dropout": 0.1,
                                     "batch_norm": False}, "optim": {"epochs": 2}})
        r = cfg.resolved()
        assert (r.data.image_size, r.data.channels, r.optim.epochs) == (16, 3, 2)
        trial = Trial(cfg)
        assert trial.meta["num_classes"] == 10 and trial.meta["dataset_source"] == "my_research.data:gratings"
        assert not any(m.__class__.__name__ == "BatchNorm2d" for m in trial.model.modules())
        assert trial.loader.input_shape == (3, 16, 16)
        rec = trial.run_epoch()
        assert 0.0 <= rec["train_acc"] <= 1.0 and rec["train_acc_corrupted"] is not None
    finally:
        sys.path.remove(str(EXAMPLE))


def test_own_data_of_the_wrong_shape_is_refused_before_any_trial(tmp_path):
    pkg = tmp_path / "bad_data.py"
    pkg.write_text(textwrap.dedent("""
        import numpy as np

        def floats():
            x = np.zeros((10, 8, 8, 1), np.float32)
            return x, np.zeros(10, int), x, np.zeros(10, int)

        def three():
            return (1, 2, 3)

        def boom():
            raise OSError("no such file: /data/mine.npz")
    """))
    sweep = tmp_path / "s.py"
    sweep.write_text('NAME = "bad"\ndef trials(data_root=None):\n'
                     '    return [{"data": {"name": "bad_data:floats"}, "model": {"name": "mlp_1x512"}}]\n')
    p = run(["sweep", sweep, "--storage", tmp_path / "store", "--num-cpus", "1"], cwd=tmp_path)
    one_line_error(p, "trial 0", "train_images has shape (10, 8, 8, 1) and dtype float32", "uint8")
    assert not (tmp_path / "store").exists(), "a refused sweep wrote results"
    p = run(["train", "--dataset", "bad_data:three", "--epochs", "1"], cwd=tmp_path)
    one_line_error(p, "returned a tuple of 3 items", "train_images, train_labels, test_images, test_labels")
    p = run(["train", "--dataset", "bad_data:boom", "--epochs", "1"], cwd=tmp_path)
    one_line_error(p, "the loader raised OSError: no such file: /data/mine.npz")


@pytest.mark.parametrize("arrays, needle", [
    (lambda x, y: (x, y, x), "returned a tuple of 3 items"),
    (lambda x, y: (x, y.astype(float), x, y), "train_labels has shape (6,) and dtype float64"),
    (lambda x, y: (x, y[:5], x, y), "6 train images but 5 train labels"),
    (lambda x, y: (x, y - 1, x, y), "train_labels holds -1"),
    (lambda x, y: (x, y, x[:, :4], y), "train images are (8, 8, 1) but test images (4, 8, 1)"),
    (lambda x, y: (x[..., 0], y, x, y), "train_images has shape (6, 8, 8)"),
    (lambda x, y: (x, y * 0, x, y * 0), "every label is 0"),
    (lambda x, y: (list(x), y, x, y), "train_images is a list, not a numpy array"),
])
def test_user_arrays_checked(arrays, needle):
    x, y = np.zeros((6, 8, 8, 1), np.uint8), np.arange(6) % 3
    with pytest.raises(DataError) as e:
        check_user_arrays("m:f", arrays(x, y))
    assert needle in str(e.value) and "\n" not in str(e.value)
    tr_x, tr_y, _, _ = check_user_arrays("m:f", (x, y, x, y))
    assert tr_y.dtype == np.int64 and tr_x.shape == (6, 8, 8, 1)


def test_builtin_models_keep_their_strict_kwargs():
    with pytest.raises(ConfigError, match="not accepted by 'mlp_1x512'"):
        TrialConfig.from_dict({"model": {"name": "mlp_1x512", "kwargs": {"width": 3}}})
