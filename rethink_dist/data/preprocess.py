"""The paper's CIFAR-10 preprocessing on whole batches of device tensors (N x C x H x W).

pixels / 255 -> centre crop (or random crop when augmenting) -> per-image whitening
(TensorFlow's per_image_standardization: subtract the image's mean, divide by
max(std, 1/sqrt(number of values))).
"""

from __future__ import annotations

import math

import torch


def to_unit(x: torch.Tensor) -> torch.Tensor:
    """uint8 (or float on the 0..255 scale) -> float32 on the 0..1 scale."""
    return x.float().div_(255.0) if x.dtype == torch.uint8 else x.float() / 255.0


def center_crop(x: torch.Tensor, size: int) -> torch.Tensor:
    h, w = x.shape[-2:]
    if size > h or size > w:
        raise ValueError(f"crop {size} is larger than the image ({h}x{w})")
    top, left = (h - size) // 2, (w - size) // 2
    return x[..., top : top + size, left : left + size]


def random_crop(x: torch.Tensor, size: int, pad: int, generator: torch.Generator | None) -> torch.Tensor:
    """A random ``size`` x ``size`` crop of each image (zero-padded by ``pad``), vectorised."""
    if pad:
        x = torch.nn.functional.pad(x, (pad, pad, pad, pad))
    n, c, h, w = x.shape
    gen_device = generator.device if generator is not None else x.device
    oy = torch.randint(0, h - size + 1, (n,), generator=generator, device=gen_device)
    ox = torch.randint(0, w - size + 1, (n,), generator=generator, device=gen_device)
    if oy.device != x.device:
        # The offsets are drawn on the generator's device (the CPU: the same crops on any device);
        # on a GPU they go over in one pinned, asynchronous copy, not two blocking ones per batch.
        both = torch.stack([oy, ox])
        if x.device.type == "cuda":
            both = both.pin_memory()
        oy, ox = both.to(x.device, non_blocking=True)
    ar = torch.arange(size, device=x.device)
    rows = (oy[:, None] + ar)[:, None, :, None].expand(n, c, size, w)
    x = x.gather(2, rows)
    cols = (ox[:, None] + ar)[:, None, None, :].expand(n, c, size, size)
    return x.gather(3, cols)


def whiten(x: torch.Tensor) -> torch.Tensor:
    """Per-image standardisation (TensorFlow's per_image_standardization) of float images."""
    n = x.shape[0]
    flat = x.reshape(n, -1)
    mean = flat.mean(dim=1, keepdim=True)
    std = flat.std(dim=1, unbiased=False, keepdim=True).clamp_min(1.0 / math.sqrt(flat.shape[1]))
    return ((flat - mean) / std).reshape(x.shape)


def repeat_channels(x: torch.Tensor, channels: int | None) -> torch.Tensor:
    """A one-channel (gray) batch with its channel repeated ``channels`` times (None: unchanged).

    After whitening this equals whitening the repeated image: repeating a channel leaves an
    image's mean and standard deviation as they are.
    """
    if channels is None or x.shape[1] == channels:
        return x
    if x.shape[1] != 1:
        raise ValueError(f"cannot repeat {x.shape[1]} channels to {channels}; only a gray channel is repeated")
    return x.expand(-1, channels, -1, -1).contiguous()


def preprocess(x: torch.Tensor, size: int, augment: bool = False, pad: int = 0,
               generator: torch.Generator | None = None, channels: int | None = None) -> torch.Tensor:
    """Raw images (uint8 or 0..255 float) -> whitened float32 model inputs of side ``size``.

    ``channels``: repeat a gray channel to this many (the model input); None keeps them.
    """
    x = to_unit(x)
    x = random_crop(x, size, pad, generator) if augment else center_crop(x, size)
    return repeat_channels(whiten(x), channels)
