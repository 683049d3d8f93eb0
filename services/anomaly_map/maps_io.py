"""Map files: ``.npy`` encoding, the JSON map payload, and the dataset-map output layout.

Dataset map jobs write, under their output prefix ``<out>`` (default ``maps/<category>/<job id>/``):

* ``<out>/maps/<relative path without extension>.npy`` per image: float32, 2-D (G, G), the
  raw fused KeAD map M at patch-grid resolution (agssp-spec §1.9: no smoothing, no
  normalisation, values ~0..2 with references, 0..1 without). The relative path is the image
  key below the input prefix, so a flat prefix gives ``<out>/maps/<stem>.npy`` with the FULL
  stem (``a.b.jpg`` -> ``a.b.npy``; the reference cut at the first dot, agssp-spec §6.2).
* ``<out>/scores.csv``: header ``image_key,image_score,zero_shot_score,map_max``, one row per
  image in key order.
* ``<out>/manifest.json``: category, category_version, model, mode, grid, count, ``maps``
  (image key -> map key), ``skipped`` (image key -> reason); written last, so its presence
  means the output is complete.
"""

from __future__ import annotations

import base64
import csv
import io
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import PurePosixPath
from typing import Any

import numpy as np

from shared.errors import InvalidInputError

IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png", ".bmp", ".tif", ".tiff")
SCORES_HEADER = ("image_key", "image_score", "zero_shot_score", "map_max")
MAPS_DIR = "maps/"
SCORES_NAME = "scores.csv"
MANIFEST_NAME = "manifest.json"


def encode_npy(array: np.ndarray) -> bytes:
    """``.npy`` bytes of a float32 little-endian array (never pickled)."""
    buffer = io.BytesIO()
    np.save(buffer, np.ascontiguousarray(array, dtype="<f4"), allow_pickle=False)
    return buffer.getvalue()


def decode_npy(data: bytes) -> np.ndarray:
    """Inverse of ``encode_npy``; refuses pickled object arrays."""
    return np.asarray(np.load(io.BytesIO(data), allow_pickle=False))


def map_payload(array: np.ndarray, encoding: str) -> dict[str, Any]:
    """JSON form of a map: base64 of float32 little-endian bytes (row-major), or nested lists."""
    values = np.ascontiguousarray(array, dtype="<f4")
    payload: dict[str, Any] = {
        "encoding": encoding,
        "dtype": "float32",
        "byte_order": "little",
        "shape": list(values.shape),
    }
    if encoding == "base64":
        payload["data"] = base64.b64encode(values.tobytes()).decode("ascii")
    else:
        payload["data"] = values.tolist()
    return payload


def is_image_key(key: str) -> bool:
    return PurePosixPath(key).suffix.lower() in IMAGE_SUFFIXES


def relative_stem(key: str, prefix: str) -> str:
    """Key below ``prefix`` without its extension: ``p/sub/a.b.jpg`` -> ``sub/a.b``."""
    relative = key[len(prefix) :] if key.startswith(prefix) else key
    path = PurePosixPath(relative)
    return str(path.with_suffix("")) if path.suffix else relative


def map_keys(image_keys: Sequence[str], prefix: str, output_prefix: str) -> dict[str, str]:
    """Map key of every image; refuses two images that would write the same map.

    Raises:
        InvalidInputError: ``map_name_collision`` naming the clashing images.
    """
    out: dict[str, str] = {}
    owners: dict[str, str] = {}
    for key in image_keys:
        target = f"{output_prefix}{MAPS_DIR}{relative_stem(key, prefix)}.npy"
        if target in owners:
            raise InvalidInputError(
                f"images {owners[target]!r} and {key!r} would both write {target!r}; "
                "keep one image per name (extension aside)",
                code="map_name_collision",
            )
        owners[target] = key
        out[key] = target
    return out


@dataclass(frozen=True)
class ScoreRow:
    """One line of ``scores.csv``."""

    image_key: str
    image_score: float
    zero_shot_score: float
    map_max: float


def scores_csv(rows: Iterable[ScoreRow]) -> bytes:
    buffer = io.StringIO()
    writer = csv.writer(buffer, lineterminator="\n")
    writer.writerow(SCORES_HEADER)
    for row in sorted(rows, key=lambda r: r.image_key):
        writer.writerow(
            [
                row.image_key,
                f"{row.image_score:.6f}",
                f"{row.zero_shot_score:.6f}",
                f"{row.map_max:.6f}",
            ]
        )
    return buffer.getvalue().encode()


def read_scores_csv(data: bytes) -> list[ScoreRow]:
    reader = csv.DictReader(io.StringIO(data.decode()))
    return [
        ScoreRow(
            r["image_key"],
            float(r["image_score"]),
            float(r["zero_shot_score"]),
            float(r["map_max"]),
        )
        for r in reader
    ]
