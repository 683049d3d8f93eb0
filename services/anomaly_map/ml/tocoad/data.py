"""Image preprocessing shared by training and scoring (tocoad-spec §2)."""

from __future__ import annotations

from collections.abc import Sequence

import cv2
import numpy as np
import torch
from torch import Tensor

from shared.errors import InvalidInputError

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)


def resize_images(images: Sequence[np.ndarray], size: int) -> np.ndarray:
    """Validate and resize RGB images to S x S.

    Args:
        images: each (H, W, 3) uint8 RGB.
        size: S.

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
        # Area interpolation when shrinking avoids the aliasing of plain bilinear on large
        # inputs (BTAD is up to 1600 px); bilinear when enlarging (tocoad-spec §2).
        shrink = image.shape[0] > size or image.shape[1] > size
        interp = cv2.INTER_AREA if shrink else cv2.INTER_LINEAR
        out[index] = cv2.resize(image, (size, size), interpolation=interp)
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


def preprocess(images: Sequence[np.ndarray], size: int, device: torch.device) -> Tensor:
    """Uint8 RGB images of any size -> (N, 3, S, S) normalised float32 on ``device``."""
    return normalise(to_unit_tensor(resize_images(images, size), device))
