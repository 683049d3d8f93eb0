"""Optimiser construction and the learning-rate schedule of AGBP (agssp-spec §4.4)."""

from __future__ import annotations

import math

from torch import nn
from torch.optim import SGD, AdamW, Optimizer

from services.pretrain.ml.agbp_config import required
from services.pretrain.params import AgbpConfig

# agssp-spec §4.4: Swin runs decay neither norms/biases nor position tables; mask_token is
# SimMIM's learnable token, which mmpretrain's SimMIM configs also exempt.
_NO_DECAY_NAMES = ("relative_position_bias_table", "absolute_pos_embed", "mask_token")


def build_optimizer(model: nn.Module, cfg: AgbpConfig) -> Optimizer:
    """SGD (momentum) or AdamW over the trainable parameters of ``model``.

    AdamW exempts 1-D parameters (norms, biases) and position tables from weight decay;
    SGD decays everything, as the CSPDarknet/ResNet configs.
    """
    weight_decay = required(cfg.weight_decay, "weight_decay")
    decay: list[nn.Parameter] = []
    no_decay: list[nn.Parameter] = []
    for name, param in model.named_parameters():
        if not param.requires_grad:
            continue
        exempt = param.ndim <= 1 or any(key in name for key in _NO_DECAY_NAMES)
        (no_decay if cfg.optimizer == "adamw" and exempt else decay).append(param)
    groups = [
        {"params": params, "weight_decay": wd}
        for params, wd in ((decay, weight_decay), (no_decay, 0.0))
        if params
    ]
    lr = required(cfg.lr, "lr")
    if required(cfg.optimizer, "optimizer") == "sgd":
        return SGD(groups, lr=lr, momentum=cfg.momentum)
    return AdamW(groups, lr=lr, betas=cfg.betas, eps=1e-8)


def get_lr(step: int, cfg: AgbpConfig, steps_per_epoch: int) -> float:
    """Learning rate of optimisation step ``step`` (0-based).

    Linear warm-up per iteration from ``warmup_factor * lr``; then ``multistep`` (gamma at
    each milestone epoch), ``cosine`` (to ``min_lr`` at the last step) or ``constant``.
    """
    base = required(cfg.lr, "lr")
    warm_steps = round(required(cfg.warmup_epochs, "warmup_epochs") * steps_per_epoch)
    warm = 1.0
    if step < warm_steps:
        start = required(cfg.warmup_factor, "warmup_factor")
        warm = start + (1.0 - start) * step / warm_steps
    schedule = required(cfg.schedule, "schedule")
    if schedule == "multistep":
        epoch = step // steps_per_epoch
        passed = sum(1 for m in required(cfg.milestones, "milestones") if epoch >= m)
        return base * cfg.gamma**passed * warm
    if schedule == "cosine":
        if step < warm_steps:
            return base * warm
        total = cfg.epochs * steps_per_epoch
        progress = (step - warm_steps) / max(total - warm_steps, 1)
        return cfg.min_lr + (base - cfg.min_lr) * 0.5 * (1.0 + math.cos(math.pi * progress))
    return base * warm
