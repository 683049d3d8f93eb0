"""What a gallery draws: thumbnails (made once, then read from the store) and anomaly maps.

Thumbnails come in a few fixed sides, so each image has at most that many cached; the large
view asks for the biggest, a page for its thumbnails inlined in its own answer. A map goes out as the float grid the anomaly-map API answers with
(base64 of little-endian float32, row-major), so the console colours it as Inspect does.
"""

from __future__ import annotations

import base64
from concurrent.futures import ThreadPoolExecutor
from typing import Literal

import numpy as np
from pydantic import BaseModel

from services.finetune.ml.thumbnails import read_map, thumbnail_jpeg
from services.finetune.stores.pools import read_map_bytes
from services.finetune.stores.thumbnails import ThumbnailStore
from services.finetune.usecases.gallery_pages import GalleryItem, GalleryPage
from shared.errors import InvalidInputError, SuiteError
from shared.imaging.intake import ImageLimits, decode_object
from shared.schemas.dataset_maps import is_image_key
from shared.storage.base import ObjectStore, validate_key

THUMBNAIL_SIDES: tuple[int, ...] = (128, 256, 512, 1024)
INLINE_SIDES: tuple[int, ...] = (128, 256, 512)  # a page of 200 stays a few MB at most
_THREADS = 8  # store reads and OpenCV resizes, both of which release the GIL


class MapPayload(BaseModel):
    """One anomaly map: (H, W) float32 values with their range."""

    key: str
    shape: tuple[int, int]
    min: float
    max: float
    encoding: Literal["base64"] = "base64"
    dtype: Literal["float32"] = "float32"
    byte_order: Literal["little"] = "little"
    data: str


def thumbnail(thumbs: ThumbnailStore, key: str, side: int, limits: ImageLimits) -> bytes:
    """The JPEG thumbnail of the image at ``key``, longer side at most ``side`` pixels.

    Raises:
        InvalidInputError: an invalid key (invalid_key), not an image name (not_an_image), a
            side not in THUMBNAIL_SIDES (invalid_side), or bytes that do not decode.
        NotFoundError: nothing stored at ``key`` (image_not_found).
    """
    validate_key(key)
    if not is_image_key(key):
        raise InvalidInputError(f"{key} does not name an image file", code="not_an_image")
    if side not in THUMBNAIL_SIDES:
        raise InvalidInputError(f"side must be one of {THUMBNAIL_SIDES}", code="invalid_side")

    def make(raw: bytes) -> bytes:
        return thumbnail_jpeg(decode_object(raw, limits, key).array, side)

    return thumbs.get_or_make(key, side, make)


def with_thumbnails(
    thumbs: ThumbnailStore, page: GalleryPage, side: int, limits: ImageLimits
) -> GalleryPage:
    """``page`` with each item's thumbnail inlined as a ``data:`` URI: a page of a hundred
    images in one answer instead of a hundred. Thumbnails are read (or made, the first time)
    on a few threads; an image that cannot be shown keeps ``thumbnail`` None (its own
    thumbnail route names the reason).

    Raises:
        InvalidInputError: ``side`` not in INLINE_SIDES (invalid_side).
    """
    if side not in INLINE_SIDES:
        raise InvalidInputError(
            f"inline thumbnails come in sides {INLINE_SIDES}", code="invalid_side"
        )

    def inline(item: GalleryItem) -> GalleryItem:
        try:
            body = thumbnail(thumbs, item.image_key, side, limits)
        except SuiteError:
            return item
        uri = "data:image/jpeg;base64," + base64.b64encode(body).decode("ascii")
        return item.model_copy(update={"thumbnail": uri})

    with ThreadPoolExecutor(max_workers=_THREADS) as pool:
        items = list(pool.map(inline, page.items))
    return page.model_copy(update={"items": items})


def anomaly_map(store: ObjectStore, key: str) -> MapPayload:
    """The stored map at ``key`` as its float grid.

    Raises:
        InvalidInputError: an invalid key, not a ``.npy`` (not_a_map), not a 2-D map (bad_map).
        NotFoundError: nothing stored at ``key`` (map_not_found).
    """
    values = read_map(read_map_bytes(store, validate_key(key)), key)
    little = np.ascontiguousarray(values, dtype="<f4")
    return MapPayload(
        key=key,
        shape=(int(values.shape[0]), int(values.shape[1])),
        min=float(values.min()),
        max=float(values.max()),
        data=base64.b64encode(little.tobytes()).decode("ascii"),
    )
