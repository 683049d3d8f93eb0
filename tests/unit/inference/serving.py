"""Helpers for the inference service tests: registry publishing, settings, images, a fake detector."""

from __future__ import annotations

import io
import threading
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image

from services.inference.config import InferenceSettings
from services.inference.ml.detections import Detections, DetectParams, params_per_image
from shared.config import AuthSettings, CommonSettings, PathSettings
from shared.ml.cpu_features import parse_cpuinfo
from shared.schemas.detector_artifact import CLASSES_FILE, METRICS_FILE, ONNX_FILE, classes_json
from shared.storage.artifacts import ArtifactStore
from shared.storage.base import ObjectStore

MODEL = "detector"
GUARD_S = 30.0  # only stops a hung test
# An x86-64 server with AVX2 and no AVX-512 or VNNI, as issue 27's AMD EPYC host, read from
# its /proc/cpuinfo (only the first processor's entry counts).
AVX2_ONLY = parse_cpuinfo(
    "processor\t: 0\nvendor_id\t: AuthenticAMD\nmodel name\t: AMD EPYC Processor\n"
    "flags\t\t: fpu sse sse2 ssse3 sse4_1 sse4_2 popcnt aes avx f16c fma bmi1 avx2 bmi2\n"
    "\nprocessor\t: 1\nflags\t\t: avx512_vnni (a second entry is not read)\n",
    "x86_64",
)


def publish(
    store: ObjectStore,
    version: str,
    model: Path | bytes,
    *,
    name: str = MODEL,
    classes: Sequence[str] | None = None,
    stage: str | None = "production",
) -> None:
    """Publish a detector the way the finetune service does (the detector-artifact seam)."""
    files: dict[str, Path | bytes] = {ONNX_FILE: model}
    if classes is not None:
        files[CLASSES_FILE] = classes_json(classes)
    files[METRICS_FILE] = b"{}"
    artifacts = ArtifactStore(store)
    artifacts.publish(name, files, version=version)
    if stage is not None:
        artifacts.promote(name, version, stage)


def settings_for(
    tmp_path: Path, *, api_keys: list[str] | None = None, **fields: Any
) -> InferenceSettings:
    """Settings for one test: state under ``tmp_path``; the poller effectively off."""
    common = CommonSettings(
        paths=PathSettings(home=tmp_path / "home"),
        auth=AuthSettings(api_keys=api_keys or []),
    )
    values: dict[str, Any] = {"model_name": MODEL, "poll_interval_s": 3600.0, **fields}
    return InferenceSettings(common=common, **values)


def encode(image: np.ndarray, fmt: str = "PNG") -> bytes:
    """Encode an RGB array (PNG is lossless: the decoded pixels equal ``image``)."""
    out = io.BytesIO()
    Image.fromarray(image).save(out, format=fmt)
    return out.getvalue()


class FakeDetector:
    """Answers one full-image box per image, tagged by ``score``; records its batches.

    ``gate`` (when given) holds every batch until it is set, to build up a queue.
    """

    def __init__(
        self, score: float = 0.9, *, gate: threading.Event | None = None, n_classes: int = 3
    ) -> None:
        self.score = score
        self.gate = gate
        self.batches: list[int] = []
        self._names = {i: f"class{i}" for i in range(n_classes)}

    @property
    def names(self) -> Mapping[int, str]:
        return self._names

    def detect(
        self, images: Sequence[np.ndarray], params: DetectParams | Sequence[DetectParams] = ()
    ) -> list[Detections]:
        if self.gate is not None:
            self.gate.wait(GUARD_S)
        self.batches.append(len(images))
        per_image = params_per_image(params or DetectParams(), len(images))
        out = []
        for image, p in zip(images, per_image, strict=True):
            h, w = image.shape[:2]
            keep = p.classes is None or 1 in p.classes
            boxes = np.array([[0, 0, w, h]] if keep else np.zeros((0, 4)), np.float32)
            out.append(
                Detections(
                    boxes,
                    np.full(len(boxes), self.score, np.float32),
                    np.ones(len(boxes), np.int64),
                    (h, w),
                )
            )
        return out
