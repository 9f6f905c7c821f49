"""A network of your own: ``make_net((C, H, W), num_classes, **kwargs) -> nn.Module``.

rethink-dist calls it with the data's input shape and class count; ``dropout=p`` when the config's
``reg.dropout`` is set and ``batch_norm=False`` when ``reg.batch_norm`` is off (a builder that does
not take them is refused for such a config, in one line, before any trial starts); any
``model.kwargs`` (here ``width``) are passed through.
"""

from __future__ import annotations

import torch.nn as nn


def make_net(input_shape: tuple[int, int, int], num_classes: int, dropout: float = 0.0, batch_norm: bool = True,
             width: int = 32) -> nn.Module:
    """Two 3x3 conv blocks, global average pooling, a linear classifier."""
    c, _, _ = input_shape

    def block(cin: int, cout: int) -> list[nn.Module]:
        layers: list[nn.Module] = [nn.Conv2d(cin, cout, 3, padding=1, bias=not batch_norm)]
        if batch_norm:
            layers.append(nn.BatchNorm2d(cout))
        return layers + [nn.ReLU(inplace=True)]

    return nn.Sequential(
        *block(c, width), nn.MaxPool2d(2), *block(width, 2 * width),
        nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Dropout(dropout), nn.Linear(2 * width, num_classes),
    )
