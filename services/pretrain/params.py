"""Parameters of the pretrain jobs: what the API accepts and what workers read from the record.

Torch-free pydantic models, so the API and the worker validate with the same classes: the
AGBP ``AgbpConfig`` checks backbone names against ``shared.schemas.backbones`` and every
number against a finite range; the recipe (``services.pretrain.ml.agbp_config``) fills what a
request leaves unset.
"""

from __future__ import annotations

import difflib
from typing import Annotated, Any, Literal, Self

from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    SerializationInfo,
    ValidationError,
    ValidatorFunctionWrapHandler,
    field_serializer,
    field_validator,
    model_validator,
)

from shared.errors import InvalidInputError
from shared.schemas.artifacts import check_segment
from shared.schemas.backbones import BACKBONE_FILE, BACKBONES, backbone_names, family_traits
from shared.schemas.bounds import FINITE
from shared.storage.base import prefix_field

CATEGORY_PATTERN = r"^[A-Za-z0-9][A-Za-z0-9._\-]{0,127}$"
MAX_SOURCES = 256
DEFAULT_BACKBONE = "yolov8s"
MAX_NAMED_KEYS = 10  # an error names this many keys, never thousands
# agssp-spec §4.4: the reference configs freeze the stem and the first two stages (our 2).
DEFAULT_FROZEN_STAGES = 2
Objective = Literal["distill", "cls_distill", "mocov3_distill", "simmim_distill"]
GateMode = Literal["off", "fixed", "auto"]
# Pseudo-box gate 'auto' (services.pretrain.ml.gate): Ashman's D > 2 = cleanly separated.
GATE_MIN_SEPARATION = 2.0
GATE_MIN_WEIGHT = 0.02
# Share of the labelled defect images the gate must keep when references are given (issue 21).
GATE_MIN_LABELLED_RECALL = 0.8
# agssp-spec §4.1: statistics of the industrial pretraining set, RGB, 0-255 scale.
INDUSTRIAL_MEAN = (110.2955, 113.433, 109.914)
INDUSTRIAL_STD = (32.028, 30.614, 30.27)
# Finite ranges for every number (issue 15): mean/std on the 0-255 scale, betas in [0, 1).
Unit = Annotated[float, Field(ge=0, lt=1)]
Pixel = Annotated[float, Field(ge=0, le=255)]
Spread = Annotated[float, Field(gt=0, le=255)]


