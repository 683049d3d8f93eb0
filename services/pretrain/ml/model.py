"""Builds the AGBP objective module named by a resolved configuration."""

from __future__ import annotations

from services.pretrain.ml.agbp_config import required
from services.pretrain.ml.distill import DistillHead
from services.pretrain.ml.moco import MocoV3DistillObjective
from services.pretrain.ml.objectives import (
    AgbpObjective,
    ClsDistillObjective,
    DistillObjective,
    LossBalancer,
)
from services.pretrain.ml.simmim import SimMIMDistillObjective
from services.pretrain.params import AgbpConfig
from shared.ml.backbones import Backbone


def build_objective(cfg: AgbpConfig, backbone: Backbone) -> AgbpObjective:
    """The objective module of a resolved config around ``backbone``."""
    head = DistillHead(required(cfg.loss, "loss"), cfg.map_resize)
    balancer = LossBalancer(
        cfg.weight_mode,
        distill_weight=required(cfg.distill_weight, "distill_weight"),
        task_weight=required(cfg.task_weight, "task_weight"),
    )
    if cfg.objective == "distill":
        return DistillObjective(backbone, head, balancer)
    if cfg.objective == "cls_distill":
        return ClsDistillObjective(
            backbone,
            head,
            balancer,
            num_classes=required(cfg.num_classes, "num_classes"),
            label_smoothing=required(cfg.label_smoothing, "label_smoothing"),
        )
    if cfg.objective == "mocov3_distill":
        return MocoV3DistillObjective(
            backbone,
            head,
            balancer,
            dim=cfg.moco_dim,
            hidden_dim=cfg.moco_hidden_dim,
            temperature=cfg.moco_temperature,
            base_momentum=cfg.moco_momentum,
        )
    return SimMIMDistillObjective(
        backbone, head, balancer, mask_ratio=cfg.mask_ratio, mask_patch_size=cfg.mask_patch_size
    )
