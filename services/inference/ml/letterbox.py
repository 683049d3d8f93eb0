"""Letterbox resize/pad and the inverse box mapping, numerically as ultralytics' predict does it."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import cv2
import numpy as np
from numpy.typing import DTypeLike, NDArray

PAD_VALUE = 114
_SCALE = np.float32(255.0)


@dataclass(frozen=True)
class LetterboxGeometry:
    """Where an image lands inside the network input.

    Attributes:
        orig_hw: (height, width) of the source image.
        resized_hw: (height, width) after the aspect-preserving resize.
        pad_top: Rows of padding above the resized image.
        pad_left: Columns of padding left of the resized image.
        out_hw: (height, width) of the padded network input.
    """

    orig_hw: tuple[int, int]
    resized_hw: tuple[int, int]
    pad_top: int
    pad_left: int
    out_hw: tuple[int, int]

    @property
    def gain_xy(self) -> tuple[float, float]:
        """Per-axis resize factor (resized / original) after rounding the resized size."""
        return self.resized_hw[1] / self.orig_hw[1], self.resized_hw[0] / self.orig_hw[0]


def letterbox_geometry(
    orig_hw: tuple[int, int],
    target_hw: tuple[int, int],
    *,
    auto: bool = False,
    stride: int = 32,
) -> LetterboxGeometry:
    """Compute the resize and centre padding of ultralytics' ``LetterBox`` (scale-up allowed).

    Args:
        orig_hw: Source image (height, width).
        target_hw: Network input (height, width).
        auto: Pad only up to the next multiple of ``stride`` (ultralytics' "minimum rectangle",
            used by ``predict`` for dynamic-shape models) instead of up to ``target_hw``.
        stride: Model stride, for ``auto``.

    Returns:
        The geometry; ``out_hw`` equals ``target_hw`` unless ``auto``.
    """
    h, w = orig_hw
    r = min(target_hw[0] / h, target_hw[1] / w)
    # Python's round (half to even) on purpose: it is what ultralytics uses, so sizes agree.
    new_w, new_h = max(round(w * r), 1), max(round(h * r), 1)
    dw: float = target_hw[1] - new_w
    dh: float = target_hw[0] - new_h
    if auto:
        dw, dh = dw % stride, dh % stride
    dw, dh = dw / 2, dh / 2
    # The +-0.1 puts an odd pixel of padding at the bottom/right, as ultralytics does.
    top, bottom = round(dh - 0.1), round(dh + 0.1)
    left, right = round(dw - 0.1), round(dw + 0.1)
    return LetterboxGeometry(
        orig_hw=(h, w),
        resized_hw=(new_h, new_w),
        pad_top=top,
        pad_left=left,
        out_hw=(new_h + top + bottom, new_w + left + right),
    )


def _resized(image: NDArray[np.uint8], geometry: LetterboxGeometry) -> NDArray[np.uint8]:
    """``image`` checked against ``geometry`` and resized (bilinear) to its ``resized_hw``."""
    if image.shape[:2] != geometry.orig_hw:
        raise ValueError(f"image shape {image.shape[:2]} != geometry {geometry.orig_hw}")
    new_h, new_w = geometry.resized_hw
    if (new_h, new_w) == geometry.orig_hw:
        return image
    return np.asarray(
        cv2.resize(image, (new_w, new_h), interpolation=cv2.INTER_LINEAR), dtype=np.uint8
    )


def letterbox(image: NDArray[np.uint8], geometry: LetterboxGeometry) -> NDArray[np.uint8]:
    """Resize (bilinear) and pad (value 114) an image into its network-input canvas.

    Args:
        image: (H, W, 3) uint8, H and W equal to ``geometry.orig_hw``.
        geometry: From ``letterbox_geometry``.

    Returns:
        (out_h, out_w, 3) uint8.
    """
    resized = _resized(image, geometry)
    new_h, new_w = geometry.resized_hw
    out_h, out_w = geometry.out_hw
    canvas = np.full((out_h, out_w, 3), PAD_VALUE, dtype=np.uint8)
    top, left = geometry.pad_top, geometry.pad_left
    canvas[top : top + new_h, left : left + new_w] = resized
    return canvas


def to_input_tensor(
    canvases: Sequence[NDArray[np.uint8]], dtype: DTypeLike = np.float32
) -> NDArray[np.floating[Any]]:
    """Stack letterboxed RGB canvases into a network input.

    Args:
        canvases: B arrays (H, W, 3) uint8 of one shape.
        dtype: float32, or float16 for half-precision exports.

    Returns:
        (B, 3, H, W) array in [0, 1], contiguous.
    """
    batch = np.stack(canvases).transpose(0, 3, 1, 2).astype(np.float32)
    # Divide (not multiply by 1/255) so the values equal ultralytics' ``div_(255)`` bit for bit.
    np.divide(batch, 255.0, out=batch)
    return np.ascontiguousarray(batch, dtype=dtype)


def letterbox_into(
    image: NDArray[np.uint8], geometry: LetterboxGeometry, out: NDArray[np.float32]
) -> None:
    """Letterbox ``image`` straight into one slot of a float32 network input.

    The same values as ``to_input_tensor([letterbox(image, geometry)])[0]``, bit for bit,
    in one pass and without the uint8 canvas or the intermediate float copies: the batch
    tensor is the only large array written.

    Args:
        image: (H, W, 3) uint8, H and W equal to ``geometry.orig_hw``.
        geometry: From ``letterbox_geometry``.
        out: (3, out_h, out_w) float32, written in full.
    """
    if out.shape != (3, *geometry.out_hw) or out.dtype != np.float32:
        raise ValueError(f"out must be float32 (3, {geometry.out_hw}), got {out.dtype} {out.shape}")
    resized = _resized(image, geometry)
    new_h, new_w = geometry.resized_hw
    top, left = geometry.pad_top, geometry.pad_left
    if (new_h, new_w) != geometry.out_hw:  # padding: only the border needs the grey
        pad = np.float32(PAD_VALUE) / _SCALE
        out[:, :top] = pad
        out[:, top + new_h :] = pad
        out[:, top : top + new_h, :left] = pad
        out[:, top : top + new_h, left + new_w :] = pad
    # uint8 -> float32, then a float32 division: what ``to_input_tensor`` computes.
    np.divide(
        resized.transpose(2, 0, 1),
        _SCALE,
        out=out[:, top : top + new_h, left : left + new_w],
        dtype=np.float32,
    )


def scale_boxes(boxes: NDArray[np.float32], geometry: LetterboxGeometry) -> NDArray[np.float32]:
    """Map xyxy boxes from network-input pixels back to the source image, clipped to it.

    Args:
        boxes: (N, 4) float32 ``x1, y1, x2, y2`` in network-input pixels.
        geometry: The letterbox that produced the input.

    Returns:
        (N, 4) float32 in source-image pixels, within [0, W] x [0, H].
    """
    gain_x, gain_y = geometry.gain_xy
    out = boxes.astype(np.float32, copy=True)
    out[:, [0, 2]] -= geometry.pad_left
    out[:, [1, 3]] -= geometry.pad_top
    out[:, [0, 2]] /= gain_x
    out[:, [1, 3]] /= gain_y
    h, w = geometry.orig_hw
    out[:, [0, 2]] = out[:, [0, 2]].clip(0, w)
    out[:, [1, 3]] = out[:, [1, 3]].clip(0, h)
    return out
