"""Inception V3 for ImageNet: torchvision's network, built for any input shape.

torchvision's Inception V3 needs 3 input channels and at least 75x75 pixels (the auxiliary
head needs 299x299-class inputs: its 5x5 average pool runs on the 17x17 grid). The wrapper
replaces the stem convolution for other channel counts, upsamples inputs below the minimum
side, and turns the auxiliary head on only where it fits (``aux_logits=None``: automatic).
With 1000 classes and the auxiliary head it has 27,161,264 parameters.
"""

from __future__ import annotations

import torch
import torch.nn as nn
import torch.nn.functional as F

from rethink_dist.architectures import register_model

MIN_SIDE = 75
AUX_MIN_SIDE = 299  # the size the auxiliary head was designed for


class InceptionV3(nn.Module):
    def __init__(self, input_shape, num_classes: int, dropout: float = 0.5, aux_logits: bool | None = None):
        super().__init__()
        from torchvision.models import inception_v3

        c, h, w = input_shape
        self.min_side = MIN_SIDE
        if aux_logits is None:
            aux_logits = min(h, w) >= AUX_MIN_SIDE
        elif aux_logits and min(h, w) < AUX_MIN_SIDE:
            self.min_side = AUX_MIN_SIDE
        self.net = inception_v3(
            weights=None, aux_logits=aux_logits, init_weights=True, num_classes=num_classes,
            dropout=dropout, transform_input=False,
        )
        if c != 3:
            old = self.net.Conv2d_1a_3x3.conv
            self.net.Conv2d_1a_3x3.conv = nn.Conv2d(c, old.out_channels, old.kernel_size, old.stride, bias=False)

    def forward(self, x: torch.Tensor):
        if min(x.shape[-2:]) < self.min_side:
            x = F.interpolate(x, size=(max(self.min_side, x.shape[-2]), max(self.min_side, x.shape[-1])),
                              mode="bilinear", align_corners=False)
        out = self.net(x)
        # In training with the auxiliary head torchvision returns (logits, aux_logits).
        if isinstance(out, tuple) and hasattr(out, "aux_logits"):
            return (out.logits, out.aux_logits) if out.aux_logits is not None else out.logits
        return out


@register_model("inception_v3", kwargs=("aux_logits",), dropout=True, lr=0.1)
def inception_v3(input_shape, num_classes, dropout: float = 0.0, aux_logits: bool | None = None) -> nn.Module:
    """torchvision's Inception V3 (auxiliary head automatic at 299x299)."""
    return InceptionV3(input_shape, num_classes, dropout=dropout, aux_logits=aux_logits)
