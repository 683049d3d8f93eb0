"""Image-file helpers shared by the dataset importers (sizes, accepted suffixes, hashes)."""

from __future__ import annotations

import hashlib
from collections.abc import Callable
from dataclasses import dataclass
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


def read_bgr(path: Path) -> np.ndarray:
    """Decode an image file to BGR uint8 (H, W, 3); gray images are expanded to 3 channels."""
    import cv2  # here, not at import: the torch-free API imports this module

    data = np.fromfile(path, dtype=np.uint8) if path.is_file() else np.empty(0, np.uint8)
    image = cv2.imdecode(data, cv2.IMREAD_COLOR) if data.size else None
    if image is None:
        raise InvalidInputError(f"{path}: missing or not a decodable image")
    return image


def content_hash(data: bytes) -> str:
    """SHA-256 hex digest of a file's bytes; equal digests mark byte-identical duplicates."""
    return hashlib.sha256(data).hexdigest()


NEAR_DUPLICATE_BITS = 6  # dHash candidates (of 64 bits): a re-encoded or resized picture
_BUCKET_LIMIT = 2000  # a band this crowded (e.g. thousands of flat frames) is skipped
THUMB_SIDE = 32
# A candidate pair is one picture when the detail of its 32 x 32 thumbnails (each less its
# own 5 x 5 blur, so lighting and exposure drop out) differs by at most this share of that
# detail's contrast, plus a floor for flat frames: two photos of one texture under one
# light often share a dHash (its bits follow the lighting), never their detail.
_THUMB_SHARE, _THUMB_FLOOR = 0.35, 1.0


@dataclass(frozen=True)
class Fingerprint:
    """What near-duplicate search keeps of an image: its dHash and a grey thumbnail."""

    dhash: int
    detail: np.ndarray  # (THUMB_SIDE, THUMB_SIDE) float16: the thumbnail less its blur


def fingerprint(pixels: np.ndarray) -> Fingerprint:
    """The dHash (9 x 8 grey, bit = brighter right) and the thumbnail's detail."""
    import cv2

    grey = pixels if pixels.ndim == 2 else cv2.cvtColor(pixels, cv2.COLOR_RGB2GRAY)
    small = cv2.resize(grey, (9, 8), interpolation=cv2.INTER_AREA).astype(np.int16)
    bits = (small[:, 1:] > small[:, :-1]).astype(np.uint8).reshape(-1)
    side = (THUMB_SIDE, THUMB_SIDE)
    thumb = cv2.resize(grey, side, interpolation=cv2.INTER_AREA).astype(np.float32)
    detail = (thumb - cv2.blur(thumb, (5, 5))).astype(np.float16)
    return Fingerprint(int.from_bytes(np.packbits(bits).tobytes(), "big"), detail)


def same_picture(a: Fingerprint, b: Fingerprint, max_bits: int = NEAR_DUPLICATE_BITS) -> bool:
    """Whether two fingerprints are one picture (re-encoded, resized, or re-exposed)."""
    if (a.dhash ^ b.dhash).bit_count() > max_bits:
        return False
    da, db = a.detail.astype(np.float32), b.detail.astype(np.float32)
    contrast = (float(np.abs(da).mean()) + float(np.abs(db).mean())) / 2
    difference = float(np.abs(da - db).mean())
    return difference <= max(_THUMB_FLOOR, _THUMB_SHARE * contrast)


def duplicate_groups(
    exact: dict[str, str], prints: dict[str, Fingerprint], max_bits: int = NEAR_DUPLICATE_BITS
) -> dict[str, str]:
    """``file name -> group key``: byte-identical files (``exact``, content hashes) and one
    picture stored twice (``same_picture`` on their fingerprints) share a key.

    Candidates come from ``max_bits + 1`` bands of the dHash (two hashes that close agree
    on at least one band), so the cost stays near linear in the number of images.
    """
    names = sorted(exact)
    parent = {n: n for n in names}

    def find(name: str) -> str:
        while parent[name] != name:
            parent[name] = parent[parent[name]]
            name = parent[name]
        return name

    def union(a: str, b: str) -> None:
        ra, rb = find(a), find(b)
        if ra != rb:
            parent[max(ra, rb)] = min(ra, rb)

    by_content: dict[str, str] = {}
    for name in names:
        union(name, by_content.setdefault(exact[name], name))
    hashes = {name: fp.dhash for name, fp in prints.items()}
    for bucket in _bands(hashes, max_bits + 1):
        _union_close(bucket, prints, max_bits, union)
    return {name: exact[find(name)] for name in names}


def _bands(hashes: dict[str, int], count: int) -> list[list[str]]:
    width = -(-64 // count)
    buckets: dict[tuple[int, int], list[str]] = {}
    for name, value in hashes.items():
        for band in range(count):
            key = (band, (value >> (band * width)) & ((1 << width) - 1))
            buckets.setdefault(key, []).append(name)
    return [b for b in buckets.values() if 1 < len(b) <= _BUCKET_LIMIT]


def _union_close(
    bucket: list[str],
    prints: dict[str, Fingerprint],
    max_bits: int,
    union: Callable[[str, str], None],
) -> None:
    for i, a in enumerate(bucket):
        for b in bucket[i + 1 :]:
            if same_picture(prints[a], prints[b], max_bits):
                union(a, b)
