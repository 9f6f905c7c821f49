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


def test_declared_parameter_counts():
    """Each architecture's ``params`` (its @register_model) is the paper's count and the one it builds."""
    declared = {name: spec.params for name, spec in MODELS.items() if spec.params is not None}
    assert {name: declared.get(name) for name in PAPER_COUNTS} == PAPER_COUNTS
    with torch.device("meta"):
        assert {name: count_params(create(name, (3, 28, 28), 10)) for name in declared} == declared


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


def test_lrn_is_computed_in_float32_under_bfloat16():
    """bf16 rounds LRN's divisor 1 + 0.001 * mean(x^2) to 1 for most activations (CUDA autocast keeps
    avg_pool3d in bf16): the small AlexNet's LRN computes in float32 and returns the input's dtype."""
    from rethink_dist.models.alexnet import FP32LocalResponseNorm

    assert torch.tensor(1.0 + 0.001 * 2.0, dtype=torch.bfloat16).item() == 1.0  # the rounding at issue
    lrn = [m for m in create("alexnet_small", (3, 28, 28), 10).modules() if isinstance(m, torch.nn.LocalResponseNorm)]
    assert len(lrn) == 2 and all(isinstance(m, FP32LocalResponseNorm) for m in lrn)
    x = (torch.relu(torch.randn(4, 64, 7, 7, generator=torch.Generator().manual_seed(0))) * 3).bfloat16()
    ref = torch.nn.LocalResponseNorm(9, alpha=0.001, beta=0.75, k=1.0)(x.float())
    out = lrn[0](x)
    assert out.dtype == torch.bfloat16
    assert ((out.float() - ref).abs() / ref.abs().clamp_min(1e-6)).max() <= 2 ** -8  # bf16's rounding only
    assert ((ref - x.float()).abs() / x.float().abs().clamp_min(1e-6)).max() > 2 ** -7  # LRN does change x
    with torch.autocast("cpu", dtype=torch.bfloat16):
        assert lrn[0](x.float()).dtype == torch.float32
