"""The paper's small Inception for CIFAR-10 (1,649,402 parameters on 3x28x28, 10 classes).

Conv module = conv (with bias) -> BatchNorm without learned affine parameters -> ReLU, so the
variant without BatchNorm has the same parameter count. Inception(c1, c3) concatenates a 1x1
and a 3x3 conv module; Downsample(c3) concatenates a 3x3 stride-2 conv module and a 3x3
stride-2 max-pool. Layout: conv 3x3 96 -> Inc(32,32) -> Inc(32,48) -> Down(80) ->
Inc(112,48) -> Inc(96,64) -> Inc(80,80) -> Inc(48,96) -> Down(96) -> Inc(176,160) ->
Inc(176,160) -> global mean pool -> fully connected.
"""

from __future__ import annotations

import torch
import torch.nn as nn

from rethink_dist.architectures import register_model


class ConvModule(nn.Sequential):
    def __init__(self, c_in: int, c_out: int, kernel: int, stride: int = 1, batch_norm: bool = True):
        layers: list[nn.Module] = [nn.Conv2d(c_in, c_out, kernel, stride=stride, padding=kernel // 2)]
        if batch_norm:
            layers.append(nn.BatchNorm2d(c_out, affine=False))
        layers.append(nn.ReLU(inplace=True))
        super().__init__(*layers)


class InceptionModule(nn.Module):
    def __init__(self, c_in: int, c1: int, c3: int, batch_norm: bool):
        super().__init__()
        self.branch1 = ConvModule(c_in, c1, 1, batch_norm=batch_norm)
        self.branch3 = ConvModule(c_in, c3, 3, batch_norm=batch_norm)
        self.out_channels = c1 + c3

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.cat([self.branch1(x), self.branch3(x)], dim=1)


class DownsampleModule(nn.Module):
    def __init__(self, c_in: int, c3: int, batch_norm: bool):
        super().__init__()
        self.conv = ConvModule(c_in, c3, 3, stride=2, batch_norm=batch_norm)
        self.pool = nn.MaxPool2d(3, stride=2, padding=1)
        self.out_channels = c3 + c_in

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.cat([self.conv(x), self.pool(x)], dim=1)


# (kind, channels): "inc" (c1, c3) or "down" (c3,)
_LAYOUT = [
    ("inc", (32, 32)),
    ("inc", (32, 48)),
    ("down", (80,)),
    ("inc", (112, 48)),
    ("inc", (96, 64)),
    ("inc", (80, 80)),
    ("inc", (48, 96)),
    ("down", (96,)),
    ("inc", (176, 160)),
    ("inc", (176, 160)),
]


class InceptionSmall(nn.Module):
    def __init__(self, input_shape: tuple[int, int, int], num_classes: int, batch_norm: bool = True, dropout: float = 0.0):
        super().__init__()
        c = input_shape[0]
        layers: list[nn.Module] = [ConvModule(c, 96, 3, batch_norm=batch_norm)]
        channels = 96
        for kind, ch in _LAYOUT:
            block = (
                InceptionModule(channels, *ch, batch_norm=batch_norm)
                if kind == "inc"
                else DownsampleModule(channels, *ch, batch_norm=batch_norm)
            )
            layers.append(block)
            channels = block.out_channels
        self.features = nn.Sequential(*layers)
        self.dropout = nn.Dropout(dropout) if dropout else nn.Identity()
        self.fc = nn.Linear(channels, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.features(x).mean(dim=(2, 3))
        return self.fc(self.dropout(x))


@register_model("inception_small", dropout=True, batch_norm_switch=True, lr=0.1, params=1_649_402)
def inception_small(input_shape, num_classes, batch_norm: bool = True, dropout: float = 0.0) -> nn.Module:
    """Small Inception of the paper; batch_norm=False gives the variant without BatchNorm."""
    return InceptionSmall(input_shape, num_classes, batch_norm=batch_norm, dropout=dropout)
