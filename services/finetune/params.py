"""Parameters of the finetune jobs: what the API accepts and what workers read back.

Torch-free pydantic models. Training configs are checked field by field against the
pydantic-only configs of ``shared.schemas.detector`` (unknown keys are named, with close matches).
"""

from __future__ import annotations

import difflib
from typing import Annotated, Any, Literal, Self

from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    TypeAdapter,
    ValidationError,
    WithJsonSchema,
    field_validator,
    model_validator,
)

from shared.errors import InvalidInputError
from shared.schemas.artifacts import check_segment
from shared.schemas.backbones import BACKBONE_FILE
from shared.schemas.bounds import FINITE, SEED_MAX
from shared.schemas.detector import AgdpConfig, FinetuneConfig, Scale
from shared.schemas.detector_families import DEFAULT_FAMILY, detector_family
from shared.schemas.pseudo_labels import CLASSES_FILE as YOLO_CLASSES_FILE
from shared.storage.base import prefix_field, validate_key

CalibrationMethod = Literal["minmax", "percentile"]  # of the INT8 calibration

DatasetFormat = Literal["voc", "coco", "yolo", "masks"]
ExportFormat = Literal["coco", "yolo"]  # of an export for review (usecases.review_exports)
SplitMethod = Literal["stratified", "shuffle"]
TrainKind = Literal["agdp", "finetune"]
# Hardware belongs to the worker (FINETUNE_DEVICE, FINETUNE_WORKERS), not to the request.
RUNTIME_KEYS = frozenset({"device", "workers"})
_FIELDS: dict[TrainKind, type[BaseModel]] = {"agdp": AgdpConfig, "finetune": FinetuneConfig}
# mmyolo frozen_stages k freezes the stem and stages 1..k; in ultralytics' YOLOv8 the stem is
# layer 0 and the stages are layers (1, 2), (3, 4), (5, 6), (7, 8, 9 = SPPF), so k = 4 is the
# whole backbone, layers 0-9 (agssp-spec §5.2 "frozen_stages 4 = whole backbone").
FROZEN_STAGE_LAYERS = {-1: 0, 0: 1, 1: 3, 2: 5, 3: 7, 4: 10}
MAX_NAMED_KEYS = 10  # an error names this many unknown keys, never thousands
SPLIT_PATTERN = r"^[A-Za-z0-9][A-Za-z0-9._\-]{0,63}$"


def _relative_path(value: str) -> str:
    try:
        return validate_key(value.rstrip("/"))
    except InvalidInputError as exc:
        raise ValueError(exc.message) from exc


def _segment(value: str, what: str) -> str:
    return check_segment(value, what)


def parse_ref(spec: str) -> tuple[str, str | None]:
    """``'name'``/``'name:latest'`` -> (name, None); ``'name:version'`` -> (name, version)."""
    name, _, version = spec.partition(":")
    return name, None if version in ("", "latest") else version


def _ref_spec(value: str) -> str:
    name, version = parse_ref(value)
    check_segment(name, "name")
    if version is not None:
        check_segment(version, "version")
    return value


def published_config(kind: TrainKind) -> WithJsonSchema:
    """OpenAPI schema of a job's ``config``: the config class's fields less the worker's
    runtime keys. Validation stays in ``check_train_config`` (it names unknown keys with
    close matches), so the schema documents exactly what that check accepts."""
    schema = _FIELDS[kind].model_json_schema()
    schema["properties"] = {k: v for k, v in schema["properties"].items() if k not in RUNTIME_KEYS}
    return WithJsonSchema(schema)


def frozen_layers(frozen: Literal["backbone"] | int) -> int:
    """ultralytics ``freeze`` (first N layers) for ``"backbone"`` or mmyolo frozen stages."""
    return 10 if frozen == "backbone" else FROZEN_STAGE_LAYERS[frozen]


