"""The AGBP recipe: what unset fields of an ``AgbpConfig`` become for its backbone.

Unset (None) fields take the reference recipe of agssp-spec §4.4 for the chosen backbone and
objective; ``resolve_config`` fills them so the saved config is complete. The config model
itself is torch-free (``services.pretrain.params``), so the API validates with it.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Literal, TypeVar

from services.pretrain.ml.distill import distill_defaults
from services.pretrain.params import AgbpConfig, check_trainable
from shared.schemas.backbones import backbone_spec, family_traits

T = TypeVar("T")


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
        InvalidInputError: the resolved combination distils only frozen stages, or
            ``cls_distill`` has no ``num_classes``.
    """
    spec = backbone_spec(cfg.backbone)
    simmim = cfg.objective == "simmim_distill"
    column = family_traits(cfg.backbone).recipe
    recipe = _SIMMIM if simmim else _SWIN if column == "swin" else _CONV
    distill = distill_defaults(cfg.backbone)
    task_weight = _TASK_WEIGHT[column]
    if cfg.objective in ("mocov3_distill", "simmim_distill"):
        task_weight = 1.0
    defaults = asdict(recipe) | {
        "input_size": recipe.input_size if simmim else spec.input_size,
        "stages": distill.stages,
        "frozen_stages": distill.frozen_stages,
        "loss": distill.loss,
        "distill_weight": distill.weight,
        "task_weight": task_weight,
    }
    updates = {k: v for k, v in defaults.items() if getattr(cfg, k) is None}
    resolved = cfg.model_copy(update=updates)
    check_trainable(resolved)
    return resolved


def distilled_stages(cfg: AgbpConfig) -> tuple[int, ...]:
    """The distilled stages of a config, resolved from the recipe when unset."""
    return cfg.distilled_stages()


def frozen_stage_count(cfg: AgbpConfig) -> int:
    """``frozen_stages`` of a config, resolved from the recipe when unset."""
    return cfg.frozen_stage_count()


def required(value: T | None, name: str) -> T:
    """A field of a resolved config; None means ``resolve_config`` was skipped."""
    if value is None:
        raise ValueError(f"config field {name!r} is unset; call resolve_config first")
    return value
