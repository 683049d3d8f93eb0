"""Request and response models of the anomaly_map HTTP API (the public contract)."""

from __future__ import annotations

from datetime import datetime
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field

from services.anomaly_map.ml.clip.prompts import prompt_counts
from services.anomaly_map.params import DatasetMapParams, EvaluationParams, Method, TocoadFitParams
from services.anomaly_map.stores.categories import CategoryRecord, CategorySpec

MapEncoding = Literal["base64", "list", "none"]


class CategoryRequest(CategorySpec):
    """Body of ``PUT /v1/categories/{name}`` (JSON, or the ``spec`` field of a multipart form)."""


class PromptCounts(BaseModel):
    normal: int
    anomalous: int


class CategoryResponse(BaseModel):
    """One version of a category."""

    name: str
    version: str
    created_at: datetime
    map: str
    good: list[str]
    defect: list[str]
    method: Method
    references: list[str] = Field(description="object-store keys of the stored reference images")
    sources: list[str]
    fingerprint: str
    prompts: PromptCounts
    versions: list[str] | None = Field(None, description="every stored version, oldest first")

    @classmethod
    def of(cls, record: CategoryRecord, versions: list[str] | None = None) -> CategoryResponse:
        normal, anomalous = prompt_counts(record.description())
        return cls(
            **record.model_dump(),
            prompts=PromptCounts(normal=normal, anomalous=anomalous),
            versions=versions,
        )


class CategoryList(BaseModel):
    items: list[CategoryResponse]


class ImportResponse(BaseModel):
    """Categories created from a description file and the samples that were ignored."""

    created: list[CategoryResponse]
    warnings: list[str]


class MapParams(BaseModel):
    """Parameters of ``POST /v1/anomaly-maps``: query string, or form fields with multipart."""

    model_config = ConfigDict(extra="forbid", allow_inf_nan=False)

    category: str = Field(description="category name")
    mode: Method | None = Field(
        None, description="default: the category's method; tocoad needs a finished fit job"
    )
    resolution: Literal["patch", "image"] = Field(
        "patch", description="'patch': raw (G, G) map; 'image': bilinearly upsampled to (H, W)"
    )
    overlay: bool = Field(False, description="also return a PNG heat-map overlay (JSON)")
    tile: int | None = Field(
        None,
        ge=0,
        le=16384,
        description="tile side in pixels for large images; 0 = whole image squashed to S x S; "
        "default ANOMALY_MAP_TILE_SIZE",
    )
    map_encoding: MapEncoding = Field(
        "base64",
        description="'base64' (default: float32 little-endian, row-major, compact), "
        "'list' (nested JSON lists) or 'none'",
    )


class MapPayload(BaseModel):
    """A float32 map: ``data`` is base64 of little-endian row-major bytes, or nested lists."""

    encoding: Literal["base64", "list"]
    dtype: Literal["float32"] = "float32"
    byte_order: Literal["little"] = "little"
    shape: list[int]
    data: str | list[list[float]]


class AnomalyMapResponse(BaseModel):
    """One image's anomaly map and scores."""

    category: str
    category_version: str
    model: str
    mode: str
    image_score: float
    zero_shot_score: float | None = Field(description="s0; null for tiled requests")
    map_shape: list[int]
    map: MapPayload | None
    overlay_png_base64: str | None = None
    image_size: list[int] = Field(description="(height, width) of the decoded image")
    tiles: int
    timings_ms: dict[str, float]


class MapJobRequest(DatasetMapParams):
    """Body of ``POST /v1/anomaly-map-jobs``; outputs go to ``output_prefix``
    (default ``maps/<category>/<job id>/``, also in the job's ``outputs.output_prefix``)."""


class TocoadFitRequest(TocoadFitParams):
    """Body of ``POST /v1/tocoad-fits``: fit ToCoAD on a category's reference images plus
    optional normal images under ``normal_prefix``; ``config`` overrides TocoadConfig."""


class EvaluationRequest(EvaluationParams):
    """Body of ``POST /v1/evaluations``: images (and masks) under object-store prefixes."""


def category_request_body() -> dict[str, Any]:
    """OpenAPI description of the two accepted bodies of ``PUT /v1/categories/{name}``."""
    return {
        "requestBody": {
            "required": True,
            "content": {
                "application/json": {"schema": CategoryRequest.model_json_schema()},
                "multipart/form-data": {
                    "schema": {
                        "type": "object",
                        "required": ["spec"],
                        "properties": {
                            "spec": {"type": "string", "description": "CategoryRequest JSON"},
                            "references": {
                                "type": "array",
                                "items": {"type": "string", "format": "binary"},
                            },
                        },
                    }
                },
            },
        }
    }
