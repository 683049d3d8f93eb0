"""Stage I, DNP: D learns to segment G's synthetic anomalies from F's features (tocoad-spec §5)."""

from __future__ import annotations

import math
from collections.abc import Mapping
from typing import Any

import numpy as np
import torch
from sklearn.metrics import roc_auc_score
from torch import Tensor

from .backbone import ResNetFeatures
from .common import (
    TrainContext,
    cpu_copy,
    cpu_state,
    make_checkpoint,
    restore_rng,
    run_steps,
)
from .data import normalise, to_unit_tensor
from .discriminator import Discriminator
from .losses import dice_loss, focal_loss

STAGE = "stage1"


def trains_backbone(ctx: TrainContext) -> bool:
    """Stage I trains F jointly with D exactly when F has no pretrained weights (§5, §9)."""
    choice = ctx.cfg.stage1.train_backbone
    return not ctx.cfg.pretrained if choice == "auto" else bool(choice)


def _loss(ctx: TrainContext, logits: Tensor, mask: Tensor) -> Tensor:
    cfg = ctx.cfg.stage1
    loss = focal_loss(logits, mask, cfg.focal_alpha, cfg.focal_gamma)
    if cfg.dice_weight > 0:
        loss = loss + cfg.dice_weight * dice_loss(logits, mask)
    return loss


class _Validation:
    """Fixed synthetic images (own seed) for a loss / pixel-AUROC curve; never for selection."""

    def __init__(self, ctx: TrainContext) -> None:
        rng = np.random.default_rng(ctx.cfg.seed + 1)
        count = ctx.cfg.stage1.val_size
        picks = ctx.normals[rng.integers(len(ctx.normals), size=count)]
        self.images, self.masks = picks, np.zeros((0, *picks.shape[1:3]), np.float32)
        if count:
            self.images, self.masks = ctx.generator.batch(picks, rng)

    @torch.no_grad()
    def __call__(
        self, ctx: TrainContext, backbone: ResNetFeatures, disc: Discriminator
    ) -> dict[str, float]:
        if len(self.images) == 0:
            return {}
        backbone.eval()
        disc.eval()
        losses, probs = [], []
        size, step = ctx.cfg.image_size, ctx.cfg.stage1.batch_size
        for start in range(0, len(self.images), step):
            x, mask = _tensors(
                ctx, self.images[start : start + step], self.masks[start : start + step]
            )
            logits = disc(backbone(x, disc.input_layers), size)
            losses.append(_loss(ctx, logits, mask).item() * len(x))
            probs.append(logits.softmax(1)[:, 1].cpu().numpy())
        metrics = {"val_loss": sum(losses) / len(self.images)}
        truth = self.masks.reshape(-1) > 0.5
        if 0 < truth.sum() < truth.size:
            metrics["val_pixel_auroc"] = float(
                roc_auc_score(truth, np.concatenate(probs).reshape(-1))
            )
        return metrics


def _tensors(ctx: TrainContext, images: np.ndarray, masks: np.ndarray) -> tuple[Tensor, Tensor]:
    return normalise(to_unit_tensor(images, ctx.device)), torch.from_numpy(masks).to(ctx.device)


class _Trainer:
    """Stage I state: networks, optimiser, LR schedule, loss average, validation set."""

    def __init__(self, ctx: TrainContext, backbone: ResNetFeatures, disc: Discriminator) -> None:
        cfg = ctx.cfg.stage1
        self.ctx, self.backbone, self.disc = ctx, backbone, disc
        self.train_f = trains_backbone(ctx)
        backbone.requires_grad_(self.train_f)
        params = list(disc.parameters()) + (list(backbone.parameters()) if self.train_f else [])
        self.optimizer = torch.optim.Adam(params, lr=cfg.lr, betas=(0.9, 0.999))
        # tocoad-spec §5: step decay x0.2 at 80 % and 90 % of the schedule (DRAEM).
        milestones = [max(1, int(m * cfg.iters)) for m in cfg.milestones]
        self.scheduler = torch.optim.lr_scheduler.MultiStepLR(
            self.optimizer, milestones, gamma=cfg.lr_decay
        )
        self.ema = math.nan
        self.validate = _Validation(ctx)

    def resume(self, state: Mapping[str, Any]) -> int:
        self.optimizer.load_state_dict(state["optimizer"])
        self.scheduler.load_state_dict(state["scheduler"])
        restore_rng(self.ctx.rng, state["rng"])
        self.ema = float(state["stage1_loss"])
        return int(state["step"])

    def step(self, done: int) -> dict[str, float]:
        ctx, cfg = self.ctx, self.ctx.cfg.stage1
        x, mask = ctx.synthesize(ctx.sample_normals(cfg.batch_size))
        self.backbone.train(self.train_f)
        self.disc.train()
        with torch.set_grad_enabled(self.train_f):
            feats = self.backbone(x, self.disc.input_layers)
        loss = _loss(ctx, self.disc(feats, ctx.cfg.image_size), mask)
        self.optimizer.zero_grad(set_to_none=True)
        torch.autograd.backward(loss)
        self.optimizer.step()
        self.scheduler.step()
        value = loss.item()
        self.ema = value if math.isnan(self.ema) else 0.98 * self.ema + 0.02 * value
        metrics = {"loss": value, "loss_ema": self.ema, "mask_coverage": mask.mean().item()}
        if done % cfg.val_every == 0 or done == cfg.iters:
            metrics |= self.validate(ctx, self.backbone, self.disc)
        return metrics

    def snapshot(self, step: int) -> dict[str, Any]:
        return make_checkpoint(
            self.ctx,
            STAGE,
            step,
            backbone=cpu_state(self.backbone),
            discriminator=cpu_state(self.disc),
            optimizer=cpu_copy(self.optimizer.state_dict()),
            scheduler=self.scheduler.state_dict(),
            stage1_loss=self.ema,
        )


def run_stage1(
    ctx: TrainContext,
    backbone: ResNetFeatures,
    disc: Discriminator,
    resume: Mapping[str, Any] | None = None,
) -> float:
    """Train D (and F from scratch) with the focal loss on synthetic anomalies.

    Args:
        ctx: run context (config, data, G, RNG, hooks).
        backbone: F, already on ``ctx.device`` (and loaded from ``resume`` if any).
        disc: D, likewise.
        resume: a stage-1 checkpoint whose optimiser, scheduler, RNG and step continue here.

    Returns:
        Exponential moving average of the training loss at the end (Stage II's reference).

    Raises:
        JobCanceledError: when ``hooks.should_stop()`` turns true (after a checkpoint).
    """
    trainer = _Trainer(ctx, backbone, disc)
    start = trainer.resume(resume) if resume is not None else 0
    run_steps(ctx, STAGE, start, ctx.cfg.stage1.iters, trainer.step, trainer.snapshot)
    backbone.requires_grad_(True)
    return trainer.ema