def check_train_config(kind: TrainKind, scale: Scale, raw: dict[str, Any]) -> dict[str, Any]:
    """The request's config keys, validated; ``scale`` added. Defaults stay unresolved.

    Raises:
        InvalidInputError: unknown keys (code unknown_config_keys), runtime keys
            (runtime_setting_in_config), a second, different scale (scale_mismatch) or a bad
            value (invalid_config).
    """
    fields = _FIELDS[kind]
    known = sorted(set(fields.model_fields) - RUNTIME_KEYS)
    unknown = sorted(set(raw) - set(fields.model_fields))
    if unknown:
        hints = []
        for key in unknown[:MAX_NAMED_KEYS]:
            shown = repr(key[:64])
            close = difflib.get_close_matches(key[:64], known, n=1)
            hints.append(f"{shown} (did you mean {close[0]!r}?)" if close else shown)
        if len(unknown) > MAX_NAMED_KEYS:
            hints.append(f"and {len(unknown) - MAX_NAMED_KEYS} more")
        raise InvalidInputError(
            f"unknown {kind} config keys: {', '.join(hints)}; accepted: {', '.join(known)}",
            code="unknown_config_keys",
        )
    runtime = sorted(RUNTIME_KEYS & set(raw))
    if runtime:
        raise InvalidInputError(
            f"config keys {runtime} are set by the worker (FINETUNE_DEVICE, FINETUNE_WORKERS)",
            code="runtime_setting_in_config",
        )
    if "scale" in raw and raw["scale"] != scale:
        raise InvalidInputError(
            f"config.scale {raw['scale']!r} differs from scale {scale!r}; give it once",
            code="scale_mismatch",
        )
    try:
        checked = fields.model_validate({**raw, "scale": scale})
    except ValidationError as exc:
        problems = "; ".join(
            f"{'.'.join(str(p) for p in e['loc'])}: {e['msg']}"
            for e in exc.errors()[:MAX_NAMED_KEYS]
        )
        raise InvalidInputError(
            f"invalid {kind} config: {problems}", code="invalid_config"
        ) from exc
    return checked.model_dump(mode="json", include={*raw, "scale"})


class DatasetImportParams(BaseModel):
    """Import a VOC/COCO/YOLO or images + masks dataset from a store prefix as a version."""

    model_config = FINITE

    name: str = Field(description="dataset name, e.g. 'neu-det'")
    prefix: str = Field(description="store prefix holding the images and annotations")
    format: DatasetFormat | Literal["auto"] = Field(
        "auto",
        description="auto: recognise the layout (ultralytics data.yaml, YOLO folders, COCO, "
        "VOC, masks) and keep the data set's own splits; or name the format",
    )
    images: str = Field(
        "images", description="images folder, relative to the prefix (overrides detection)"
    )
    annotations: str | None = Field(
        None,
        description="relative to the prefix; default 'annotations' (VOC XML folder), "
        "'annotations.json' (COCO file), 'labels' (YOLO txt folder, boxes or segment "
        "polygons) or 'masks' (pixel masks, one box per connected component; the images "
        "folder itself when masks sit beside the images, as in Magnetic-tile)",
    )
    classes: list[str] | None = Field(
        None,
        min_length=1,
        description="class names in id order; VOC default: sorted names found, COCO: its "
        f"categories, YOLO: {YOLO_CLASSES_FILE} or data.yaml",
    )
    val_fraction: float = Field(
        0.1, ge=0, lt=1, description="share of images in 'val' (when the set has no val split)"
    )
    split_method: SplitMethod = Field(
        "stratified",
        description="stratified: every class and defect-free images in val, near duplicates "
        "grouped; shuffle: the earlier split (groups of identical files only)",
    )
    keep_splits: bool = Field(True, description="keep the data set's own train/val/test splits")
    min_labelled_share: float = Field(
        0.2, ge=0, le=1, description="warn when fewer images than this carry an annotation"
    )
    summary_imgsz: int = Field(
        640, ge=32, le=8192, description="input size the summary measures box sizes at"
    )
    seed: int = Field(2024, ge=0, le=SEED_MAX, description="seed of the split and the mini subsets")
    mini: list[Annotated[int, Field(ge=1, le=100_000)]] = Field(
        default_factory=list,
        max_length=8,
        description="few-shot subsets 'mini-N' of the train split to store (N images per class)",
    )

    @field_validator("name")
    @classmethod
    def _name(cls, value: str) -> str:
        return _segment(value, "name")

    @field_validator("prefix")
    @classmethod
    def _prefix(cls, value: str) -> str:
        return prefix_field(value)

    @field_validator("images", "annotations")
    @classmethod
    def _relative(cls, value: str | None) -> str | None:
        if value in {".", ""}:
            return "."  # the prefix itself (images and masks side by side at the top)
        return None if value is None else _relative_path(value)

    @field_validator("mini")
    @classmethod
    def _mini(cls, value: list[int]) -> list[int]:
        if any(n < 1 for n in value):
            raise ValueError("mini sizes must be >= 1")
        return sorted(set(value))


