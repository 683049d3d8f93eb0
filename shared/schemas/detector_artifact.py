"""Seam: a published detector version (finetune writes it, inference serves it).

A detector version under ``models/<name>/<version>/`` holds::

    model.onnx    the exported graph; the only file inference runs (ONNX carries no code)
    classes.json  JSON list of class names, index = class id
    model.pt      the ultralytics checkpoint (for further training, never served)
    weights.pt    tensors only (``weights_only`` load): what later jobs start from
    config.yaml   the resolved training config
    metrics.json  validation metrics

Its manifest metadata is a ``DetectorMetadata``. Quantised versions carry ``model.onnx``,
``classes.json`` and ``metrics.json`` only.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from typing import Any

from pydantic import BaseModel, ConfigDict, Field

from shared.errors import InvalidInputError

ONNX_FILE = "model.onnx"
CLASSES_FILE = "classes.json"
PT_FILE = "model.pt"
WEIGHTS_FILE = "weights.pt"
CONFIG_FILE = "config.yaml"
METRICS_FILE = "metrics.json"
DETECTOR_FILES = (ONNX_FILE, CLASSES_FILE, PT_FILE, WEIGHTS_FILE, CONFIG_FILE, METRICS_FILE)
SERVED_FILES = (ONNX_FILE, CLASSES_FILE)


class DetectorMetadata(BaseModel):
    """Manifest metadata of a detector version: what serving and lineage read."""

    model_config = ConfigDict(extra="allow", allow_inf_nan=False)

    kind: str = Field(description="finetune, agdp, quantized, ...")
    job_id: str | None = None
    scale: str | None = Field(None, description="YOLOv8 scale n/s/m")
    imgsz: int | None = Field(None, ge=32, description="square input size the graph expects")
    classes: list[str] = Field(default_factory=list)
    metrics: dict[str, float] = Field(default_factory=dict)
    lineage: dict[str, Any] = Field(default_factory=dict)


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
