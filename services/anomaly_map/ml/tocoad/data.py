"""Image preprocessing shared by training and scoring (tocoad-spec §2).

Three ways to reach S x S for a non-square image (issue 11: squashing 1:2.5 Magnetic-tile
images to 128 x 128 made thin cracks vanish):

- ``squash``: each side resized on its own (tocoad-spec §2);
- ``pad``: the long side to S, the short one reflect-padded (shape kept, detail lost: the
  scale is S / long side, below both squash factors);
- ``tile``: the short side to S and the long side covered by up to ``MAX_TILES`` evenly spaced,
  overlapping S x S tiles, so the scale is S / short side, at or above both squash factors:
  thin defects keep the most pixels. Training uses every tile as a sample.

Maps of padded or tiled inputs are brought back to the image (crop, or stitch with averaging
in the overlaps) and resized to S x S, i.e. laid out like a squashed image: they align with
squashed masks and with the bilinear upsampling of agssp-spec §1.9.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Literal

import cv2
import numpy as np
import torch
from torch import Tensor

from shared.errors import InvalidInputError

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
Aspect = Literal["tile", "pad", "squash"]
Box = tuple[int, int, int, int]  # y0, y1, x0, x1 of the image content inside S x S
MAX_TILES = 4


@dataclass(frozen=True)
class TileLayout:
    """An image scaled to (height, width) (short side S) and its tiles' top-left corners."""

    height: int
    width: int
    origins: tuple[tuple[int, int], ...]


def tile_layout(height: int, width: int, size: int) -> TileLayout:
    """Short side to S; the long side covered by evenly spaced S x S tiles (at most 4)."""
    scale = size / min(height, width)
    if max(height, width) * scale > MAX_TILES * size:  # very elongated: fewer, coarser tiles
        scale = MAX_TILES * size / max(height, width)
    h, w = max(size, round(height * scale)), max(size, round(width * scale))
    long, tall = max(h, w), h >= w
    count = -(-long // size)
    starts = sorted({int(v) for v in np.linspace(0, long - size, count).round()})
    origins = tuple((start, 0) if tall else (0, start) for start in starts)
    if min(h, w) > size:  # only when capped: centre the tiles across the short side
        offset = (min(h, w) - size) // 2
        origins = tuple((y, x + offset) if tall else (y + offset, x) for y, x in origins)
    return TileLayout(h, w, origins)


def cut_tiles(image: np.ndarray, size: int) -> tuple[np.ndarray, TileLayout]:
    """(T, S, S, 3) tiles of one (H, W, 3) uint8 image and their layout."""
    layout = tile_layout(image.shape[0], image.shape[1], size)
    scaled = _resize(image, layout.height, layout.width)
    tiles = [scaled[y : y + size, x : x + size] for y, x in layout.origins]
    return np.stack(tiles), layout


def stitch_tiles(
    maps: np.ndarray, scores: np.ndarray, layouts: Sequence[TileLayout], size: int
) -> tuple[np.ndarray, np.ndarray]:
    """Per-tile (T, S, S) maps and (T,) scores -> per-image (B, S, S) maps and (B,) max scores.

    Overlaps are averaged; the stitched (h, w) map is resized to S x S (squashed layout).
    """
    out_maps = np.empty((len(layouts), size, size), np.float32)
    out_scores = np.empty(len(layouts), np.float32)
    index = 0
    for b, layout in enumerate(layouts):
        canvas = np.zeros((layout.height, layout.width), np.float32)
        weight = np.zeros_like(canvas)
        for y, x in layout.origins:
            canvas[y : y + size, x : x + size] += maps[index]
            weight[y : y + size, x : x + size] += 1.0
            index += 1
        count = len(layout.origins)
        out_scores[b] = scores[index - count : index].max()
        filled = canvas / np.maximum(weight, 1.0)
        if weight.min() == 0:  # capped layouts leave uncovered borders: use the nearest value
            filled = np.where(weight > 0, filled, filled[weight > 0].mean())
        out_maps[b] = cv2.resize(filled, (size, size), interpolation=cv2.INTER_AREA)
    return out_maps, out_scores


def _resize(image: np.ndarray, height: int, width: int) -> np.ndarray:
    # Area interpolation when shrinking avoids the aliasing of plain bilinear on large
    # inputs (BTAD is up to 1600 px); bilinear when enlarging (tocoad-spec §2).
    shrink = image.shape[0] > height or image.shape[1] > width
    interp = cv2.INTER_AREA if shrink else cv2.INTER_LINEAR
    return cv2.resize(image, (width, height), interpolation=interp)


def content_box(height: int, width: int, size: int, aspect: Aspect) -> Box:
    # (tile inputs are always S x S tiles: their content box is the whole square)
    """Where an (H, W) image lands inside S x S: the whole square, or the padded centre."""
    if aspect == "squash" or height == width:
        return 0, size, 0, size
    scale = size / max(height, width)
    h, w = max(1, round(height * scale)), max(1, round(width * scale))
    y0, x0 = (size - h) // 2, (size - w) // 2
    return y0, y0 + h, x0, x0 + w


def fit_square(image: np.ndarray, size: int, aspect: Literal["pad", "squash"]) -> np.ndarray:
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
        aspect: ``squash``, ``pad`` or ``tile`` (see the module docstring).

    Returns:
        (N, S, S, 3) uint8; for ``tile`` every tile of every image, so N >= len(images).

    Raises:
        InvalidInputError: on an empty list or an image that is not HxWx3 uint8.
    """
    if len(images) == 0:
        raise InvalidInputError("no images given; pass at least one HxWx3 uint8 RGB image")
    for index, image in enumerate(images):
        if image.dtype != np.uint8 or image.ndim != 3 or image.shape[2] != 3:
            raise InvalidInputError(
                f"image {index} is {image.shape} {image.dtype}; expected HxWx3 uint8 RGB"
            )
    if aspect == "tile":
        return np.concatenate([cut_tiles(image, size)[0] for image in images])
    out = np.empty((len(images), size, size, 3), np.uint8)
    for index, image in enumerate(images):
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
