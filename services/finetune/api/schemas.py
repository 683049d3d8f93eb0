"""Public request and response schemas of the finetune API."""

from __future__ import annotations

from datetime import datetime
from typing import Any

from pydantic import BaseModel, ConfigDict, Field

from services.finetune.params import (
    AgdpJobParams,
    DatasetImportParams,
    EvaluationParams,
    FinetuneJobParams,
)
from services.finetune.stores.models import ModelDetail, ModelSummary, VersionInfo


class DatasetImportRequest(DatasetImportParams):
    """Import a VOC, COCO or YOLO dataset stored under a prefix as a new dataset version."""

    model_config = ConfigDict(
        extra="forbid",
        json_schema_extra={
            "examples": [
                {
                    "name": "neu-det",
                    "prefix": "uploads/neu-det/",
                    "format": "voc",
                    "images": "images",
                    "annotations": "annotations",
                    "val_fraction": 0.1,
                    "seed": 2024,
                    "mini": [10, 30],
                }
            ]
        },
    )


class AgdpJobRequest(AgdpJobParams):
    """AGDP: one-class YOLOv8 on pseudo-defect boxes from an AGBP backbone (agssp-spec §5.2)."""

    model_config = ConfigDict(
        extra="forbid",
        json_schema_extra={
            "examples": [
                {
                    "images_prefix": "datasets/steel/images/",
                    "labels_prefix": "pseudo/steel/20260101T120000-1a2b3c4d/",
                    "backbone_artifact": "agbp-yolov8s:20260101T090000-9f8e7d6c",
                    "scale": "s",
                    "config": {"epochs": 10, "batch": 32},
                    "frozen": "backbone",
                }
            ]
        },
    )


class FinetuneJobRequest(FinetuneJobParams):
    """Finetune YOLOv8 on a stored dataset from an init (agssp-spec §5.3-5.4)."""

    model_config = ConfigDict(
        extra="forbid",
        json_schema_extra={
            "examples": [
                {
                    "dataset": "neu-det:20260101T100000-0a1b2c3d",
                    "split": "train",
                    "init": {"kind": "agdp", "artifact": "agdp-s:20260101T130000-2b3c4d5e"},
                    "scale": "s",
                    "config": {"epochs": 300, "imgsz": 640},
                    "model_name": "neu-det-yolov8s",
                }
            ]
        },
    )


class EvaluationRequest(EvaluationParams):
    """Evaluate a registered model version on a stored dataset split (COCO mAP)."""

    model_config = ConfigDict(extra="forbid")


class DatasetSummary(BaseModel):
    name: str
    latest: str | None
    versions: int


class DatasetList(BaseModel):
    items: list[DatasetSummary]


class DatasetVersion(BaseModel):
    """A stored version: what its manifest says (counts, classes, split sizes, source)."""

    model_config = ConfigDict(extra="allow")

    version: str
    classes: list[str]
    images: int
    boxes: int
    splits: dict[str, int]


class DatasetDetail(BaseModel):
    name: str
    latest: str | None
    versions: list[DatasetVersion]


class ModelVersion(BaseModel):
    """One published version with its metrics summary, lineage, stages and evaluations."""

    version: str
    created_at: datetime
    kind: str | None
    metrics: dict[str, Any]
    lineage: dict[str, Any]
    files: list[str]
    stages: list[str]
    evaluations: list[str] = Field(description="keys of saved evaluation documents")

    @classmethod
    def of(cls, info: VersionInfo) -> ModelVersion:
        return cls(**info.__dict__)


class ModelVersionDetail(ModelVersion):
    evaluation_results: list[dict[str, Any]]


class ModelSummaryResponse(BaseModel):
    name: str
    latest: str | None
    versions: int
    stages: dict[str, str]
    kind: str | None

    @classmethod
    def of(cls, summary: ModelSummary) -> ModelSummaryResponse:
        return cls(**summary.__dict__)


class ModelList(BaseModel):
    items: list[ModelSummaryResponse]


class DetectorFamilyInfo(BaseModel):
    """One row of the detector-family table (``shared.schemas.detector_families``)."""

    name: str
    label: str
    summary: str
    backbones: list[str] = Field(description="backbone names config.backbone accepts")
    default_backbone: str | None
    uses_scale: bool = Field(description="whether scale n/s/m sizes the detector")
    default_imgsz: int
    int8: bool = Field(description="whether /v1/quantize-jobs takes its versions")


class DetectorFamilyList(BaseModel):
    default: str
    items: list[DetectorFamilyInfo]


class ModelDetailResponse(BaseModel):
    name: str
    latest: str | None
    stages: dict[str, str]
    versions: list[ModelVersion]

    @classmethod
    def of(cls, detail: ModelDetail) -> ModelDetailResponse:
        versions = [ModelVersion.of(v) for v in detail.versions]
        return cls(name=detail.name, latest=detail.latest, stages=detail.stages, versions=versions)


STAGE_PATTERN = r"^[a-z][a-z0-9_\-]{0,31}$"


class PromoteRequest(BaseModel):
    """Which stage to point at the version; the inference service follows 'production'."""

    model_config = ConfigDict(extra="forbid")

    stage: str = Field(
        pattern=STAGE_PATTERN,
        description="lower-case name: a letter, then letters, digits, '-' or '_' (max 32)",
        examples=["production", "staging"],
    )


class PromoteResponse(BaseModel):
    name: str
    version: str
    stage: str
