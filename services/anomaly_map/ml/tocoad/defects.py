"""Labelled defects as Stage I anomaly sources (tocoad-spec §3, our extension; issue 21).

ToCoAD's generator G invents anomalies (Perlin-masked foreign textures, CutPaste). A plant
that has labelled a few defects knows what its anomalies look like, so G may also paste
those: each labelled region is cut with a margin of its surroundings (an *exemplar*) and
pasted onto a normal training image with geometric and photometric augmentation, its edge
feathered so that the discriminator learns the defect, not a seam.

- From a pixel mask: one exemplar per connected component; the blend weight (alpha) is the
  component, slightly dilated and feathered.
- From a box: the box is the region; alpha is 1 inside it and falls off across the margin
  (a soft blend, since a box holds background too).

Exemplars are brought to the model's scale on cutting: a labelled image is resized like a
training image would be (``aspect``: tile, pad or squash, see ``data``), so a defect keeps the
size it has in the maps.

*Native* samples (``NativeSample``) are the labelled images themselves, brought to S x S the
same way (every tile, for ``tile``), with their target: the mask, or the union of the boxes.
A pasted exemplar shows a defect on the pool's surface; a native sample shows it in its real
context, and the rest of the image is real normal surface (on a defect-dense pool, the pool
images that Stage I calls normal hold unlabelled defects; the native samples do not).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import cv2
import numpy as np

from .data import Aspect, resize_images, tile_layout

Rng = np.random.Generator
BoxXYXY = tuple[float, float, float, float]
MARGIN = 0.25  # share of the region's side kept around it on each side
MIN_AREA = 4  # pixels, at the model's scale: smaller regions give no exemplar
SCALE_RANGE = (0.75, 1.33)  # log-uniform size jitter at paste time
MAX_SIDE_SHARE = 0.9  # an exemplar is shrunk to fit this share of S


@dataclass(frozen=True)
class DefectExemplar:
    """A defect and its surroundings at the model's scale, with its blend weight."""

    patch: np.ndarray  # (h, w, 3) uint8 RGB
    alpha: np.ndarray  # (h, w) float32 in [0, 1]; 1 on the defect, 0 on the surroundings

    @property
    def ring(self) -> np.ndarray:
        """Where the patch shows the surroundings (alpha < 0.5): used to match brightness."""
        return np.asarray(self.alpha < 0.5)


@dataclass(frozen=True)
class NativeSample:
    """A labelled image at the model's scale (one S x S square or tile) and its target."""

    image: np.ndarray  # (S, S, 3) uint8 RGB
    mask: np.ndarray  # (S, S) float32 in {0, 1}: 1 on the labelled defects


def model_scale(height: int, width: int, size: int, aspect: Aspect) -> tuple[float, float]:
    """(sy, sx): how a training image of (height, width) is scaled on its way to S x S."""
    if aspect == "tile":
        layout = tile_layout(height, width, size)
        return layout.height / height, layout.width / width
    if aspect == "pad":
        scale = size / max(height, width)
        return scale, scale
    return size / height, size / width


def exemplars_from_mask(
    image: np.ndarray, mask: np.ndarray, size: int, aspect: Aspect
) -> list[DefectExemplar]:
    """One exemplar per connected defect region of a pixel mask (non-zero = defect).

    Args:
        image: (H, W, 3) uint8 RGB labelled image.
        mask: (H, W) mask of the same image.
        size: S, the model's input side.
        aspect: how training images reach S x S.
    """
    scaled, binary = _to_model_scale(image, mask > 0, size, aspect)
    count, labels, stats, _ = cv2.connectedComponentsWithStats(
        binary.astype(np.uint8), connectivity=8
    )
    out = []
    for index in range(1, count):
        if stats[index, cv2.CC_STAT_AREA] < MIN_AREA:
            continue
        x, y, w, h = (int(stats[index, k]) for k in range(4))
        region = np.asarray(labels == index, np.float32)
        out.append(_cut(scaled, region, (x, y, x + w, y + h), feather_inside=False))
    return out