class InitParams(BaseModel):
    """Where finetuning starts: scratch, an AGBP backbone, a detector artifact or a file."""

    model_config = ConfigDict(extra="forbid", frozen=True, allow_inf_nan=False)

    kind: Literal["scratch", "agbp", "agdp", "checkpoint"] = "scratch"
    artifact: str | None = Field(
        None, description="'name:version' (or 'name' for its latest version)"
    )
    path: str | None = Field(
        None, description="checkpoint kind: a file relative to AGSSP_MODEL_DIR on the worker"
    )

    @field_validator("artifact")
    @classmethod
    def _artifact(cls, value: str | None) -> str | None:
        return None if value is None else _ref_spec(value)

    @model_validator(mode="after")
    def _consistent(self) -> Self:
        given = (self.artifact is not None, self.path is not None)
        wanted = {"scratch": [(False, False)], "agbp": [(True, False)], "agdp": [(True, False)]}
        allowed = wanted.get(self.kind, [(True, False), (False, True)])
        if given not in allowed:
            raise ValueError(
                "scratch takes neither artifact nor path; agbp and agdp take an artifact; "
                "checkpoint takes an artifact or a path"
            )
        return self


class AgdpJobParams(BaseModel):
    """AGDP: a one-class detector on pseudo-defect boxes, backbone frozen (agssp-spec §5.2)."""

    model_config = FINITE

    images_prefix: str = Field(description="store prefix of the images the labels describe")
    labels_prefix: str = Field(
        description="output prefix of a pseudo-label job ('pseudo/<category>/<job id>/')"
    )
    backbone_artifact: str | None = Field(
        None, description=f"AGBP artifact 'name:version' with {BACKBONE_FILE}; none = random init"
    )
    scale: Scale = Field("s", description="YOLOv8 scale")
    config: Annotated[dict[str, Any], published_config("agdp")] = Field(
        default_factory=dict, description="AgdpConfig fields; unknown keys are refused"
    )
    frozen: Literal["backbone"] | Annotated[int, Field(ge=-1, le=4)] | None = Field(
        None,
        description="'backbone' or mmyolo frozen_stages -1..4; default the config's freeze "
        "(the whole backbone)",
    )
    val_fraction: float = Field(0.1, gt=0, lt=1, description="pseudo-labelled images for val")
    artifact_name: str | None = Field(None, description="default 'agdp-<scale>'")

    @field_validator("images_prefix", "labels_prefix")
    @classmethod
    def _prefix(cls, value: str) -> str:
        return prefix_field(value)

    @field_validator("backbone_artifact")
    @classmethod
    def _artifact(cls, value: str | None) -> str | None:
        return None if value is None else _ref_spec(value)

    @field_validator("frozen")
    @classmethod
    def _frozen(cls, value: str | int | None) -> str | int | None:
        if isinstance(value, int) and value not in FROZEN_STAGE_LAYERS:
            raise ValueError(f"frozen stages must be one of {sorted(FROZEN_STAGE_LAYERS)}")
        return value

    @field_validator("artifact_name")
    @classmethod
    def _name(cls, value: str | None) -> str | None:
        return None if value is None else _segment(value, "name")

    @model_validator(mode="after")
    def _one_freeze(self) -> Self:
        if self.frozen is not None and "freeze" in self.config:
            raise ValueError("give 'frozen' or config.freeze, not both")
        return self

    def output_name(self) -> str:
        """The artifact this job publishes: ``agdp-<scale>`` for a family sized by scale,
        else ``agdp-<family>``."""
        if self.artifact_name:
            return self.artifact_name
        family = detector_family(str(self.config.get("family") or DEFAULT_FAMILY))
        return f"agdp-{self.scale if family.uses_scale else family.name}"


