"""Map files and map payloads: ``.npy`` encoding and the JSON form of a map.

The dataset-map output layout (map keys, the scores file, the manifest) is the seam in
``shared.schemas.dataset_maps``; this module only encodes the arrays written there and
returned by the HTTP API.
"""

from __future__ import annotations

import base64
import io
from typing import Any

import numpy as np


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
