"""The builders of the architectures, by name; what each can express is in :data:`rethink_dist.protocol.MODELS`."""

from __future__ import annotations

from typing import Callable

import torch.nn as nn

from rethink_dist.protocol import MODELS

BUILDERS: dict[str, Callable[..., nn.Module]] = {}


def register(name: str) -> Callable[[Callable[..., nn.Module]], Callable[..., nn.Module]]:
    """Register the builder of ``name`` (an architecture of protocol.MODELS), once."""

    def deco(fn: Callable[..., nn.Module]) -> Callable[..., nn.Module]:
        if name not in MODELS:
            raise ValueError(f"model {name!r} is not in rethink_dist.protocol.MODELS: declare what it can express there")
        if name in BUILDERS:
            raise ValueError(f"model {name!r} registered twice")
        BUILDERS[name] = fn
        return fn

    return deco
