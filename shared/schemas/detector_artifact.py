"""Seam: a published detector version (finetune writes it, inference serves it).

A detector version under ``models/<name>/<version>/`` holds::

    model.onnx    the exported graph; the only file inference runs (ONNX carries no code)
    classes.json  JSON list of class names, index = class id
    model.pt      the ultralytics checkpoint (for further training, never served)
    weights.pt    tensors only (``weights_only`` load): what later jobs start from
    config.yaml   the resolved training config
    metrics.json  validation metrics

Its manifest metadata is a ``DetectorMetadata``. Quantised versions carry ``model.onnx``,
``classes.json`` and ``metrics.json`` only, and name their INT8 scheme (``int8_scheme``) in
the manifest metadata and in the ONNX metadata; ``lineage.quantized_from`` is the FP32 version.
"""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from typing import Any

from pydantic import BaseModel, ConfigDict, Field

from shared.errors import InvalidInputError
from shared.schemas.detector_families import DEFAULT_FAMILY

ONNX_FILE = "model.onnx"
CLASSES_FILE = "classes.json"
PT_FILE = "model.pt"
WEIGHTS_FILE = "weights.pt"
CONFIG_FILE = "config.yaml"
METRICS_FILE = "metrics.json"
DETECTOR_FILES = (ONNX_FILE, CLASSES_FILE, PT_FILE, WEIGHTS_FILE, CONFIG_FILE, METRICS_FILE)
SERVED_FILES = (ONNX_FILE, CLASSES_FILE)

INT8_KIND = "detector-int8"  # DetectorMetadata.kind of a quantised version
INT8_SCHEME_KEY = "int8_scheme"  # manifest metadata and ONNX metadata_props key
QUANTIZATION_KEY = "quantization"  # ONNX metadata_props key; INT8_QDQ on every INT8 export
INT8_QDQ = "int8-qdq"
# INT8 schemes (activations/weights of ONNX Runtime's QDQ quantisation). On x86-64 without
# VNNI, ORT's U8S8 kernels add pairs of u8*s8 products in saturating int16 (vpmaddubsw):
# 2 * 255 * 127 overflows, so full-range U8S8 is wrong there. With 7-bit weights (reduce
# range) a pair is at most 2 * 255 * 64 = 32640 and fits: U8S8_RR7 never saturates.
U8S8 = "u8s8"  # full-range int8 weights: exact only where the CPU has VNNI
U8S8_RR7 = "u8s8-rr7"  # weights in [-64, 64]: safe on every x86-64 CPU
UNRECORDED = "unrecorded"  # an INT8 version published before schemes were recorded (was U8S8)
NEEDS_VNNI = frozenset({U8S8, UNRECORDED})


class DetectorMetadata(BaseModel):
    """Manifest metadata of a detector version: what serving and lineage read."""

    model_config = ConfigDict(extra="allow", allow_inf_nan=False)

    kind: str = Field(description="finetune, agdp, quantized, ...")
    job_id: str | None = None
    family: str = Field(DEFAULT_FAMILY, description="detector family (detector_families)")
    backbone: str | None = Field(None, description="backbone name, for families that take one")
    scale: str | None = Field(None, description="YOLOv8 scale n/s/m")
    imgsz: int | None = Field(None, ge=32, description="square input size the graph expects")
    classes: list[str] = Field(default_factory=list)
    metrics: dict[str, float] = Field(default_factory=dict)
    lineage: dict[str, Any] = Field(default_factory=dict)
    int8_scheme: str | None = Field(None, description="INT8 versions: u8s8-rr7, ...")


def int8_scheme(metadata: Mapping[str, Any]) -> str | None:
    """The INT8 scheme that manifest or ONNX metadata records.

    Returns:
        The recorded scheme; ``UNRECORDED`` for an INT8 version that names none (published
        before schemes were recorded); None for a version that is not INT8.
    """
    scheme = metadata.get(INT8_SCHEME_KEY)
    if scheme:
        return str(scheme)
    if metadata.get("kind") == INT8_KIND or metadata.get(QUANTIZATION_KEY) == INT8_QDQ:
        return UNRECORDED
    return None


def classes_json(names: Sequence[str]) -> bytes:
    """``classes.json`` bytes for ``names`` (index = class id)."""
    return json.dumps(list(names)).encode()


def parse_classes(raw: bytes) -> dict[int, str]:
    """``classes.json`` as id -> name.

    Raises:
        InvalidInputError: not JSON, or not a list of strings (code ``bad_classes``).
    """
    try:
        value = json.loads(raw)
    except ValueError as exc:
        raise InvalidInputError(f"{CLASSES_FILE} is not JSON: {exc}", code="bad_classes") from exc
    if not isinstance(value, list) or not all(isinstance(v, str) for v in value):
        raise InvalidInputError(f"{CLASSES_FILE} must be a list of names", code="bad_classes")
    return dict(enumerate(value))