class FinetuneJobParams(BaseModel):
    """Finetune a YOLOv8 on a stored dataset from an init (agssp-spec §5.3-5.4)."""

    model_config = FINITE

    dataset: str = Field(description="stored dataset 'name:version' (or 'name' for latest)")
    split: str = Field("train", pattern=SPLIT_PATTERN, description="split to train on")
    val_split: str = Field(
        "val", pattern=SPLIT_PATTERN, description="split for validation and the final evaluation"
    )
    mini: int | None = Field(
        None, ge=1, le=100_000, description="train on the few-shot subset mini-N of the split"
    )
    init: InitParams = Field(default_factory=InitParams)
    scale: Scale = Field("s", description="YOLOv8 scale")
    config: Annotated[dict[str, Any], published_config("finetune")] = Field(
        default_factory=dict, description="FinetuneConfig fields; unknown keys are refused"
    )
    model_name: str = Field(description="registry name the model is published under")

    @field_validator("dataset")
    @classmethod
    def _dataset(cls, value: str) -> str:
        return _ref_spec(value)

    @field_validator("model_name")
    @classmethod
    def _name(cls, value: str) -> str:
        return _segment(value, "name")


class EvaluationParams(BaseModel):
    """COCO mAP of a registered model version on a stored dataset split."""

    model_config = FINITE

    model: str = Field(description="registered model 'name:version' (or 'name' for latest)")
    dataset: str = Field(description="stored dataset 'name:version' (or 'name' for latest)")
    split: str = Field("val", pattern=SPLIT_PATTERN, description="split to evaluate on")
    conf: float = Field(
        0.25,
        gt=0.0,
        lt=1.0,
        description="score a detection needs to count as found in the misses, false alarms "
        "and confusion matrix (the mAP and PR curves use every score down to 0.001)",
    )

    @field_validator("model", "dataset")
    @classmethod
    def _ref(cls, value: str) -> str:
        return _ref_spec(value)


class QuantizeParams(BaseModel):
    """INT8 post-training quantisation of a registered detector, calibrated on a dataset."""

    model_config = FINITE

    model: str = Field(description="registered detector 'name:version' (or 'name' for latest)")
    dataset: str = Field(description="the user's images: stored dataset 'name:version'")
    calibration_split: str = Field("train", pattern=SPLIT_PATTERN)
    calibration_images: int = Field(64, ge=1, le=2048, description="images used to calibrate")
    eval_split: str = Field("val", pattern=SPLIT_PATTERN, description="mAP of FP32 vs INT8")
    method: CalibrationMethod = "minmax"

    @field_validator("model", "dataset")
    @classmethod
    def _ref(cls, value: str) -> str:
        return _ref_spec(value)


class PredictionsExportParams(BaseModel):
    """Export for review: a model version's predictions from its saved evaluation on a split."""

    model_config = FINITE

    source: Literal["predictions"]
    model: str = Field(description="registered model 'name:version' (or 'name' for latest)")
    dataset: str | None = Field(
        None, description="'name' or 'name:version'; default: the newest evaluated"
    )
    split: str = Field("val", pattern=SPLIT_PATTERN, description="the evaluated split")
    format: ExportFormat = "coco"

    @field_validator("model")
    @classmethod
    def _model(cls, value: str) -> str:
        return _ref_spec(value)

    @field_validator("dataset")
    @classmethod
    def _dataset(cls, value: str | None) -> str | None:
        return None if value is None else _ref_spec(value)


class PseudoLabelsExportParams(BaseModel):
    """Export for review: a pseudo-label output's pseudo boxes with their images."""

    model_config = FINITE

    source: Literal["pseudo-labels"]
    labels_prefix: str = Field(
        description="output prefix of a pseudo-label job ('pseudo/<category>/<job id>/') or "
        "its 'labels/'"
    )
    images_prefix: str | None = Field(
        None, description="store prefix of the images; default: the output's manifest names it"
    )
    format: ExportFormat = "coco"

    @field_validator("labels_prefix", "images_prefix")
    @classmethod
    def _prefix(cls, value: str | None) -> str | None:
        return None if value is None else prefix_field(value)


# The body of POST /v1/review-exports and the params of its job, told apart by ``source``.
ExportParams = PredictionsExportParams | PseudoLabelsExportParams
ReviewExportParams = Annotated[ExportParams, Field(discriminator="source")]
REVIEW_EXPORT_PARAMS: TypeAdapter[ExportParams] = TypeAdapter(ReviewExportParams)
