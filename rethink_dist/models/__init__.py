"""Model registry: ``create(name, input_shape, num_classes, **kwargs)``.

Each family lives in its own module and registers its builders with
:func:`rethink_dist.models.registry.register`; what each architecture can express is declared in
:data:`rethink_dist.protocol.MODELS`. A builder
takes ``input_shape`` as (C, H, W), ``num_classes`` and its keyword arguments; ``dropout`` and
``batch_norm`` are passed only to the models that declare they support them.

Outside architectures (``torchvision:<builder>``, ``timm:<name>``, ``<module>:<callable>``) are
built by :mod:`rethink_dist.models.external`.
"""

from __future__ import annotations

import torch.nn as nn

# The families register their builders when imported.
from rethink_dist.models import alexnet, inception, inception_v3, mlp  # noqa: F401
from rethink_dist.errors import ConfigError
from rethink_dist.external import is_external
from rethink_dist.models import external
from rethink_dist.models.registry import BUILDERS
from rethink_dist.protocol import MODELS, ModelSpec

__all__ = ["MODELS", "ModelSpec", "count_params", "create", "model_capabilities"]


def model_capabilities(name: str) -> ModelSpec:
    if name not in MODELS:
        raise ConfigError(f"unknown architecture {name!r}; valid: {', '.join(sorted(MODELS))}")
    return MODELS[name]


def create(name: str, input_shape: tuple[int, int, int], num_classes: int, **kwargs) -> nn.Module:
    """Build model ``name`` for inputs of shape (C, H, W) and ``num_classes`` outputs."""
    if is_external(name):
        return external.build(name, input_shape, num_classes, **kwargs)
    caps = model_capabilities(name)
    dropout = kwargs.pop("dropout", 0.0)
    batch_norm = kwargs.pop("batch_norm", True)
    unknown = set(kwargs) - set(caps.kwargs)
    if unknown:
        raise ConfigError(f"{name!r} does not accept {sorted(unknown)}; valid: {', '.join(caps.kwargs) or 'none'}")
    if dropout:
        if not caps.dropout:
            raise ConfigError(f"{name!r} has no dropout")
        kwargs["dropout"] = dropout
    if not batch_norm:
        if not caps.batch_norm_switch:
            raise ConfigError(f"{name!r} cannot drop BatchNorm")
        kwargs["batch_norm"] = False
    c, h, w = input_shape
    return BUILDERS[name]((int(c), int(h), int(w)), int(num_classes), **kwargs)


def count_params(model: nn.Module) -> int:
    """Number of trainable parameters (the paper's parameter counts)."""
    return sum(p.numel() for p in model.parameters() if p.requires_grad)
