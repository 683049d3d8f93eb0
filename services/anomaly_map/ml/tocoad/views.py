"""Mild industrial augmentations that make the two SimSiam views (tocoad-spec §6 step 1)."""

from __future__ import annotations

import math

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor

_LUMA = (0.299, 0.587, 0.114)


def _resized_crop(img: Tensor, rng: np.random.Generator) -> Tensor:
    # scale 0.6-1.0 and ratio 3/4-4/3: SimSiam's 0.2 lower bound would crop defects away.
    size = img.shape[-1]
    area = rng.uniform(0.6, 1.0)
    ratio = math.exp(rng.uniform(math.log(3 / 4), math.log(4 / 3)))
    height = min(size, round(size * math.sqrt(area / ratio)))
    width = min(size, round(size * math.sqrt(area * ratio)))
    top = int(rng.integers(0, size - height + 1))
    left = int(rng.integers(0, size - width + 1))
    crop = img[None, :, top : top + height, left : left + width]
    return F.interpolate(crop, size=(size, size), mode="bilinear", align_corners=False)[0]


def _grey(img: Tensor) -> Tensor:
    weights = img.new_tensor(_LUMA).view(3, 1, 1)
    return (img * weights).sum(0, keepdim=True)


def _colour_jitter(img: Tensor, rng: np.random.Generator) -> Tensor:
    # tocoad-spec §6: jitter (0.2, 0.2, 0.1, 0.02), far milder than SimSiam's ImageNet setting.
    img = img * rng.uniform(0.8, 1.2)
    mean = _grey(img).mean()
    img = (img - mean) * rng.uniform(0.8, 1.2) + mean
    grey = _grey(img)
    img = (img - grey) * rng.uniform(0.9, 1.1) + grey
    # Hue: rotate the chroma plane of YIQ by up to +-0.02 turns.
    angle = 2.0 * math.pi * rng.uniform(-0.02, 0.02)
    to_yiq = img.new_tensor(
        [[0.299, 0.587, 0.114], [0.596, -0.274, -0.322], [0.211, -0.523, 0.312]]
    )
    cos, sin = math.cos(angle), math.sin(angle)
    rot = img.new_tensor([[1.0, 0.0, 0.0], [0.0, cos, -sin], [0.0, sin, cos]])
    matrix = torch.linalg.inv(to_yiq) @ rot @ to_yiq
    return torch.einsum("ij,jhw->ihw", matrix, img).clamp(0.0, 1.0)


def _blur(img: Tensor, sigma: float) -> Tensor:
    radius = max(1, math.ceil(3 * sigma))
    offsets = torch.arange(-radius, radius + 1, dtype=img.dtype, device=img.device)
    kernel = torch.exp(-0.5 * (offsets / sigma) ** 2)
    kernel = kernel / kernel.sum()
    x = F.pad(img[None], (radius, radius, radius, radius), mode="reflect")
    x = F.conv2d(x, kernel.view(1, 1, 1, -1).repeat(3, 1, 1, 1), groups=3)
    x = F.conv2d(x, kernel.view(1, 1, -1, 1).repeat(3, 1, 1, 1), groups=3)
    return x[0]


def _view(img: Tensor, rng: np.random.Generator, texture: bool) -> Tensor:
    img = _resized_crop(img, rng)
    if rng.random() < 0.5:
        img = img.flip(-1)
    if texture:
        # Orientation carries no meaning for textures (tocoad-spec §6), so vflip/rot90 are safe.
        if rng.random() < 0.5:
            img = img.flip(-2)
        img = torch.rot90(img, int(rng.integers(4)), dims=(-2, -1))
    if rng.random() < 0.8:
        img = _colour_jitter(img, rng)
    if rng.random() < 0.3:
        img = _blur(img, float(rng.uniform(0.1, 1.0)))
    return img


def make_views(images: Tensor, rng: np.random.Generator, texture: bool = False) -> Tensor:
    """One random view per image.

    Args:
        images: (B, 3, S, S) float in [0, 1] (not yet normalised).
        rng: random source (parameters are drawn on the host, the ops run on the tensor's device).
        texture: also random vertical flips and rot90 (texture categories only).

    Returns:
        (B, 3, S, S) float in [0, 1].
    """
    return torch.stack([_view(img, rng, texture) for img in images])
