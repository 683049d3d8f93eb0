"""AGBP hyper-parameters: a strict pydantic model whose unset fields resolve per backbone.

Unset (None) fields take the reference recipe of agssp-spec §4.4 for the chosen backbone and
objective; ``resolve_config`` fills them so the saved config is complete.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Annotated, Literal, Self, TypeVar

from pydantic import BaseModel, ConfigDict, Field, model_validator

from services.pretrain.ml.distill import distill_defaults
from shared.errors import InvalidInputError
from shared.ml.backbones import available_backbones, backbone_family

T = TypeVar("T")
Objective = Literal["distill", "cls_distill", "mocov3_distill", "simmim_distill"]

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

    backbone: str = Field("yolov8s", description="name from shared.ml.backbones")
    objective: Objective = "cls_distill"
    num_classes: int | None = Field(
        None, ge=1, le=10_000, description="categories; cls_distill only"
    )
    loss: Literal["cosine", "l2"] | None = None
    stages: tuple[Annotated[int, Field(ge=0, le=4)], ...] | None = Field(
        None, description="distilled stages, 0 = stem"
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
    input_size: int | None = Field(None, ge=32, le=2048, description="crop size, multiple of 32")
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

    @model_validator(mode="after")
    def _check_combinations(self) -> Self:
        if self.backbone not in available_backbones():
            raise ValueError(f"backbone {self.backbone!r} not in {available_backbones()}")
        if self.objective == "cls_distill" and self.num_classes is None:
            raise ValueError("objective cls_distill needs num_classes")
        if self.objective == "simmim_distill" and backbone_family(self.backbone) != "swin":
            raise ValueError("simmim_distill needs a Swin backbone (mask tokens on patches)")
        if self.stages is not None and (
            not self.stages or any(not 0 <= s <= 4 for s in self.stages)
        ):
            raise ValueError(f"stages {self.stages} must be a non-empty subset of 0..4")
        if self.input_size is not None and self.input_size % 32:
            raise ValueError(f"input_size {self.input_size} must be a multiple of 32")
        return self


@dataclass(frozen=True)
class _Recipe:
    batch_size: int
    optimizer: Literal["sgd", "adamw"]
    lr: float
    weight_decay: float
    schedule: Literal["multistep", "cosine", "constant"]
    milestones: tuple[int, ...]
    warmup_epochs: float
    warmup_factor: float
    grad_clip: float
    input_size: int
    resize_base: int
    label_smoothing: float
    drop_path_rate: float | None


# agssp-spec §4.4 (per-GPU batches of the 2-GPU configs; lr as configured, not rescaled).
_CONV = _Recipe(
    batch_size=1024, optimizer="sgd", lr=0.01, weight_decay=1e-4, schedule="multistep",
    milestones=(60, 90, 180), warmup_epochs=0.0, warmup_factor=1e-3, grad_clip=0.0,
    input_size=224, resize_base=512, label_smoothing=0.0, drop_path_rate=None,
)  # fmt: skip
_SWIN = _Recipe(
    batch_size=320, optimizer="adamw", lr=6.25e-4, weight_decay=0.05, schedule="cosine",
    milestones=(), warmup_epochs=20.0, warmup_factor=1e-3, grad_clip=5.0,
    input_size=224, resize_base=512, label_smoothing=0.1, drop_path_rate=0.5,
)  # fmt: skip
# Drop path 0.1 for SimMIM is mmpretrain's Swin default; the spec does not state it.
_SIMMIM = _Recipe(
    batch_size=224, optimizer="adamw", lr=8.75e-5, weight_decay=0.05, schedule="multistep",
    milestones=(80,), warmup_epochs=10.0, warmup_factor=5e-3, grad_clip=5.0,
    input_size=192, resize_base=400, label_smoothing=0.0, drop_path_rate=0.1,
)  # fmt: skip
# Task loss weights of §4.4/4.5: CE 0.1 (CSP, R50), CE 0.0 (Swin-cls), L1 1.0 (SimMIM);
# MoCo v3 has no released config, so its contrastive loss keeps weight 1.
_TASK_WEIGHT = {"conv": 0.1, "swin": 0.0}


def resolve_config(cfg: AgbpConfig) -> AgbpConfig:
    """Fill every None field (except mean/std) from the backbone's recipe.

    Raises:
        InvalidInputError: the resolved combination distils only frozen stages.
    """
    family = backbone_family(cfg.backbone)
    recipe = _SIMMIM if cfg.objective == "simmim_distill" else _SWIN if family == "swin" else _CONV
    distill = distill_defaults(cfg.backbone)
    task_weight = _TASK_WEIGHT["swin" if family == "swin" else "conv"]
    if cfg.objective in ("mocov3_distill", "simmim_distill"):
        task_weight = 1.0
    defaults = asdict(recipe) | {
        "stages": distill.stages,
        "frozen_stages": distill.frozen_stages,
        "loss": distill.loss,
        "distill_weight": distill.weight,
        "task_weight": task_weight,
    }
    updates = {k: v for k, v in defaults.items() if getattr(cfg, k) is None}
    resolved = cfg.model_copy(update=updates)
    stages, frozen = distilled_stages(resolved), frozen_stage_count(resolved)
    if frozen >= max(stages):
        raise InvalidInputError(
            f"frozen_stages {frozen} freezes every distilled stage {stages}; nothing would train"
        )
    return resolved


def distilled_stages(cfg: AgbpConfig) -> tuple[int, ...]:
    """The distilled stages of a config, resolved from the recipe when unset."""
    return distill_defaults(cfg.backbone).stages if cfg.stages is None else cfg.stages


def frozen_stage_count(cfg: AgbpConfig) -> int:
    """``frozen_stages`` of a config, resolved from the recipe when unset."""
    if cfg.frozen_stages is None:
        return distill_defaults(cfg.backbone).frozen_stages
    return cfg.frozen_stages


def required(value: T | None, name: str) -> T:
    """A field of a resolved config; None means ``resolve_config`` was skipped."""
    if value is None:
        raise ValueError(f"config field {name!r} is unset; call resolve_config first")
    return value
