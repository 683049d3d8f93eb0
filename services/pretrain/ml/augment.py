"""Joint image + anomaly-map augmentation of agssp-spec §4.1, on numpy arrays.

Geometric steps move image and map together; photometric distortion touches the image only.
Randomness comes from an explicit ``numpy.random.Generator`` so a sample is reproducible.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from typing import Literal

import cv2
import numpy as np
import torch
from numpy.typing import NDArray
from torch import Tensor

Image = NDArray[np.uint8]
Map = NDArray[np.float32]

_MAP_INTERPOLATION = {"nearest": cv2.INTER_NEAREST, "bilinear": cv2.INTER_LINEAR}


@dataclass(frozen=True)
class AugmentConfig:
    """Parameters of the training pipeline.

    Attributes:
        crop_size: side of the random square crop (224; 192 for SimMIM).
        resize_base: s = base * U(scale_range) before the crop (512; 400 for SimMIM).
        scale_range: range of the resize ratio.
        map_interpolation: ``"nearest"`` reproduces mmcv's seg-map resize (the code);
            ``"bilinear"`` is smoother (agssp-spec §6.4.8).
        flip_prob: probability of the joint horizontal flip.
        photometric: apply mmseg-style photometric distortion (off for SimMIM).
    """

    crop_size: int = 224
    resize_base: int = 512
    scale_range: tuple[float, float] = (0.5, 2.0)
    map_interpolation: Literal["nearest", "bilinear"] = "nearest"
    flip_prob: float = 0.5
    photometric: bool = True


def joint_augment(
    image: Image, amap: Map, rng: np.random.Generator, cfg: AugmentConfig
) -> tuple[Image, Map]:
    """Random square resize, same-place crop, joint flip, photometric distortion.

    Args:
        image: (H, W, 3) RGB.
        amap: (G, G) anomaly map at its own resolution.
        rng: source of randomness.
        cfg: pipeline parameters.

    Returns:
        Image (S, S, 3) and map (S, S), S = ``cfg.crop_size``.
    """
    ratio = rng.uniform(*cfg.scale_range)
    # agssp-spec §4.1 step 1 squashes to a square; clamp so the crop always fits (with the
    # reference values the smallest side is 256 >= 224 anyway).
    side = max(round(cfg.resize_base * ratio), cfg.crop_size)
    image = np.asarray(cv2.resize(image, (side, side), interpolation=cv2.INTER_LINEAR), np.uint8)
    map_mode = _MAP_INTERPOLATION[cfg.map_interpolation]
    amap = np.asarray(cv2.resize(amap, (side, side), interpolation=map_mode), np.float32)
    top = int(rng.integers(0, side - cfg.crop_size + 1))
    left = int(rng.integers(0, side - cfg.crop_size + 1))
    window = (slice(top, top + cfg.crop_size), slice(left, left + cfg.crop_size))
    image, amap = image[window], amap[window]
    if rng.random() < cfg.flip_prob:
        image, amap = image[:, ::-1], amap[:, ::-1]
    if cfg.photometric:
        image = photometric_distortion(image, rng)
    return np.ascontiguousarray(image), np.ascontiguousarray(amap, dtype=np.float32)


def photometric_distortion(image: Image, rng: np.random.Generator) -> Image:
    """mmseg PhotoMetricDistortion defaults on an RGB uint8 image, each step with p = 0.5.

    Brightness +-32, contrast x[0.5, 1.5] (before or after the HSV steps, at random),
    saturation x[0.5, 1.5], hue +-18 (OpenCV hue units, 0..180). Values are clipped to
    uint8 after every step, as mmseg does.
    """
    out = image.astype(np.float32)
    if rng.random() < 0.5:
        out = _to_uint8(out + rng.uniform(-32, 32)).astype(np.float32)
    contrast_first = rng.random() < 0.5
    if contrast_first and rng.random() < 0.5:
        out = _to_uint8(out * rng.uniform(0.5, 1.5)).astype(np.float32)
    hsv = cv2.cvtColor(_to_uint8(out), cv2.COLOR_RGB2HSV).astype(np.float32)
    if rng.random() < 0.5:
        hsv[..., 1] *= rng.uniform(0.5, 1.5)
    if rng.random() < 0.5:
        hsv[..., 0] = (hsv[..., 0] + rng.integers(-18, 19)) % 180
    hsv = np.clip(hsv, 0, [179, 255, 255])
    out = cv2.cvtColor(hsv.astype(np.uint8), cv2.COLOR_HSV2RGB).astype(np.float32)
    if not contrast_first and rng.random() < 0.5:
        out = out * rng.uniform(0.5, 1.5)
    return _to_uint8(out)


def compute_mean_std(
    images: Iterable[Image],
) -> tuple[tuple[float, float, float], tuple[float, float, float]]:
    """Per-channel mean and standard deviation over all pixels of all images (0-255 scale).

    Args:
        images: (H, W, 3) RGB arrays; sizes may differ.

    Returns:
        ``(mean, std)``, each three floats in RGB order.

    Raises:
        ValueError: no image was given.
    """
    total = np.zeros(3, dtype=np.float64)
    squares = np.zeros(3, dtype=np.float64)
    count = 0
    for image in images:
        pixels = image.reshape(-1, 3).astype(np.float64)
        total += pixels.sum(axis=0)
        squares += np.square(pixels).sum(axis=0)
        count += pixels.shape[0]
    if count == 0:
        raise ValueError("compute_mean_std needs at least one image")
    mean = total / count
    std = np.sqrt(np.maximum(squares / count - mean**2, 0.0))
    return _triple(mean), _triple(std)


def normalize_images(
    images: Tensor, mean: tuple[float, float, float], std: tuple[float, float, float]
) -> Tensor:
    """(B, 3, H, W) uint8 RGB to float32 ``(x - mean) / std`` on the images' device."""
    mean_t = torch.tensor(mean, device=images.device, dtype=torch.float32).view(1, 3, 1, 1)
    std_t = torch.tensor(std, device=images.device, dtype=torch.float32).view(1, 3, 1, 1)
    return (images.float() - mean_t) / std_t


def _to_uint8(values: NDArray[np.float32]) -> Image:
    return np.clip(values, 0, 255).astype(np.uint8)


def _triple(values: NDArray[np.float64]) -> tuple[float, float, float]:
    return float(values[0]), float(values[1]), float(values[2])
