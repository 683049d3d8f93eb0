"""Seam: the detector families the suite trains and serves, one row each, without torch.

A family is an architecture with its own training loop, checkpoint, ONNX graph and decode.
Every service reads this one table: finetune's API validates a job's ``config.family`` and
``config.backbone`` with it (422 for a backbone the family does not take), the finetune
worker loads the family's training backend from ``backend`` (imported only in the worker),
inference picks a decoder by the ONNX graph's ``output_layout`` metadata, and the pipeline
and the console list the rows. Adding a family is one row here and one backend module.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from types import MappingProxyType

from shared.errors import InvalidInputError
from shared.schemas.backbones import BACKBONES, Family

# ONNX metadata key (metadata_props) naming how a graph's outputs are laid out; inference
# reads it to choose a decoder. A graph without it is an ultralytics YOLO export.
OUTPUT_LAYOUT_KEY = "output_layout"
YOLO_RAW = "yolo-raw"  # output0 (B, 4 + nc, N): cx, cy, w, h, class scores; NMS after the graph
BOXES_LABELS_SCORES = "boxes-labels-scores"  # boxes (N, 4) xyxy, labels (N,) 1-based, scores


@dataclass(frozen=True)
class DetectorFamily:
    """One detector family.

    Attributes:
        name: the id jobs, artifacts and the API use (``config.family``).
        label: a human name for lists and reports.
        backbones: the backbone families (``shared.schemas.backbones.Family``) it builds on.
        default_backbone: the backbone name when a config names none (None: implied by the
            family's own scale, as YOLOv8's CSPDarknet is).
        uses_scale: whether ``config.scale`` (n/s/m) sizes the detector.
        default_imgsz: the square input side a CPU run uses when the config sets none.
        output_layout: the ONNX outputs its export writes (``OUTPUT_LAYOUT_KEY``).
        backend: ``"module:attribute"`` of the finetune worker's ``DetectorBackend``.
        int8: whether the INT8 quantiser supports its graph.
        summary: one sentence for ``/v1/detector-families`` and the console.
    """

    name: str
    label: str
    backbones: tuple[Family, ...]
    default_backbone: str | None
    uses_scale: bool
    default_imgsz: int
    output_layout: str
    backend: str
    int8: bool
    summary: str

    def takes(self, backbone: str) -> bool:
        """Whether ``backbone`` (a ``BACKBONES`` name) is one this family builds on."""
        spec = BACKBONES.get(backbone)
        return spec is not None and spec.family in self.backbones

    def backbone_names(self) -> tuple[str, ...]:
        """Every ``BACKBONES`` name this family takes (test-only ones included)."""
        return tuple(name for name in BACKBONES if self.takes(name))


YOLOV8 = "yolov8"
FASTER_RCNN = "faster-rcnn"
DEFAULT_FAMILY = YOLOV8

FAMILIES: Mapping[str, DetectorFamily] = MappingProxyType(
    {
        row.name: row
        for row in (
            DetectorFamily(
                name=YOLOV8,
                label="YOLOv8",
                backbones=("cspdarknet",),
                default_backbone=None,
                uses_scale=True,
                default_imgsz=640,
                output_layout=YOLO_RAW,
                backend="services.finetune.runtime.yolo_backend:TORCH",
                int8=True,
                summary="ultralytics YOLOv8 (n/s/m), CSPDarknet backbone; the paper's "
                "detector and the suite's default (agssp-spec §5).",
            ),
            DetectorFamily(
                name=FASTER_RCNN,
                label="Faster R-CNN",
                backbones=("resnet",),
                default_backbone="resnet50",
                uses_scale=False,
                default_imgsz=320,
                output_layout=BOXES_LABELS_SCORES,
                backend="services.finetune.runtime.faster_rcnn_backend:FASTER_RCNN",
                int8=False,
                summary="torchvision Faster R-CNN with an FPN on the suite's ResNet; the "
                "paper's headline detector, starts from an AGBP ResNet-50 (agssp-spec §5).",
            ),
        )
    }
)


def detector_family(name: str) -> DetectorFamily:
    """The row of ``name``.

    Raises:
        InvalidInputError: no such family (code ``unknown_detector``).
    """
    try:
        return FAMILIES[name]
    except KeyError:
        raise InvalidInputError(
            f"unknown detector family {name!r}; choose one of {sorted(FAMILIES)}",
            code="unknown_detector",
        ) from None


def check_backbone(family: str, backbone: str | None) -> str | None:
    """The backbone a ``family`` run builds on: ``backbone`` checked, or the family's default.

    Raises:
        InvalidInputError: unknown family or backbone, or one the family does not take
            (code ``backbone_incompatible``).
    """
    row = detector_family(family)
    if backbone is None:
        return row.default_backbone
    if backbone not in BACKBONES:
        raise InvalidInputError(
            f"unknown backbone {backbone!r}; {row.label} takes {list(row.backbone_names())}",
            code="unknown_backbone",
        )
    if not row.takes(backbone):
        raise InvalidInputError(
            f"{row.label} does not take backbone {backbone!r} ({BACKBONES[backbone].family}); "
            f"it takes {list(row.backbone_names())}",
            code="backbone_incompatible",
        )
    return backbone


def agbp_backbone(family: str, scale: str) -> str:
    """The backbone AGBP pretrains for a ``family`` detector of ``scale``: the family's
    default, else its backbone of that scale (YOLOv8-n: ``yolov8n``).

    Raises:
        InvalidInputError: no backbone of the family fits that scale (code scale_mismatch).
    """
    row = detector_family(family)
    if row.default_backbone is not None:
        return row.default_backbone
    for name, spec in BACKBONES.items():
        if row.takes(name) and spec.detector_scale == scale and not spec.test_only:
            return name
    raise InvalidInputError(
        f"{row.label} has no backbone of scale {scale!r}", code="scale_mismatch"
    )
