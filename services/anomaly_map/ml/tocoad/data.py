"""Image preprocessing shared by training and scoring (tocoad-spec §2).

Two ways to reach S x S: ``squash`` resizes each side independently; ``pad`` scales the longest
side to S and reflect-pads the short one, so a thin crack in a 1:2.5 Magnetic-tile image keeps
its width instead of being squeezed to a fraction of a pixel (issue 11). Maps of padded inputs
are cropped back to the content box and resized to S x S, i.e. they are laid out like a
squashed image and align with squashed masks and the bilinear upsampling of agssp-spec §1.9.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Literal

import cv2
import numpy as np
import torch
from torch import Tensor

from shared.errors import InvalidInputError

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
Aspect = Literal["pad", "squash"]
Box = tuple[int, int, int, int]  # y0, y1, x0, x1 of the image content inside S x S


def _resize(image: np.ndarray, height: int, width: int) -> np.ndarray:
    # Area interpolation when shrinking avoids the aliasing of plain bilinear on large
    # inputs (BTAD is up to 1600 px); bilinear when enlarging (tocoad-spec §2).
    shrink = image.shape[0] > height or image.shape[1] > width
    interp = cv2.INTER_AREA if shrink else cv2.INTER_LINEAR
    return cv2.resize(image, (width, height), interpolation=interp)


def content_box(height: int, width: int, size: int, aspect: Aspect) -> Box:
    """Where an (H, W) image lands inside S x S: the whole square, or the padded centre."""
    if aspect == "squash" or height == width:
        return 0, size, 0, size
    scale = size / max(height, width)
    h, w = max(1, round(height * scale)), max(1, round(width * scale))
    y0, x0 = (size - h) // 2, (size - w) // 2
    return y0, y0 + h, x0, x0 + w


def fit_square(image: np.ndarray, size: int, aspect: Aspect) -> np.ndarray:
    """One (H, W, 3) uint8 image -> (S, S, 3), squashed or aspect-kept and reflect-padded."""
    y0, y1, x0, x1 = content_box(image.shape[0], image.shape[1], size, aspect)
    inner = _resize(image, y1 - y0, x1 - x0)
    if (y1 - y0, x1 - x0) == (size, size):
        return inner
    # BORDER_REFLECT_101 keeps the texture statistics at the border (no flat bands to learn).
    return cv2.copyMakeBorder(
        inner,
        y0,
        size - y1,
        x0,
        size - x1,
        cv2.BORDER_REFLECT_101 if min(inner.shape[:2]) > 1 else cv2.BORDER_REPLICATE,
    )


def resize_images(images: Sequence[np.ndarray], size: int, aspect: Aspect = "squash") -> np.ndarray:
    """Validate and bring RGB images to S x S.

    Args:
        images: each (H, W, 3) uint8 RGB.
        size: S.
        aspect: ``squash`` or ``pad`` (see the module docstring).

    Returns:
        (N, S, S, 3) uint8.

    Raises:
        InvalidInputError: on an empty list or an image that is not HxWx3 uint8.
    """
    if len(images) == 0:
        raise InvalidInputError("no images given; pass at least one HxWx3 uint8 RGB image")
    out = np.empty((len(images), size, size, 3), np.uint8)
    for index, image in enumerate(images):
        if image.dtype != np.uint8 or image.ndim != 3 or image.shape[2] != 3:
            raise InvalidInputError(
                f"image {index} is {image.shape} {image.dtype}; expected HxWx3 uint8 RGB"
            )
        out[index] = fit_square(image, size, aspect)
    return out


def uncrop_maps(maps: np.ndarray, boxes: Sequence[Box]) -> np.ndarray:
    """(B, S, S) maps of padded inputs -> (B, S, S) maps of the content only (squashed layout)."""
    size = maps.shape[-1]
    out = np.empty_like(maps)
    for index, (y0, y1, x0, x1) in enumerate(boxes):
        crop = maps[index, y0:y1, x0:x1]
        same = crop.shape == (size, size)
        out[index] = (
            crop if same else cv2.resize(crop, (size, size), interpolation=cv2.INTER_LINEAR)
        )
    return out


def to_unit_tensor(images: np.ndarray, device: torch.device) -> Tensor:
    """(N, S, S, 3) uint8 -> (N, 3, S, S) float32 in [0, 1] on ``device``."""
    tensor = torch.from_numpy(np.ascontiguousarray(images)).to(device)
    return tensor.permute(0, 3, 1, 2).float().div_(255.0)


def normalise(images: Tensor) -> Tensor:
    """ImageNet mean/std normalisation of (B, 3, S, S) [0, 1] images (also from scratch, §2)."""
    mean = images.new_tensor(IMAGENET_MEAN).view(1, 3, 1, 1)
    std = images.new_tensor(IMAGENET_STD).view(1, 3, 1, 1)
    return (images - mean) / std


def preprocess(
    images: Sequence[np.ndarray], size: int, device: torch.device, aspect: Aspect = "squash"
) -> Tensor:
    """Uint8 RGB images of any size -> (N, 3, S, S) normalised float32 on ``device``."""
    return normalise(to_unit_tensor(resize_images(images, size, aspect), device))
