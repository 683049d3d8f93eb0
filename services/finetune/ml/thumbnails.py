"""Gallery media: JPEG thumbnails of decoded images and stored anomaly maps read back.

OpenCV is imported inside the function: the torch-free finetune API imports this module, and
only a gallery request that has to make a thumbnail needs it.
"""

from __future__ import annotations

import io

import numpy as np
from numpy.typing import NDArray

from shared.errors import InvalidInputError

THUMBNAIL_QUALITY = 85
# A map is a patch grid (tens of cells a side); anything far larger is not one.
MAX_MAP_CELLS = 4096 * 4096


def thumbnail_jpeg(image: NDArray[np.uint8], side: int, quality: int = THUMBNAIL_QUALITY) -> bytes:
    """The image shrunk so that its longer side is at most ``side`` pixels, as JPEG.

    Never enlarged: an image already within ``side`` is only re-encoded. Area interpolation,
    which averages the source pixels a thumbnail pixel covers (no moiré on textured steel).

    Args:
        image: uint8 (H, W, 3) RGB or (H, W) gray.
        side: the longest side of the thumbnail in pixels (>= 1).
        quality: JPEG quality 1-100.
    """
    import cv2

    height, width = image.shape[:2]
    scale = min(1.0, side / max(height, width))
    if scale < 1.0:
        size = (max(1, round(width * scale)), max(1, round(height * scale)))
        image = np.asarray(cv2.resize(image, size, interpolation=cv2.INTER_AREA), np.uint8)
    bgr = cv2.cvtColor(image, cv2.COLOR_RGB2BGR) if image.ndim == 3 else image
    ok, encoded = cv2.imencode(
        ".jpg", np.ascontiguousarray(bgr), [cv2.IMWRITE_JPEG_QUALITY, quality]
    )
    if not ok:
        raise ValueError("OpenCV could not encode the thumbnail as JPEG")
    return bytes(encoded.tobytes())


def read_map(raw: bytes, key: str) -> NDArray[np.float32]:
    """A stored ``.npy`` anomaly map as a 2-D float32 array (G, G); NaN and inf become the
    finite minimum, so the map can be drawn.

    Raises:
        InvalidInputError: not a 2-D numeric ``.npy`` of at most ``MAX_MAP_CELLS`` cells
            (code bad_map, naming ``key``).
    """
    try:
        array = np.load(io.BytesIO(raw), allow_pickle=False)
    except (ValueError, OSError, EOFError) as exc:
        raise InvalidInputError(f"{key} is not a .npy array: {exc}", code="bad_map") from exc
    if array.ndim == 3 and 1 in (array.shape[0], array.shape[-1]):
        array = array.reshape(array.shape[1:] if array.shape[0] == 1 else array.shape[:2])
    if array.ndim != 2 or array.size == 0 or array.size > MAX_MAP_CELLS:
        raise InvalidInputError(f"{key} holds shape {array.shape}, not a map", code="bad_map")
    if not np.issubdtype(array.dtype, np.number):
        raise InvalidInputError(f"{key} holds {array.dtype}, not numbers", code="bad_map")
    values: NDArray[np.float32] = np.asarray(array, dtype=np.float32).copy()
    finite = np.isfinite(values)
    if not finite.all():
        values[~finite] = float(values[finite].min()) if finite.any() else 0.0
    return values