class AgbpConfig(BaseModel):
    """Experiment configuration of one AGBP run; None means "the recipe value"."""

    model_config = ConfigDict(extra="forbid", frozen=True, allow_inf_nan=False)

    backbone: str = Field(
        DEFAULT_BACKBONE,
        description="name from shared.schemas.backbones",
        json_schema_extra={"enum": list(backbone_names())},
    )
    objective: Objective = "cls_distill"
    num_classes: int | None = Field(
        None, ge=1, le=10_000, description="categories; cls_distill only (default: the job's)"
    )
    loss: Literal["cosine", "l2"] | None = None
    stages: tuple[Annotated[int, Field(ge=0, le=4)], ...] | None = Field(
        None, description="distilled stages, 0 = stem (default: the backbone's)"
    )
    frozen_stages: int | None = Field(None, ge=-1, le=4)
    weight_mode: Literal["fixed", "auto"] = Field("fixed", description="paper eq. 8 if auto")
    distill_weight: float | None = Field(None, ge=0, le=1000)
    task_weight: float | None = Field(None, ge=0, le=1000)
    label_smoothing: float | None = Field(None, ge=0, lt=1)
    map_resize: Literal["chained", "direct"] = "chained"
    map_interpolation: Literal["nearest", "bilinear"] = "nearest"
    epochs: int = Field(200, ge=1, le=10_000)
    batch_size: int | None = Field(None, ge=1, le=4096, description="per process")
    optimizer: Literal["sgd", "adamw"] | None = None
    lr: float | None = Field(None, gt=0, le=10)
    weight_decay: float | None = Field(None, ge=0, le=1)
    momentum: float = Field(0.9, ge=0, lt=1, description="SGD momentum")
    betas: tuple[Unit, Unit] = (0.9, 0.999)
    schedule: Literal["multistep", "cosine", "constant"] | None = None
    milestones: tuple[Annotated[int, Field(ge=0, le=10_000)], ...] | None = Field(
        None, description="epochs, multistep"
    )
    gamma: float = Field(0.1, gt=0, le=10)
    min_lr: float = Field(1e-5, ge=0, le=10, description="cosine floor")
    warmup_epochs: float | None = Field(None, ge=0, le=10_000)
    warmup_factor: float | None = Field(None, gt=0, le=1)
    grad_clip: float | None = Field(None, ge=0, le=10_000, description="max grad norm; 0 = off")
    input_size: int | None = Field(
        None, ge=32, le=2048, description="crop size, multiple of 32 (default: the backbone's)"
    )
    resize_base: int | None = Field(None, ge=32, le=4096, description="s = base * U(0.5, 2)")
    drop_path_rate: float | None = Field(None, ge=0, lt=1)
    amp: bool = Field(True, description="fp16 autocast on CUDA; ignored on CPU")
    seed: int = Field(2024, ge=0, le=2**32 - 1)
    checkpoint_every: int = Field(
        1000, ge=0, le=10_000_000, description="steps; 0 = epoch ends only"
    )
    num_workers: int = Field(4, ge=0, le=64)
    mean: tuple[Pixel, Pixel, Pixel] | None = INDUSTRIAL_MEAN
    std: tuple[Spread, Spread, Spread] | None = INDUSTRIAL_STD
    stats_sample: int = Field(
        256, ge=1, le=100_000, description="images used when mean/std are None"
    )
    moco_dim: int = Field(256, ge=1, le=65_536)
    moco_hidden_dim: int = Field(4096, ge=1, le=65_536)
    moco_temperature: float = Field(0.2, gt=0, le=10)
    moco_momentum: float = Field(0.99, ge=0, le=1, description="start of the cosine EMA")
    mask_ratio: float = Field(0.6, gt=0, lt=1)
    mask_patch_size: int = Field(32, ge=1, le=1024)

    @field_validator("backbone")
    @classmethod
    def _known_backbone(cls, value: str) -> str:
        if value not in BACKBONES:
            raise ValueError(f"backbone {value!r} not in {backbone_names()}")
        return value

    @model_validator(mode="after")
    def _check_combinations(self) -> Self:
        if self.objective == "simmim_distill" and not family_traits(self.backbone).masked_patches:
            raise ValueError("simmim_distill needs a Swin backbone (mask tokens on patches)")
        if self.stages is not None and not self.stages:
            raise ValueError("stages must be a non-empty subset of 0..4")
        if self.input_size is not None and self.input_size % 32:
            raise ValueError(f"input_size {self.input_size} must be a multiple of 32")
        return self

    def distilled_stages(self) -> tuple[int, ...]:
        """The distilled stages, the backbone's default when unset."""
        return BACKBONES[self.backbone].stages if self.stages is None else self.stages

    def frozen_stage_count(self) -> int:
        """``frozen_stages``, the recipe's default when unset."""
        return DEFAULT_FROZEN_STAGES if self.frozen_stages is None else self.frozen_stages


AGBP_CONFIG_KEYS = tuple(AgbpConfig.model_fields)


def check_trainable(cfg: AgbpConfig) -> None:
    """Refuse what validates field by field but cannot train.

    Raises:
        InvalidInputError: every distilled stage frozen (code 'invalid_input'), or
            ``cls_distill`` without ``num_classes`` (code 'invalid_config').
    """
    stages, frozen = cfg.distilled_stages(), cfg.frozen_stage_count()
    if frozen >= max(stages):
        raise InvalidInputError(
            f"frozen_stages {frozen} freezes every distilled stage {stages}; nothing would train"
        )
    if cfg.objective == "cls_distill" and cfg.num_classes is None:
        raise InvalidInputError("objective cls_distill needs num_classes", code="invalid_config")


def refuse_unknown_config_keys(config: dict[str, Any]) -> None:
    """Raise ``InvalidInputError`` (code 'unknown_config_keys') naming the unknown keys (the
    first ``MAX_NAMED_KEYS``, each cut to 64 characters: an error never echoes a huge body)."""
    unknown = sorted(set(config) - set(AGBP_CONFIG_KEYS))
    if not unknown:
        return
    hints = []
    for key in unknown[:MAX_NAMED_KEYS]:
        shown = repr(key[:64])
        close = difflib.get_close_matches(key[:64], AGBP_CONFIG_KEYS, n=1)
        hints.append(f"{shown} (did you mean {close[0]!r}?)" if close else shown)
    if len(unknown) > MAX_NAMED_KEYS:
        hints.append(f"and {len(unknown) - MAX_NAMED_KEYS} more")
    raise InvalidInputError(
        f"unknown AGBP config keys: {', '.join(hints)}; accepted keys: "
        f"{', '.join(AGBP_CONFIG_KEYS)}",
        code="unknown_config_keys",
    )


