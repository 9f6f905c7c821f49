"""Every registered model builds, runs forward and backward; the paper's parameter counts hold."""

import json
import subprocess
import sys

import pytest
import torch

from rethink_dist.models import MODELS, count_params, create

PAPER_COUNTS = {
    "inception_small": 1_649_402,
    "alexnet_small": 1_387_786,
    "mlp_3x512": 1_735_178,
    "mlp_1x512": 1_209_866,
}


@pytest.mark.parametrize("name,count", sorted(PAPER_COUNTS.items()))
def test_paper_parameter_counts(name, count):
    assert count_params(create(name, (3, 28, 28), 10)) == count


def test_inception_without_batchnorm_same_count_and_no_bn():
    with_bn = create("inception_small", (3, 28, 28), 10)
    without = create("inception_small", (3, 28, 28), 10, batch_norm=False)
    assert count_params(without) == count_params(with_bn) == 1_649_402
    assert not any(isinstance(m, torch.nn.BatchNorm2d) for m in without.modules())
    assert sum(isinstance(m, torch.nn.BatchNorm2d) for m in with_bn.modules()) == 19


def test_inception_v3_torchvision_count():
    with torch.device("meta"):
        assert count_params(create("inception_v3", (3, 299, 299), 1000)) == 27_161_264


# inception_v3 upsamples both small shapes the same way: one of them is enough.
CASES = [(n, s) for n in sorted(MODELS) for s in [(3, 28, 28), (1, 8, 8)] if (n, s[0]) != ("inception_v3", 3)]


@pytest.mark.parametrize("name,shape", CASES)
def test_forward_backward_any_shape(name, shape):
    torch.manual_seed(0)
    kwargs = {"dropout": 0.3} if MODELS[name].dropout else {}
    model = create(name, shape, 10, **kwargs)
    model.train()
    x = torch.randn(4, *shape)
    out = model(x)
    logits = out[0] if isinstance(out, tuple) else out
    assert logits.shape == (4, 10)
    logits.sum().backward()
    grads = [p.grad for p in model.parameters() if p.requires_grad]
    assert all(g is not None for g in grads)
    assert any(g.abs().sum() > 0 for g in grads)


def test_unknown_model_and_kwargs():
    with pytest.raises(ValueError, match="unknown architecture"):
        create("resnet", (3, 28, 28), 10)
    with pytest.raises(ValueError, match="cannot drop BatchNorm"):
        create("mlp_1x512", (3, 28, 28), 10, batch_norm=False)


def test_models_command_prints_paper_counts():
    out = subprocess.run([sys.executable, "-m", "rethink_dist.cli", "models", "--input-shape", "3,28,28",
                          "--num-classes", "10"], capture_output=True, text=True, check=True)
    counts = json.loads(out.stdout)
    for name, count in PAPER_COUNTS.items():
        assert counts[name] == count
    out = subprocess.run([sys.executable, "-m", "rethink_dist.cli", "models", "--no-batch-norm"],
                         capture_output=True, text=True, check=True)
    assert json.loads(out.stdout)["inception_small"] == 1_649_402
