"""Image-file helpers shared by the dataset importers (sizes, accepted suffixes, hashes)."""

from __future__ import annotations

import hashlib
from pathlib import Path

import numpy as np

from shared.errors import InvalidInputError

# What ultralytics' loaders accept and our importers look for (lower-case).
IMAGE_SUFFIXES = frozenset({".jpg", ".jpeg", ".png", ".bmp", ".tif", ".tiff", ".webp"})


def require_dir(path: Path, what: str) -> Path:
    """``path`` if it is a folder, else ``InvalidInputError`` naming ``what`` it should hold."""
    if not path.is_dir():
        raise InvalidInputError(f"{what} folder {path} does not exist")
    return path


def read_image_size(path: Path) -> tuple[int, int]:
    """``(width, height)`` of an image file.

    Raises:
        InvalidInputError: the file is missing or not a decodable image.
    """
    import cv2  # here, not at import: the torch-free API imports the suffixes and hashes

    try:
        data = np.frombuffer(path.read_bytes(), dtype=np.uint8)
    except OSError as exc:
        raise InvalidInputError(f"{path}: cannot read image ({exc})") from exc
    image = cv2.imdecode(data, cv2.IMREAD_UNCHANGED) if data.size else None
    if image is None:
        raise InvalidInputError(f"{path}: not a decodable image")
    height, width = image.shape[:2]
    return int(width), int(height)


def content_hash(data: bytes) -> str:
    """SHA-256 hex digest of a file's bytes; equal digests mark byte-identical duplicates."""
    return hashlib.sha256(data).hexdigest()
