"""Parameters of the pretrain jobs: what the API accepts and what workers read from the record.

Torch-free pydantic models; the AGBP ``config`` is checked against ``AgbpConfig`` separately
(``services.pretrain.submission.agbp_config``) so unknown keys can be listed by name.
"""

from __future__ import annotations

import difflib
from typing import Any, Literal, Self

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

from shared.errors import InvalidInputError
from shared.schemas.artifacts import check_segment
from shared.schemas.bounds import FINITE, refuse_non_finite
from shared.storage.base import prefix_field

CATEGORY_PATTERN = r"^[A-Za-z0-9][A-Za-z0-9._\-]{0,127}$"
MAX_SOURCES = 256
DEFAULT_BACKBONE = "yolov8s"
# Field names of ``services.pretrain.ml.agbp_config.AgbpConfig``, kept here so the torch-free
# API image can refuse unknown keys; a unit test keeps the two in step.
AGBP_CONFIG_KEYS = (
    "backbone", "objective", "num_classes", "loss", "stages", "frozen_stages", "weight_mode",
    "distill_weight", "task_weight", "label_smoothing", "map_resize", "map_interpolation",
    "epochs", "batch_size", "optimizer", "lr", "weight_decay", "momentum", "betas", "schedule",
    "milestones", "gamma", "min_lr", "warmup_epochs", "warmup_factor", "grad_clip",
    "input_size", "resize_base", "drop_path_rate", "amp", "seed", "checkpoint_every",
    "num_workers", "mean", "std", "stats_sample", "moco_dim", "moco_hidden_dim",
    "moco_temperature", "moco_momentum", "mask_ratio", "mask_patch_size",
)  # fmt: skip


# Finite range of every numeric AgbpConfig field (elements, for tuples), torch-free, so the
# API image refuses epochs 1e30 or lr 1e400 at submission: name -> (low, high, low_open,
# high_open). A unit test keeps it equal to AgbpConfig's own bounds.
AGBP_NUMERIC_BOUNDS: dict[str, tuple[float, float, bool, bool]] = {
    "num_classes": (1, 10_000, False, False), "stages": (0, 4, False, False),
    "frozen_stages": (-1, 4, False, False), "distill_weight": (0, 1000, False, False),
    "task_weight": (0, 1000, False, False), "label_smoothing": (0, 1, False, True),
    "epochs": (1, 10_000, False, False), "batch_size": (1, 4096, False, False),
    "lr": (0, 10, True, False), "weight_decay": (0, 1, False, False),
    "momentum": (0, 1, False, True), "betas": (0, 1, False, True),
    "milestones": (0, 10_000, False, False), "gamma": (0, 10, True, False),
    "min_lr": (0, 10, False, False), "warmup_epochs": (0, 10_000, False, False),
    "warmup_factor": (0, 1, True, False), "grad_clip": (0, 10_000, False, False),
    "input_size": (32, 2048, False, False), "resize_base": (32, 4096, False, False),
    "drop_path_rate": (0, 1, False, True), "seed": (0, 2**32 - 1, False, False),
    "checkpoint_every": (0, 10_000_000, False, False), "num_workers": (0, 64, False, False),
    "mean": (0, 255, False, False), "std": (0, 255, True, False),
    "stats_sample": (1, 100_000, False, False), "moco_dim": (1, 65_536, False, False),
    "moco_hidden_dim": (1, 65_536, False, False), "moco_temperature": (0, 10, True, False),
    "moco_momentum": (0, 1, False, False), "mask_ratio": (0, 1, True, True),
    "mask_patch_size": (1, 1024, False, False),
}  # fmt: skip
MAX_NAMED_KEYS = 10  # an error names this many keys, never thousands


def _outside(value: float, bound: tuple[float, float, bool, bool]) -> bool:
    low, high, low_open, high_open = bound
    below = value <= low if low_open else value < low
    above = value >= high if high_open else value > high
    return below or above


def _bound_text(bound: tuple[float, float, bool, bool]) -> str:
    low, high, low_open, high_open = bound
    return f"{'(' if low_open else '['}{low:g}, {high:g}{')' if high_open else ']'}"


def refuse_out_of_range_config(config: dict[str, Any]) -> None:
    """Raise ``InvalidInputError`` (code 'invalid_config') for a non-finite or out-of-range
    number in an AGBP config; types and combinations are the worker's ``AgbpConfig`` check."""
    refuse_non_finite(config)
    problems = []
    for key, bound in AGBP_NUMERIC_BOUNDS.items():
        value = config.get(key)
        values = value if isinstance(value, (list, tuple)) else [value]
        numbers = [v for v in values if isinstance(v, (int, float)) and not isinstance(v, bool)]
        if any(_outside(float(v), bound) for v in numbers):
            problems.append(f"{key} must lie in {_bound_text(bound)}")
    if problems:
        raise InvalidInputError(
            f"invalid AGBP config: {'; '.join(problems[:MAX_NAMED_KEYS])}", code="invalid_config"
        )


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
        None, description="'name', 'name:latest' or 'name:version' of an artifact with backbone.pt"
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
    config: dict[str, Any] = Field(
        default_factory=dict, description="AgbpConfig fields; unknown keys are refused"
    )
    start_weights: StartWeights | None = None
    artifact_name: str | None = Field(None, description="default 'agbp-<backbone>'")

    @field_validator("artifact_name")
    @classmethod
    def _artifact_name(cls, value: str | None) -> str | None:
        return None if value is None else check_segment(value, "name")

    def categories(self) -> list[str]:
        """Distinct categories in order of first appearance (index = class label)."""
        return list(dict.fromkeys(s.category for s in self.sources))

    def backbone(self) -> str:
        """The backbone the config names (the AgbpConfig default when unset)."""
        return str(self.config.get("backbone", DEFAULT_BACKBONE))


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
    score_gate: float | None = Field(
        None,
        ge=-1e6,
        le=1e6,
        description="images whose scores.csv image score is below get no boxes",
    )
    min_area: int | None = Field(
        None, ge=1, le=100_000_000, description="default max((H//100)*(W//100), 10)"
    )
    out_prefix: str | None = Field(None, description="default 'pseudo/<category>/<job id>/'")

    @field_validator("images_prefix", "maps_prefix")
    @classmethod
    def _prefix(cls, value: str) -> str:
        return prefix_field(value)

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
