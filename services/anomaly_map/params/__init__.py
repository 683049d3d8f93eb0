"""Job parameters and the scoring-method names of the anomaly_map service.

Torch-free pydantic models, so the API validates a job with the same classes the worker reads
it with (the API never imports torch for this).
"""

from __future__ import annotations

from typing import Annotated, Any, Literal, Self

from pydantic import (
    AfterValidator,
    BaseModel,
    ConfigDict,
    Field,
    WithJsonSchema,
    model_validator,
)

from services.anomaly_map.params.catalog import CATALOG
from services.anomaly_map.params.tocoad import PresetName, TocoadConfig


def known_method(value: str) -> str:
    """``value`` if the catalogue has a method of that name (``params.catalog.CATALOG``)."""
    if value not in CATALOG:
        raise ValueError(f"unknown method {value!r}; one of {', '.join(CATALOG)}")
    return value


# A method's name: any row of the catalogue (checked when validated, so a row added to
# CATALOG is accepted everywhere without another list to edit).
Method = Annotated[
    str,
    AfterValidator(known_method),
    WithJsonSchema({"type": "string", "enum": list(CATALOG)}),
]


def _inlined(node: Any, defs: dict[str, Any]) -> Any:
    """``node`` with ``$ref``s to ``defs`` replaced by their schema and no ``required`` list:
    overrides lay over a preset, so every field of every section is optional."""
    if isinstance(node, list):
        return [_inlined(v, defs) for v in node]
    if not isinstance(node, dict):
        return node
    ref = node.get("$ref")
    if isinstance(ref, str) and ref.startswith("#/$defs/"):
        return _inlined(defs[ref.removeprefix("#/$defs/")], defs)
    return {
        k: _inlined(v, defs)
        for k, v in node.items()
        if not (k == "required" and isinstance(v, list))
    }


def tocoad_overrides_schema() -> WithJsonSchema:
    """OpenAPI of a fit's ``config``: TocoadConfig's sections and fields, all optional."""
    schema = TocoadConfig.model_json_schema()
    defs = schema.pop("$defs", {})
    return WithJsonSchema(_inlined(schema, defs))


class EvaluationParams(BaseModel):
    """Payload of ``anomaly_map.evaluate`` jobs."""

    model_config = ConfigDict(extra="forbid", allow_inf_nan=False)

    category: str
    category_version: str | None = None
    images_prefix: str
    masks_prefix: str | None = Field(None, description="default: the images prefix")
    mask_suffix: str = Field(".png", description="mask key = masks prefix + image stem + suffix")
    normal_prefixes: list[str] = Field(default_factory=list)
    mode: str | None = None
    max_images: int | None = Field(None, ge=2, le=1_000_000)


# Which of a split's labelled defect images a job uses (``stores.labelled_defects``, issue 21).
DefectSide = Literal["paste", "reference", "all"]
REFERENCE_SHARE = 0.3  # of the defect images held out from the fit to check the gate
MIN_REFERENCE = 5  # the gate places no quantile on fewer (pretrain's gate.MIN_REFERENCES)


class LabelledDefects(BaseModel):
    """Labelled defects that Stage I pastes onto the normal images (ToCoAD, issue 21), or
    whose maps check the pseudo-label gate; ``side`` picks the share each use gets."""

    model_config = ConfigDict(extra="forbid", allow_inf_nan=False)

    dataset: str = Field(
        min_length=1,
        max_length=200,
        description="a stored detection dataset: name, name:latest or name:version",
    )
    split: str = Field("train", min_length=1, max_length=100, description="e.g. train, mini-10")
    max_images: int = Field(
        200, ge=1, le=10_000, description="most labelled images used (of the side asked for)"
    )
    side: DefectSide = Field(
        "all",
        description="which of the split's defect images: 'paste' (the ToCoAD fit's exemplars), "
        "'reference' (the held-out images whose maps check the pseudo-label gate) or 'all'; "
        "a split too small to hold out reference_share gives every image to both sides",
    )
    reference_share: float = Field(
        REFERENCE_SHARE,
        gt=0.0,
        le=0.5,
        description="share of the defect images held out for the gate check; the fit and the "
        "map job must give the same share (the pipeline leaves both at the default)",
    )
    min_reference: int = Field(
        MIN_REFERENCE,
        ge=1,
        le=1000,
        description="fewer reference images than this: nothing is held out (both sides all)",
    )


class DatasetMapParams(BaseModel):
    """Payload of ``anomaly_map.dataset_maps`` jobs: the images under ``prefix``, or the
    labelled defect images of a stored dataset (``defects``)."""

    model_config = ConfigDict(extra="forbid", allow_inf_nan=False)

    category: str
    category_version: str | None = None
    prefix: str | None = Field(
        None, description="object-store prefix of the images (ending with '/')"
    )
    defects: LabelledDefects | None = Field(
        None,
        description="instead of prefix: the images of a stored dataset's split that hold "
        "boxes (their scores check the pseudo-label gate, issue 21)",
    )
    mode: str | None = Field(
        None, description=f"{', '.join(CATALOG)}; default the category's method"
    )
    output_prefix: str | None = Field(None, description="default maps/<category>/<job id>/")

    @model_validator(mode="after")
    def _one_image_source(self) -> Self:
        if (self.prefix is None) == (self.defects is None):
            raise ValueError("give exactly one of 'prefix' or 'defects'")
        return self


class TocoadFitParams(BaseModel):
    """Payload of ToCoAD fit jobs."""

    model_config = ConfigDict(extra="forbid", allow_inf_nan=False)

    category: str
    category_version: str | None = None
    normal_prefix: str | None = Field(
        None, description="extra defect-free images under this object-store prefix"
    )
    max_images: int = Field(
        512, ge=2, le=100_000, description="most training images; more are dropped (warned)"
    )
    preset: PresetName = Field("cpu", description="cpu (2 cores, < 1 h), gpu (paper), tiny (CI)")
    config: Annotated[dict[str, Any], tocoad_overrides_schema()] = Field(
        default_factory=dict, description="TocoadConfig overrides on top of the preset"
    )
    defects: LabelledDefects | None = Field(
        None,
        description="labelled defects pasted as Stage I anomalies (boxes: soft-blended crops)",
    )
