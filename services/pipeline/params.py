"""What a pipeline is asked to do: the body of ``POST /v1/pipelines`` and its parts.

Torch-free pydantic: the API validates requests with these classes and the stored record
(``stores.pipelines``) keeps the request as it was accepted.
"""

from __future__ import annotations

from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

from shared.schemas.detector import FamilyName
from shared.schemas.detector_families import DEFAULT_FAMILY
from shared.storage.base import prefix_field

MapMethod = Literal["auto", "kead", "tocoad", "provided"]
PresetName = Literal["cpu-demo", "cpu", "gpu-paper"]
LabelFormat = Literal["auto", "voc", "coco", "yolo", "masks"]
Stage = Literal["staging", "production"]
_NAME_PATTERN = r"^[a-z0-9][a-z0-9_\-]{0,62}$"


class LabelledSet(BaseModel):
    """The few labelled images: a store prefix to import, or a dataset already stored.

    With ``dataset`` the import step is skipped and the detectors train on its ``split`` and
    validate on its ``val_split`` (e.g. ``mini-10`` and ``val`` for a fixed validation set).
    """

    model_config = ConfigDict(extra="forbid")

    prefix: str | None = Field(None, description="store prefix of the labelled set to import")
    format: LabelFormat = Field(
        "auto", description="auto: the finetune service recognises the layout and its splits"
    )
    images: str | None = Field(
        None, description="images folder under the prefix ('.' = itself); default: as found"
    )
    annotations: str | None = Field(None, description="annotations folder/file; format default")
    classes: list[str] | None = Field(None, min_length=1, max_length=1000)
    dataset: str | None = Field(
        None,
        pattern=r"^[a-z0-9][a-z0-9_\-]*(:[0-9A-Za-z_\-]+)?$",
        description="a stored dataset 'name[:version]' instead of a prefix",
    )
    split: str = Field("train", pattern=r"^[a-z0-9][a-z0-9_\-]{0,30}$", description="train on")
    val_split: str = Field("val", pattern=r"^[a-z0-9][a-z0-9_\-]{0,30}$", description="validate on")

    @field_validator("prefix")
    @classmethod
    def _prefix(cls, value: str | None) -> str | None:
        return None if value is None else prefix_field(value)

    @model_validator(mode="after")
    def _one_source(self) -> LabelledSet:
        if (self.prefix is None) == (self.dataset is None):
            raise ValueError("give the labelled set as exactly one of 'prefix' or 'dataset'")
        return self


class StepOverrides(BaseModel):
    """Config keys laid over the preset, per step (each service validates its own)."""

    model_config = ConfigDict(extra="forbid")

    tocoad: dict[str, Any] = Field(default_factory=dict)
    tocoad_preset: Literal["tiny", "demo", "cpu", "gpu"] | None = Field(
        None, description="the anomaly-map service's ToCoAD preset instead of the pipeline's"
    )
    agbp: dict[str, Any] = Field(default_factory=dict)
    agdp: dict[str, Any] = Field(default_factory=dict)
    finetune: dict[str, Any] = Field(default_factory=dict)


class PipelineRequest(BaseModel):
    """Body of ``POST /v1/pipelines``."""

    model_config = ConfigDict(extra="forbid")

    name: str = Field(
        pattern=_NAME_PATTERN,
        description="model name of the detector; the baseline is '<name>-scratch'",
    )
    category: str = Field(pattern=_NAME_PATTERN, description="anomaly-map category")
    category_spec: dict[str, Any] | None = Field(
        None,
        description="category to create first (PUT /v1/categories/{category} body: map, good, "
        "defect, references, method); leave out to use an existing category",
    )
    unlabelled_prefix: str = Field(description="store prefix of the unlabelled line images")
    labelled: LabelledSet
    maps: MapMethod = Field(
        "auto", description="kead, tocoad, provided (maps_prefix) or auto: KeAD when CLIP is ready"
    )
    maps_prefix: str | None = Field(None, description="a dataset-map output, for maps=provided")
    labelled_defects: bool = Field(
        True,
        description="the ToCoAD fit also pastes the labelled set's defect boxes as Stage I "
        "anomalies, so the maps learn what this line's defects look like",
    )
    gate: Literal["off", "auto"] = Field(
        "auto",
        description="pseudo boxes only on images whose score stands out of the pool's "
        "(no pool labels: the image-score distribution, checked by the scores of the labelled "
        "set's defect images); off: every image over the threshold",
    )
    preset: PresetName = "cpu-demo"
    detector: FamilyName = Field(
        DEFAULT_FAMILY,
        description="detector family (GET /v1/detector-families on the finetune service); AGBP "
        "pretrains the backbone it builds on",
    )
    scale: Literal["n", "s", "m"] = Field("n", description="size of families sized by scale")
    seed: int = Field(0, ge=0, le=2**31 - 1)
    val_fraction: float = Field(0.2, gt=0, lt=1, allow_inf_nan=False)
    baseline: bool = Field(True, description="also train from scratch on the same split and seed")
    promote: Stage | None = Field(None, description="promote a detector to this stage")
    promote_rule: Literal["better", "agssp"] = Field(
        "better",
        description="which detector ``promote`` serves: better, the one of the AGSSP detector "
        "and the scratch baseline with the higher mAP@0.5 on the validation split (AGSSP on a "
        "tie or without a baseline), so the line never serves a detector its own control "
        "beat; agssp, the AGSSP detector whatever its score",
    )
    overrides: StepOverrides = Field(default_factory=StepOverrides)

    @field_validator("unlabelled_prefix", "maps_prefix")
    @classmethod
    def _prefixes(cls, value: str | None) -> str | None:
        return None if value is None else prefix_field(value)
