"""Output images: PNG encoding and anomaly heat-map overlays for display."""

from __future__ import annotations

import cv2
import numpy as np
import numpy.typing as npt


def encode_png(array: npt.NDArray[np.uint8]) -> bytes:
    """Encode an 8-bit image as PNG.

    Args:
        array: uint8, (H, W) gray, (H, W, 3) RGB or (H, W, 4) RGBA.

    Returns:
        The PNG file bytes.

    Raises:
        ValueError: The array is not uint8, empty, or of an unsupported shape.
    """
    if array.dtype != np.uint8:
        raise ValueError(f"expected a uint8 array, got {array.dtype}")
    if array.ndim not in (2, 3) or array.shape[0] == 0 or array.shape[1] == 0:
        raise ValueError(f"expected a non-empty (H, W[, C]) array, got shape {array.shape}")
    channels = 1 if array.ndim == 2 else array.shape[2]
    if channels not in (1, 3, 4):
        raise ValueError(f"expected 1, 3 or 4 channels, got {channels}")
    # OpenCV writes BGR(A) order.
    conversion = {1: None, 3: cv2.COLOR_RGB2BGR, 4: cv2.COLOR_RGBA2BGRA}[channels]
    ordered = array if conversion is None else cv2.cvtColor(array, conversion)
    ok, encoded = cv2.imencode(".png", np.ascontiguousarray(ordered))
    if not ok:
        raise ValueError("OpenCV could not encode the array as PNG")
    return bytes(encoded.tobytes())


def normalise_for_display(anomaly_map: npt.NDArray[np.floating]) -> npt.NDArray[np.float32]:
    """Min-max normalise one anomaly map to 0..1 for display only.

    Scores are relative to this image: a clean image still shows its hottest patch in red.
    Non-finite values become 0; a constant map becomes all 0.

    Args:
        anomaly_map: float, (h, w).

    Returns:
        float32, (h, w), values in [0, 1].
    """
    values = np.asarray(anomaly_map, dtype=np.float64)
    finite = np.isfinite(values)
    if not finite.any():
        return np.zeros(values.shape, dtype=np.float32)
    low = float(values[finite].min())
    span = float(values[finite].max()) - low
    scaled = (values - low) / span if span > 0 else np.zeros_like(values)
    return np.where(finite, scaled, 0.0).astype(np.float32)


def heatmap_overlay(
    image_rgb: npt.NDArray[np.uint8],
    anomaly_map: npt.NDArray[np.floating],
    alpha: float = 0.5,
) -> npt.NDArray[np.uint8]:
    """Blend a JET-coloured anomaly map over an image.

    The map is normalised per image (:func:`normalise_for_display`), resized bilinearly to
    the image, coloured with OpenCV's JET map (blue = low, red = high) and blended as
    ``(1 - alpha) * image + alpha * heat``.

    Args:
        image_rgb: uint8, (H, W, 3) RGB.
        anomaly_map: float, (h, w); any size, any range.
        alpha: Weight of the heat map, in [0, 1].

    Returns:
        uint8, (H, W, 3) RGB.

    Raises:
        ValueError: On a wrong shape, dtype or alpha.
    """
    if image_rgb.dtype != np.uint8 or image_rgb.ndim != 3 or image_rgb.shape[2] != 3:
        raise ValueError(
            f"expected a uint8 (H, W, 3) image, got {image_rgb.dtype} {image_rgb.shape}"
        )
    if anomaly_map.ndim != 2 or 0 in anomaly_map.shape:
        raise ValueError(f"expected a non-empty (h, w) anomaly map, got shape {anomaly_map.shape}")
    if not 0.0 <= alpha <= 1.0:
        raise ValueError(f"alpha must be in [0, 1], got {alpha}")
    height, width = image_rgb.shape[:2]
    scores = cv2.resize(
        normalise_for_display(anomaly_map), (width, height), interpolation=cv2.INTER_LINEAR
    )
    levels = np.clip(np.rint(np.asarray(scores) * 255.0), 0, 255).astype(np.uint8)
    heat_rgb = cv2.cvtColor(cv2.applyColorMap(levels, cv2.COLORMAP_JET), cv2.COLOR_BGR2RGB)
    blended = cv2.addWeighted(np.ascontiguousarray(image_rgb), 1.0 - alpha, heat_rgb, alpha, 0.0)
    return np.asarray(blended, dtype=np.uint8)


def render_heatmap_overlay(
    image_rgb: npt.NDArray[np.uint8],
    anomaly_map: npt.NDArray[np.floating],
    alpha: float = 0.5,
) -> bytes:
    """Render :func:`heatmap_overlay` as PNG bytes.

    Args:
        image_rgb: uint8, (H, W, 3) RGB.
        anomaly_map: float, (h, w).
        alpha: Weight of the heat map, in [0, 1].

    Returns:
        The PNG file bytes of the (H, W, 3) overlay.
    """
    return encode_png(heatmap_overlay(image_rgb, anomaly_map, alpha))
