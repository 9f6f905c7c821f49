"""The paper's small AlexNet for CIFAR-10 (1,387,786 parameters on 3x28x28, 10 classes).

Two modules of (5x5 conv, 64 channels, SAME padding, ReLU -> 3x3 max-pool stride 2, SAME ->
local response normalisation), then fully connected 384 and 192 (ReLU) and a linear 10-way
layer. LRN uses TensorFlow's CIFAR-10 tutorial values (depth radius 4, bias 1, alpha 0.001/9,
beta 0.75), converted to PyTorch's convention (size 9, alpha 0.001: PyTorch divides alpha by size).
"""

from __future__ import annotations

import torch
import torch.nn as nn

from rethink_dist.architectures import register_model


def _module(c_in: int) -> list[nn.Module]:
    return [
        nn.Conv2d(c_in, 64, 5, padding=2),
        nn.ReLU(inplace=True),
        nn.MaxPool2d(3, stride=2, padding=1),
        FP32LocalResponseNorm(9, alpha=0.001, beta=0.75, k=1.0),
    ]


class FP32LocalResponseNorm(nn.LocalResponseNorm):
    """LRN computed in float32 whatever the input's precision. In bfloat16 (8 bits of mantissa) the
    divisor 1 + 0.001 * mean(x^2) rounds to 1 for most activations and the layer does nothing; CUDA's
    autocast has no float32 rule for the avg_pool3d inside LRN (the CPU's does). No parameters: the
    state dict is that of nn.LocalResponseNorm."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if x.device.type not in ("cpu", "cuda"):  # the meta device (parameter counts): shapes only
            return super().forward(x)
        with torch.autocast(x.device.type, enabled=False):
            return super().forward(x.float()).to(x.dtype)


class AlexNetSmall(nn.Module):
    def __init__(self, input_shape: tuple[int, int, int], num_classes: int, dropout: float = 0.0):
        super().__init__()
        c, h, w = input_shape
        self.features = nn.Sequential(*_module(c), *_module(64))
        with torch.no_grad():
            flat = self.features(torch.zeros(1, c, h, w)).numel()
        drop = [nn.Dropout(dropout)] if dropout else []
        self.classifier = nn.Sequential(
            nn.Flatten(),
            nn.Linear(flat, 384),
            nn.ReLU(inplace=True),
            *drop,
            nn.Linear(384, 192),
            nn.ReLU(inplace=True),
            *drop,
            nn.Linear(192, num_classes),
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.classifier(self.features(x))


@register_model("alexnet_small", dropout=True, params=1_387_786)
def alexnet_small(input_shape, num_classes, dropout: float = 0.0) -> nn.Module:
    """Small AlexNet: two conv/pool/LRN modules, FC 384, FC 192, linear."""
    return AlexNetSmall(input_shape, num_classes, dropout)
