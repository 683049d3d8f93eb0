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

    The map is resized only inside the crop window (``resized_map_window``), to the values a
    full ``cv2.resize`` and the crop give; the flip is drawn before the photometric steps
    and applied after them (they act per pixel, so the result is the same).

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
    top = int(rng.integers(0, side - cfg.crop_size + 1))
    left = int(rng.integers(0, side - cfg.crop_size + 1))
    window = Window(side=side, top=top, left=left, size=cfg.crop_size)
    image = np.asarray(cv2.resize(image, (side, side), interpolation=cv2.INTER_LINEAR), np.uint8)
    image = image[window.rows, window.cols]
    amap = resized_map_window(amap, window, cfg.map_interpolation)
    flip = rng.random() < cfg.flip_prob
    if cfg.photometric:  # per pixel, so the same before or after the flip
        image = photometric_distortion(image, rng)
    if flip:  # cv2.flip writes a contiguous copy in one pass
        return np.asarray(cv2.flip(image, 1), np.uint8), np.asarray(cv2.flip(amap, 1), np.float32)
    return np.ascontiguousarray(image), amap


@dataclass(frozen=True)
class Window:
    """The square crop ``[top, top + size) x [left, left + size)`` of a (side, side) resize."""

    side: int
    top: int
    left: int
    size: int

    @property
    def rows(self) -> slice:
        return slice(self.top, self.top + self.size)

    @property
    def cols(self) -> slice:
        return slice(self.left, self.left + self.size)


def resized_map_window(
    amap: Map, window: Window, interpolation: Literal["nearest", "bilinear"]
) -> Map:
    """``cv2.resize(amap, (side, side))[window]`` computed on the window's pixels only.

    Each output pixel is a function of its own coordinates, so only the crop is evaluated,
    with OpenCV's coordinate mapping: nearest takes source ``floor(x * src / side)``;
    bilinear samples at ``(x + 0.5) * src / side - 0.5`` (edge columns clamped, edge rows
    repeated), in float32 as OpenCV does for float maps.

    Args:
        amap: (Gh, Gw) float32 map at its own resolution.
        window: the crop of the (side, side) resize.
        interpolation: ``"nearest"`` or ``"bilinear"``.

    Returns:
        The (size, size) float32 window.
    """
    height, width = amap.shape
    if interpolation == "nearest":
        rows = _nearest_taps(height, window.side, window.top, window.size)
        cols = _nearest_taps(width, window.side, window.left, window.size)
        return np.asarray(amap[:, cols][rows], np.float32)  # C-ordered, unlike [rows][:, cols]
    row, row_weight = _linear_taps(height, window.side, window.top, window.size)
    col, col_weight = _linear_taps(width, window.side, window.left, window.size)
    # A column outside [0, last) takes the nearest edge column alone; rows are clamped only.
    col_weight[(col < 0) | (col >= width - 1)] = 0.0
    left, right = np.clip(col, 0, width - 1), np.clip(col + 1, 0, width - 1)
    top, bottom = np.clip(row, 0, height - 1), np.clip(row + 1, 0, height - 1)
    col_weight, row_weight = col_weight[None, :], row_weight[:, None]
    horizontal = amap[:, left] * (1.0 - col_weight) + amap[:, right] * col_weight
    vertical = horizontal[top] * (1.0 - row_weight) + horizontal[bottom] * row_weight
    return np.asarray(vertical, np.float32)


def _nearest_taps(source: int, side: int, start: int, size: int) -> NDArray[np.intp]:
    scale = 1.0 / (side / source)  # OpenCV's inverse of (dst / src), in double
    index = np.floor(np.arange(start, start + size, dtype=np.float64) * scale).astype(np.intp)
    return np.minimum(index, source - 1)


def _linear_taps(
    source: int, side: int, start: int, size: int
) -> tuple[NDArray[np.intp], NDArray[np.float32]]:
    """Source index left of each sample point (unclamped) and the float32 fraction past it."""
    scale = 1.0 / (side / source)
    position = np.arange(start, start + size, dtype=np.float64) + 0.5
    coordinate = (position * scale - 0.5).astype(np.float32)
    floor = np.floor(coordinate)
    return floor.astype(np.intp), (coordinate - floor).astype(np.float32)


def photometric_distortion(image: Image, rng: np.random.Generator) -> Image:
    """mmseg PhotoMetricDistortion defaults on an RGB uint8 image, each step with p = 0.5.

    Brightness +-32, contrast x[0.5, 1.5] (before or after the HSV steps, at random),
    saturation x[0.5, 1.5], hue +-18 (OpenCV hue units, 0..180). Values are clipped to
    uint8 after every step, as mmseg does. Every step maps one uint8 value to another, so
    each runs as a 256-entry lookup table (float32 arithmetic, as on the pixels themselves).
    """
    table: Image | None = None  # the steps before the HSV conversion, composed
    if rng.random() < 0.5:
        table = _to_uint8(_IDENTITY.astype(np.float32) + rng.uniform(-32, 32))
    contrast_first = rng.random() < 0.5
    if contrast_first and rng.random() < 0.5:
        contrast = _scaled(rng.uniform(0.5, 1.5))
        table = contrast if table is None else contrast[table]
    if table is not None:
        image = np.asarray(cv2.LUT(image, table), np.uint8)
    hsv = cv2.cvtColor(image, cv2.COLOR_RGB2HSV)  # 8-bit hue is 0..179 already
    saturation = _scaled(rng.uniform(0.5, 1.5)) if rng.random() < 0.5 else None
    hue = _hue_shift(int(rng.integers(-18, 19))) if rng.random() < 0.5 else None
    if saturation is not None or hue is not None:
        luts = [_IDENTITY if lut is None else lut for lut in (hue, saturation, None)]
        hsv = cv2.LUT(hsv, np.stack(luts, axis=-1).reshape(256, 1, 3))
    out = cv2.cvtColor(hsv, cv2.COLOR_HSV2RGB)
    if not contrast_first and rng.random() < 0.5:
        out = cv2.LUT(out, _scaled(rng.uniform(0.5, 1.5)))
    return np.asarray(out, np.uint8)


_IDENTITY = np.arange(256, dtype=np.uint8)


def _scaled(factor: float) -> Image:
    """Lookup table of ``uint8(clip(v * factor))`` for every uint8 value v."""
    return _to_uint8(_IDENTITY.astype(np.float32) * factor)


def _hue_shift(shift: int) -> Image:
    """Lookup table of ``min((v + shift) mod 180, 179)`` for every uint8 value v."""
    return np.minimum((_IDENTITY.astype(np.int64) + shift) % 180, 179).astype(np.uint8)


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