def exemplars_from_boxes(
    image: np.ndarray, boxes: Sequence[BoxXYXY], size: int, aspect: Aspect
) -> list[DefectExemplar]:
    """One exemplar per labelled box (pixel corners x1, y1, x2, y2 of the original image)."""
    height, width = image.shape[:2]
    sy, sx = model_scale(height, width, size, aspect)
    scaled, _ = _to_model_scale(image, np.zeros((height, width), bool), size, aspect)
    out = []
    for x1, y1, x2, y2 in boxes:
        ix1, iy1 = int(np.floor(x1 * sx)), int(np.floor(y1 * sy))
        ix2 = min(scaled.shape[1], max(ix1 + 1, int(np.ceil(x2 * sx))))
        iy2 = min(scaled.shape[0], max(iy1 + 1, int(np.ceil(y2 * sy))))
        if (ix2 - ix1) * (iy2 - iy1) < MIN_AREA:
            continue
        region = np.zeros(scaled.shape[:2], np.float32)
        region[iy1:iy2, ix1:ix2] = 1.0
        out.append(_cut(scaled, region, (ix1, iy1, ix2, iy2), feather_inside=True))
    return out


def natives_from_mask(
    image: np.ndarray, mask: np.ndarray, size: int, aspect: Aspect
) -> list[NativeSample]:
    """A labelled image and its pixel mask (non-zero = defect) as native samples: the squares
    a training image of its shape becomes (``data.resize_images``), the mask cut alike."""
    layer = np.where(mask > 0, 255, 0).astype(np.uint8)
    images = resize_images([image], size, aspect)
    masks = resize_images([np.repeat(layer[..., None], 3, axis=2)], size, aspect)[..., 0]
    return [
        NativeSample(np.ascontiguousarray(im), np.asarray(m >= 128, np.float32))
        for im, m in zip(images, masks, strict=True)
    ]


def natives_from_boxes(
    image: np.ndarray, boxes: Sequence[BoxXYXY], size: int, aspect: Aspect
) -> list[NativeSample]:
    """A labelled image as native samples, its target the union of its boxes (pixel corners
    x1, y1, x2, y2 of the original image; corners rounded outwards to whole pixels)."""
    height, width = image.shape[:2]
    mask = np.zeros((height, width), np.uint8)
    for x1, y1, x2, y2 in boxes:
        ix1, iy1 = max(0, int(np.floor(x1))), max(0, int(np.floor(y1)))
        ix2, iy2 = min(width, int(np.ceil(x2))), min(height, int(np.ceil(y2)))
        mask[iy1:iy2, ix1:ix2] = 1
    return natives_from_mask(image, mask, size, aspect)


def augment_native(sample: NativeSample, rng: Rng) -> tuple[np.ndarray, np.ndarray]:
    """Flips and quarter turns of a native sample, the same for its image and target:
    ((S, S, 3) uint8, (S, S) float32)."""
    return _flip_turn(sample.image, sample.mask, rng)


def _flip_turn(image: np.ndarray, weight: np.ndarray, rng: Rng) -> tuple[np.ndarray, np.ndarray]:
    """The same random flips and quarter turn of an image and its (H, W) weight or target
    (the surface has no fixed orientation); contiguous copies."""
    if rng.random() < 0.5:
        image, weight = image[:, ::-1], weight[:, ::-1]
    if rng.random() < 0.5:
        image, weight = image[::-1], weight[::-1]
    turns = int(rng.integers(4))
    image, weight = np.rot90(image, turns), np.rot90(weight, turns)
    return np.ascontiguousarray(image), np.ascontiguousarray(weight)


def _to_model_scale(
    image: np.ndarray, mask: np.ndarray, size: int, aspect: Aspect
) -> tuple[np.ndarray, np.ndarray]:
    sy, sx = model_scale(image.shape[0], image.shape[1], size, aspect)
    new_w, new_h = max(1, round(image.shape[1] * sx)), max(1, round(image.shape[0] * sy))
    shrink = new_w < image.shape[1] or new_h < image.shape[0]
    interp = cv2.INTER_AREA if shrink else cv2.INTER_LINEAR
    scaled = cv2.resize(image, (new_w, new_h), interpolation=interp)
    small = cv2.resize(mask.astype(np.float32), (new_w, new_h), interpolation=cv2.INTER_AREA)
    return np.asarray(scaled), np.asarray(small > 0.25)


