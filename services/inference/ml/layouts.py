"""Which detector runs an ONNX export: chosen by the ``output_layout`` its metadata names.

Every detector family's export records its layout (``shared.schemas.detector_families``);
an export without one is an ultralytics YOLO export, as every version published before
families existed is. Adding a layout is one row in ``DETECTORS``.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any, Literal, Protocol

from services.inference.ml.boxes_detector import BoxesOnnxDetector
from services.inference.ml.detections import Detector
from services.inference.ml.onnx_detector import (
    Backend,
    OnnxDetector,
    Precision,
    SpinMode,
    open_session,
)
from shared.errors import InvalidInputError
from shared.schemas.detector_families import BOXES_LABELS_SCORES, OUTPUT_LAYOUT_KEY, YOLO_RAW


class ExportDetector(Detector, Protocol):
    """A detector on an ONNX export: its metadata and input size besides detection."""

    @property
    def metadata(self) -> Mapping[str, str]:
        """The export's raw ONNX metadata."""

    @property
    def imgsz(self) -> tuple[int, int]:
        """Network input (height, width)."""


def _yolo(
    path: Path, session: Any, names: Mapping[int, str] | None, **options: Any
) -> ExportDetector:
    return OnnxDetector(path, session=session, names=names, **options)


def _boxes(
    path: Path, session: Any, names: Mapping[int, str] | None, **options: Any
) -> ExportDetector:
    return BoxesOnnxDetector(session, names=names)


DETECTORS: dict[str, Callable[..., ExportDetector]] = {
    YOLO_RAW: _yolo,
    BOXES_LABELS_SCORES: _boxes,
}


def output_layout(session: Any) -> str:
    """The layout an open session's graph records (``yolo-raw`` when it records none)."""
    return str(session.get_modelmeta().custom_metadata_map.get(OUTPUT_LAYOUT_KEY, YOLO_RAW))


def open_onnx_detector(
    path: str | Path,
    *,
    device: str = "auto",
    intra_op_threads: int | None = None,
    names: Mapping[int, str] | None = None,
    imgsz: int | tuple[int, int] | None = None,
    backend: Backend = "onnxruntime",
    precision: Precision = "fp32",
    openvino_hint: Literal["throughput", "latency"] = "throughput",
    spinning: SpinMode = "always",
) -> ExportDetector:
    """The detector for ``path``'s layout, on one session opened with these settings.

    ``imgsz`` applies to the YOLO layout (a boxes graph has its own fixed input side).

    Raises:
        InvalidInputError: an unreadable file, or a layout no detector here reads.
    """
    session = open_session(
        Path(path), device=device, intra_op_threads=intra_op_threads, backend=backend,
        precision=precision, openvino_hint=openvino_hint, spinning=spinning,
    )  # fmt: skip
    layout = output_layout(session)
    if layout not in DETECTORS:
        raise InvalidInputError(
            f"{path}: output layout {layout!r} is not one this service reads ({sorted(DETECTORS)})",
            code="unknown_output_layout",
        )
    return DETECTORS[layout](Path(path), session, names, imgsz=imgsz)
