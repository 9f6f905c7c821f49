"""Multi-layer perceptrons: MLP 1x512 and MLP 3x512 (ReLU, biases)."""

from __future__ import annotations

import math

import torch.nn as nn

from rethink_dist.architectures import register_model


def _mlp(input_shape: tuple[int, int, int], num_classes: int, depth: int, width: int, dropout: float) -> nn.Module:
    layers: list[nn.Module] = [nn.Flatten()]
    fan_in = math.prod(input_shape)
    for _ in range(depth):
        layers += [nn.Linear(fan_in, width), nn.ReLU(inplace=True)]
        if dropout:
            layers.append(nn.Dropout(dropout))
        fan_in = width
    layers.append(nn.Linear(fan_in, num_classes))
    return nn.Sequential(*layers)


@register_model("mlp_1x512", dropout=True, weight_decay=1e-4, params=1_209_866)
def mlp_1x512(input_shape, num_classes, dropout: float = 0.0) -> nn.Module:
    """One hidden layer of 512 units (1,209,866 parameters on 3x28x28, 10 classes)."""
    return _mlp(input_shape, num_classes, 1, 512, dropout)


@register_model("mlp_3x512", dropout=True, weight_decay=1e-4, params=1_735_178)
def mlp_3x512(input_shape, num_classes, dropout: float = 0.0) -> nn.Module:
    """Three hidden layers of 512 units (1,735,178 parameters on 3x28x28, 10 classes)."""
    return _mlp(input_shape, num_classes, 3, 512, dropout)