def validate_agbp_config(raw: Any) -> AgbpConfig:
    """An ``AgbpConfig`` from request JSON, with the suite's error codes.

    Raises:
        InvalidInputError: unknown keys (code 'unknown_config_keys') or invalid values
            (code 'invalid_config'), all listed in one message.
    """
    if isinstance(raw, AgbpConfig):
        return raw
    if isinstance(raw, dict):
        refuse_unknown_config_keys(raw)
    try:
        return AgbpConfig.model_validate(raw)
    except ValidationError as exc:
        problems = "; ".join(
            f"{'.'.join(str(p) for p in e['loc']) or 'config'}: {e['msg']}"
            for e in exc.errors()[:MAX_NAMED_KEYS]
        )
        raise InvalidInputError(f"invalid AGBP config: {problems}", code="invalid_config") from exc


class SourceSpec(BaseModel):
    """One category's images and the anomaly maps computed for them."""

    model_config = ConfigDict(extra="forbid", frozen=True, allow_inf_nan=False)

    category: str = Field(pattern=CATEGORY_PATTERN, description="category name, e.g. 'steel'")
    images_prefix: str = Field(description="store prefix of the images, e.g. 'datasets/steel/'")
    maps_prefix: str = Field(
        description="output prefix of an anomaly_map dataset map job ('maps/steel/<job id>/') "
        "or any prefix holding '<image stem>.npy' maps"
    )

    @field_validator("images_prefix", "maps_prefix")
    @classmethod
    def _prefix(cls, value: str) -> str:
        return prefix_field(value)


class StartWeights(BaseModel):
    """Backbone weights to start from: a published artifact or a file in the model folder."""

    model_config = ConfigDict(extra="forbid", frozen=True, allow_inf_nan=False)

    artifact: str | None = Field(
        None,
        description=f"'name', 'name:latest' or 'name:version' of an artifact with {BACKBONE_FILE}",
    )
    path: str | None = Field(
        None, description="state_dict file, relative to AGSSP_MODEL_DIR (or absolute inside it)"
    )

    @field_validator("artifact")
    @classmethod
    def _artifact(cls, value: str | None) -> str | None:
        if value is not None:
            name, _, version = value.partition(":")
            check_segment(name, "name")
            if version and version != "latest":
                check_segment(version, "version")
        return value

    @model_validator(mode="after")
    def _exactly_one(self) -> Self:
        if (self.artifact is None) == (self.path is None):
            raise ValueError("give exactly one of 'artifact' or 'path'")
        return self


class AgbpJobParams(BaseModel):
    """An AGBP pretraining job (``POST /v1/pretrain-jobs``)."""

    model_config = FINITE

    sources: list[SourceSpec] = Field(
        min_length=1,
        max_length=MAX_SOURCES,
        description="category index = position of the category among the distinct categories",
    )
    config: AgbpConfig = Field(
        default_factory=AgbpConfig, description="unset fields take the backbone's recipe"
    )
    start_weights: StartWeights | None = None
    artifact_name: str | None = Field(None, description="default 'agbp-<backbone>'")

    @field_validator("config", mode="wrap")
    @classmethod
    def _config(cls, value: Any, handler: ValidatorFunctionWrapHandler) -> AgbpConfig:
        # InvalidInputError is no ValueError: it leaves pydantic with its own code.
        config: AgbpConfig = handler(validate_agbp_config(value))
        return config

    @field_serializer("config")
    def _dump_config(self, config: AgbpConfig, info: SerializationInfo) -> dict[str, Any]:
        # The fields the request set, as before: worker defaults apply to the others.
        return config.model_dump(mode=info.mode, exclude_unset=True)

    @field_validator("artifact_name")
    @classmethod
    def _artifact_name(cls, value: str | None) -> str | None:
        return None if value is None else check_segment(value, "name")

    @model_validator(mode="after")
    def _trainable(self) -> Self:
        agbp_config(self)
        return self

    def categories(self) -> list[str]:
        """Distinct categories in order of first appearance (index = class label)."""
        return list(dict.fromkeys(s.category for s in self.sources))

    def backbone(self) -> str:
        """The backbone the config names (the AgbpConfig default when unset)."""
        return self.config.backbone


