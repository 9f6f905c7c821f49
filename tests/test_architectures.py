"""An architecture is one file of rethink_dist/models/: its builder and one @register_model beside it.

The package is copied with one more file in models/, and that copy lists the new model, checks a
config naming it (the defaults it declares are applied) and trains it; nothing else is edited.
"""

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from rethink_dist import architectures
from rethink_dist.config import TrialConfig
from rethink_dist.errors import ConfigError

PACKAGE = Path(__file__).resolve().parents[1] / "rethink_dist"

TINY = '''"""A one-layer linear classifier."""

import math

import torch.nn as nn

from rethink_dist.architectures import register_model


@register_model("tiny_linear", dropout=True, lr=0.05, params=23_530)
def tiny_linear(input_shape, num_classes, dropout: float = 0.0) -> nn.Module:
    """A linear map of the flattened image to the classes."""
    drop = [nn.Dropout(dropout)] if dropout else []
    return nn.Sequential(nn.Flatten(), *drop, nn.Linear(math.prod(input_shape), num_classes))
'''


@pytest.fixture(scope="module")
def package_with_tiny(tmp_path_factory):
    root = tmp_path_factory.mktemp("pkg")
    shutil.copytree(PACKAGE, root / "rethink_dist", ignore=shutil.ignore_patterns("__pycache__"))
    (root / "rethink_dist" / "models" / "tiny.py").write_text(TINY)
    return root


def cli(root, *args):
    env = {**os.environ, "PYTHONPATH": str(root)}
    return subprocess.run([sys.executable, "-m", "rethink_dist.cli", *args], capture_output=True, text=True,
                          cwd=root, env=env)


def test_one_file_registers_a_model(package_with_tiny):
    root = package_with_tiny
    counts = cli(root, "models")
    assert counts.returncode == 0, counts.stderr
    counts = json.loads(counts.stdout)
    assert counts["tiny_linear"] == 23_530 and counts["mlp_1x512"] == 1_209_866

    p = cli(root, "train", "--arch", "tiny_linear", "--dropout", "0.1", "--print-config")
    assert p.returncode == 0, p.stderr
    cfg = json.loads(p.stdout)
    assert cfg["model"]["name"] == "tiny_linear" and cfg["optim"]["lr"] == 0.05  # its declared lr, resolved
    p = cli(root, "train", "--arch", "tiny_linear", "--no-batch-norm", "--print-config")
    assert p.returncode == 2 and len(p.stderr.strip().splitlines()) == 1, p.stderr
    assert "reg.batch_norm=False is not supported by 'tiny_linear'" in p.stderr
    p = cli(root, "train", "--arch", "tiny_linaer", "--print-config")
    assert p.returncode == 2 and len(p.stderr.strip().splitlines()) == 1, p.stderr
    assert "unknown architecture 'tiny_linaer'; valid: alexnet_small, " in p.stderr and "tiny_linear" in p.stderr

    out = root / "tiny.json"
    p = cli(root, "train", "--arch", "tiny_linear", "--dropout", "0.1", "--epochs", "2", "--quiet", "--json", str(out))
    assert p.returncode == 0, p.stderr
    r = json.loads(out.read_text())
    assert r["config"]["model"]["name"] == "tiny_linear" and r["summary"]["epochs"] == 2
    assert r["history"][-1]["train_acc"] > 0.5  # a linear model learns digits in two epochs
    assert r["meta"]["params"] == 8 * 8 * 10 + 10  # built for digits: 1x8x8 inputs


def test_the_package_copy_is_what_runs(package_with_tiny):
    code = "import rethink_dist; print(rethink_dist.__file__)"
    p = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=package_with_tiny,
                       env={**os.environ, "PYTHONPATH": str(package_with_tiny)}, check=True)
    assert p.stdout.strip() == str(package_with_tiny / "rethink_dist" / "__init__.py")


def test_here_the_tiny_model_is_unknown():
    with pytest.raises(ConfigError, match="unknown architecture 'tiny_linear'"):
        TrialConfig.from_dict({"model": {"name": "tiny_linear"}})


@pytest.fixture
def folder(tmp_path, monkeypatch):
    """architectures reads this folder instead of rethink_dist/models/."""
    monkeypatch.setattr(architectures, "FOLDER", tmp_path)
    architectures.declarations.cache_clear()
    yield tmp_path
    monkeypatch.undo()
    architectures.declarations.cache_clear()


@pytest.mark.parametrize("decorator, needle", [
    ("@register_model(NAME)", "must be literals"),
    ("@register_model('m', depth=3)", "has no fact 'depth'; valid: kwargs, dropout, batch_norm_switch, lr"),
    ("@register_model('Big-Net')", "must be lowercase letters, digits and _"),
    ("@register_model", "takes the architecture's name"),
])
def test_a_bad_declaration_names_its_line(folder, decorator, needle):
    (folder / "bad.py").write_text(f"from rethink_dist.architectures import register_model\n\n{decorator}\n"
                                   "def build(input_shape, num_classes):\n    pass\n")
    with pytest.raises(ValueError, match="bad.py:3") as e:
        architectures.declarations()
    assert needle in str(e.value)


def test_a_name_declared_twice(folder):
    for f in ("a.py", "b.py"):
        (folder / f).write_text("@register_model('same')\ndef build(input_shape, num_classes):\n    pass\n")
    with pytest.raises(ValueError, match="'same' is declared twice: in rethink_dist.models.a and rethink_dist.models.b"):
        architectures.declarations()


def test_the_decorator_outside_the_folder_is_refused():
    with pytest.raises(ValueError, match="is not a declaration read from"):
        @architectures.register_model("mlp_1x512", dropout=True, weight_decay=1e-4, params=1_209_866)
        def mlp_1x512(input_shape, num_classes, dropout=0.0):
            """One hidden layer of 512 units (1,209,866 parameters on 3x28x28, 10 classes)."""