def _cut(
    image: np.ndarray, region: np.ndarray, rect: tuple[int, int, int, int], feather_inside: bool
) -> DefectExemplar:
    """The region's bounding rect plus a margin; alpha feathered across the margin."""
    x1, y1, x2, y2 = rect
    pad_x, pad_y = max(2, round(MARGIN * (x2 - x1))), max(2, round(MARGIN * (y2 - y1)))
    top, left = max(0, y1 - pad_y), max(0, x1 - pad_x)
    bottom, right = min(image.shape[0], y2 + pad_y), min(image.shape[1], x2 + pad_x)
    patch = image[top:bottom, left:right].copy()
    alpha = region[top:bottom, left:right]
    if not feather_inside:  # a mask's edge is exact: grow it a little so the edge blends
        alpha = cv2.dilate(alpha, np.ones((3, 3), np.uint8))
    sigma = max(0.8, 0.5 * min(pad_x, pad_y))
    soft = cv2.GaussianBlur(alpha, (0, 0), sigmaX=sigma)
    alpha = np.maximum(soft, alpha) if not feather_inside else soft / max(float(soft.max()), 1e-6)
    return DefectExemplar(patch, np.clip(alpha, 0.0, 1.0).astype(np.float32))


def _fit_side(exemplar: DefectExemplar, size: int, rng: Rng) -> DefectExemplar:
    """Size jitter (log-uniform), shrunk where needed to fit MAX_SIDE_SHARE of S."""
    h, w = exemplar.alpha.shape
    lo, hi = SCALE_RANGE
    scale = float(np.exp(rng.uniform(np.log(lo), np.log(hi))))
    scale = min(scale, MAX_SIDE_SHARE * size / max(h, w))
    new_w, new_h = max(1, round(w * scale)), max(1, round(h * scale))
    if (new_w, new_h) == (w, h):
        return exemplar
    patch = cv2.resize(exemplar.patch, (new_w, new_h), interpolation=cv2.INTER_LINEAR)
    alpha = cv2.resize(exemplar.alpha, (new_w, new_h), interpolation=cv2.INTER_LINEAR)
    return DefectExemplar(np.asarray(patch), np.asarray(alpha, np.float32))


def augment(exemplar: DefectExemplar, size: int, rng: Rng) -> DefectExemplar:
    """Flips, quarter turns and size jitter (the surface has no fixed orientation)."""
    return _fit_side(DefectExemplar(*_flip_turn(exemplar.patch, exemplar.alpha, rng)), size, rng)


def paste(image: np.ndarray, exemplar: DefectExemplar, rng: Rng) -> tuple[np.ndarray, np.ndarray]:
    """Blend an (augmented) exemplar into an (S, S, 3) uint8 image at a random place.

    The patch's brightness is matched to the target: the mean of its surroundings (the ring
    where alpha < 0.5) is moved to the mean of the pixels it covers there, then its contrast
    around that mean is jittered by 0.8-1.2, so a crop from a darker image does not paste a
    dark square. Pixels where alpha is 0 are left as they were.

    Returns:
        (S, S, 3) uint8 image and (S, S) float32 mask (alpha >= 0.5) of the pasted defect.
    """
    size_y, size_x = image.shape[:2]
    h, w = exemplar.alpha.shape
    top, left = int(rng.integers(0, size_y - h + 1)), int(rng.integers(0, size_x - w + 1))
    target = image[top : top + h, left : left + w].astype(np.float32)
    patch = exemplar.patch.astype(np.float32)
    ring = exemplar.ring
    if ring.any():
        patch += target[ring].mean(axis=0) - patch[ring].mean(axis=0)
    mean = patch.mean(axis=(0, 1), keepdims=True)
    patch = mean + (patch - mean) * float(rng.uniform(0.8, 1.2))
    alpha = exemplar.alpha[..., None]
    blended = alpha * patch + (1.0 - alpha) * target
    out = image.copy()
    out[top : top + h, left : left + w] = np.clip(np.rint(blended), 0, 255).astype(np.uint8)
    mask = np.zeros((size_y, size_x), np.float32)
    mask[top : top + h, left : left + w] = (exemplar.alpha >= 0.5).astype(np.float32)
    return out, mask