def agbp_config(params: AgbpJobParams, **runtime: Any) -> AgbpConfig:
    """The job's ``AgbpConfig``: ``num_classes`` defaults to the number of categories.

    Args:
        params: the job parameters.
        runtime: values used only where the request left the field unset (``num_workers``).

    Raises:
        InvalidInputError: a config that cannot train (see ``check_trainable``).
    """
    cfg = params.config
    categories = params.categories()
    unset = {k: v for k, v in runtime.items() if k not in cfg.model_fields_set}
    if cfg.objective == "cls_distill" and cfg.num_classes is None:
        unset["num_classes"] = len(categories)
    if unset:
        cfg = validate_agbp_config(cfg.model_dump(exclude_unset=True) | unset)
    check_trainable(cfg)
    if cfg.objective == "cls_distill" and (cfg.num_classes or 0) < len(categories):
        raise InvalidInputError(
            f"num_classes {cfg.num_classes} < {len(categories)} categories {categories}",
            code="invalid_config",
        )
    return cfg


class PseudoLabelParams(BaseModel):
    """A pseudo-defect box job over one category (``POST /v1/pseudo-label-jobs``)."""

    model_config = FINITE

    category: str = Field(pattern=CATEGORY_PATTERN)
    images_prefix: str
    maps_prefix: str
    c: float = Field(0.1, ge=-2.0, le=2.0, description="T = mean of map maxima - c (§3.1)")
    regions: Literal["contours", "components"] = Field(
        "contours", description="external contours (code) or 8-connected components (paper)"
    )
    top_k: int = Field(10, ge=1, le=1000, description="boxes kept per image before NMS")
    nms: float = Field(0.8, gt=0.0, le=1.0, description="IoU at which NMS drops a box")
    gate: GateMode = Field(
        "off",
        description=(
            "image-level gate: 'off' (every image may get boxes, as the reference code), "
            "'fixed' (score_gate), 'auto' (calibrated on the pool's image scores, no labels)"
        ),
    )
    score_gate: float | None = Field(
        None,
        ge=-1e6,
        le=1e6,
        description="gate 'fixed': images whose image score (dataset-map scores) is below "
        "get no boxes; given alone, it implies gate 'fixed'",
    )
    gate_min_separation: float = Field(
        GATE_MIN_SEPARATION,
        ge=0.0,
        le=100.0,
        description="gate 'auto': Ashman's D the two score components must reach",
    )
    gate_min_weight: float = Field(
        GATE_MIN_WEIGHT,
        ge=0.0,
        lt=0.5,
        description="gate 'auto': weight the smaller score component must reach",
    )
    reference_maps_prefix: str | None = Field(
        None,
        description="gate 'auto': a dataset-map output over labelled DEFECT images only; "
        "their image scores check the gate (lowered until it keeps gate_min_labelled_recall "
        "of them, or set from them when the pool is one population)",
    )
    gate_min_labelled_recall: float = Field(
        GATE_MIN_LABELLED_RECALL,
        gt=0.0,
        le=1.0,
        description="gate 'auto' with reference_maps_prefix: share of the labelled defect "
        "images the gate must keep",
    )
    min_area: int | None = Field(
        None, ge=1, le=100_000_000, description="default max((H//100)*(W//100), 10)"
    )
    out_prefix: str | None = Field(None, description="default 'pseudo/<category>/<job id>/'")

    @field_validator("images_prefix", "maps_prefix")
    @classmethod
    def _prefix(cls, value: str) -> str:
        return prefix_field(value)

    @field_validator("reference_maps_prefix")
    @classmethod
    def _reference_prefix(cls, value: str | None) -> str | None:
        return None if value is None else prefix_field(value)

    @model_validator(mode="after")
    def _gate_matches_score_gate(self) -> Self:
        if "gate" not in self.model_fields_set and self.score_gate is not None:
            self.gate = "fixed"  # requests from before the gate modes keep their meaning
        if self.gate == "fixed" and self.score_gate is None:
            raise ValueError("gate 'fixed' needs score_gate")
        if self.gate != "fixed" and self.score_gate is not None:
            raise ValueError(f"score_gate applies to gate 'fixed' only, not {self.gate!r}")
        if self.gate != "auto" and self.reference_maps_prefix is not None:
            raise ValueError(
                f"reference_maps_prefix applies to gate 'auto' only, not {self.gate!r}"
            )
        return self

    @field_validator("out_prefix")
    @classmethod
    def _out_prefix(cls, value: str | None) -> str | None:
        return None if value is None else prefix_field(value)

    def source(self) -> SourceSpec:
        """The category's images and maps as a ``SourceSpec``."""
        return SourceSpec(
            category=self.category, images_prefix=self.images_prefix, maps_prefix=self.maps_prefix
        )

    def output_prefix(self, job_id: str) -> str:
        """Where the job writes its files."""
        return self.out_prefix or f"pseudo/{self.category}/{job_id}/"
