"""Model registry: ``create(name, input_shape, num_classes, **kwargs)``.

An architecture is one file of this folder: its builder, and beside it the one
``@register_model(name, **facts)`` (:mod:`rethink_dist.architectures`) that names it and states
what it can express, the paper's learning rate and weight decay for it, and its parameter count.
No import list is kept: the architectures are the declarations found in the folder's files, and
:func:`create` imports a builder's module when it first builds that model. A builder takes
``input_shape`` as (C, H, W), ``num_classes`` and its keyword arguments; ``dropout`` and
``batch_norm`` are passed only to the models that declare they support them.

Outside architectures (``torchvision:<builder>``, ``timm:<name>``, ``<module>:<callable>``) are
built by :mod:`rethink_dist.models.external`.
"""

from __future__ import annotations

import importlib
from typing import Callable

import torch.nn as nn

from rethink_dist.architectures import MODELS, ModelSpec, model_spec, register_model
from rethink_dist.errors import ConfigError
from rethink_dist.external import is_external
from rethink_dist.models import external

__all__ = ["MODELS", "ModelSpec", "builder", "count_params", "create", "model_capabilities", "register_model"]

model_capabilities = model_spec  # what architecture ``name`` can express; ConfigError if it is unknown


def builder(name: str) -> Callable[..., nn.Module]:
    """The builder of architecture ``name``, its module imported."""
    spec = model_spec(name)
    return getattr(importlib.import_module(spec.module), spec.builder)


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
    return builder(name)((int(c), int(h), int(w)), int(num_classes), **kwargs)


def count_params(model: nn.Module) -> int:
    """Number of trainable parameters (the paper's parameter counts)."""
    return sum(p.numel() for p in model.parameters() if p.requires_grad)
