"""Model registry: ``create(name, input_shape, num_classes, **kwargs)``.

Each family lives in its own module and registers its builders with :func:`register`. A builder
takes ``input_shape`` as (C, H, W), ``num_classes`` and its keyword arguments; ``dropout`` and
``batch_norm`` are passed only to the models that declare they support them.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

import torch.nn as nn


@dataclass(frozen=True)
class ModelCapabilities:
    builder: Callable[..., nn.Module]
    kwargs: tuple[str, ...] = ()  # extra keyword arguments the builder accepts (model.kwargs)
    dropout: bool = False  # accepts dropout=p
    batch_norm_switch: bool = False  # accepts batch_norm=False
    description: str = ""


MODELS: dict[str, ModelCapabilities] = {}


def register(
    name: str, *, kwargs: tuple[str, ...] = (), dropout: bool = False, batch_norm_switch: bool = False
) -> Callable[[Callable[..., nn.Module]], Callable[..., nn.Module]]:
    def deco(fn: Callable[..., nn.Module]) -> Callable[..., nn.Module]:
        if name in MODELS:
            raise ValueError(f"model {name!r} registered twice")
        doc = (fn.__doc__ or "").strip().splitlines()
        MODELS[name] = ModelCapabilities(fn, kwargs, dropout, batch_norm_switch, doc[0] if doc else "")
        return fn

    return deco


def model_capabilities(name: str) -> ModelCapabilities:
    if name not in MODELS:
        raise ValueError(f"unknown architecture {name!r}; valid: {', '.join(sorted(MODELS))}")
    return MODELS[name]


def create(name: str, input_shape: tuple[int, int, int], num_classes: int, **kwargs) -> nn.Module:
    """Build model ``name`` for inputs of shape (C, H, W) and ``num_classes`` outputs."""
    caps = model_capabilities(name)
    dropout = kwargs.pop("dropout", 0.0)
    batch_norm = kwargs.pop("batch_norm", True)
    unknown = set(kwargs) - set(caps.kwargs)
    if unknown:
        raise ValueError(f"{name!r} does not accept {sorted(unknown)}; valid: {', '.join(caps.kwargs) or 'none'}")
    if dropout:
        if not caps.dropout:
            raise ValueError(f"{name!r} has no dropout")
        kwargs["dropout"] = dropout
    if not batch_norm:
        if not caps.batch_norm_switch:
            raise ValueError(f"{name!r} cannot drop BatchNorm")
        kwargs["batch_norm"] = False
    c, h, w = input_shape
    return caps.builder((int(c), int(h), int(w)), int(num_classes), **kwargs)


def count_params(model: nn.Module) -> int:
    """Number of trainable parameters (the paper's parameter counts)."""
    return sum(p.numel() for p in model.parameters() if p.requires_grad)


# Register the families.
from rethink_dist.models import alexnet, inception, inception_v3, mlp  # noqa: E402,F401
