"""Stage II, NCL: SimSiam fine-tuning of F guided by the frozen D (tocoad-spec §6)."""

from __future__ import annotations

import logging
import math
from collections.abc import Callable, Mapping
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from .backbone import LAYERS, ResNetFeatures
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
from .heads import build_heads, get_head
from .losses import focal_loss, simsiam_loss
from .views import make_views

STAGE = "stage2"
_FROZEN_L34 = ("conv1", "bn1", "layer1", "layer2")
logger = logging.getLogger(__name__)


def _settings(ctx: TrainContext) -> tuple[bool, bool, float]:
    """(train all of F, BN in train mode, backbone lr), resolving the 'auto' choices (§6, §9)."""
    cfg, pretrained = ctx.cfg.stage2, ctx.cfg.pretrained
    train_all = cfg.train_layers == "all" or (cfg.train_layers == "auto" and not pretrained)
    bn_train = cfg.bn_mode == "train" or (cfg.bn_mode == "auto" and not pretrained)
    lr = cfg.lr_backbone if cfg.lr_backbone is not None else (1.0e-5 if pretrained else 1.0e-4)
    return train_all, bn_train, lr


def _set_modes(backbone: ResNetFeatures, train_all: bool, bn_train: bool) -> None:
    backbone.train(bn_train)
    if not train_all:
        # Frozen stem/layer1/layer2 also keep their BN statistics (the bank reads layer2).
        for name in _FROZEN_L34:
            getattr(backbone, name).eval()


def _optimizer(
    ctx: TrainContext, backbone: ResNetFeatures, heads: nn.ModuleDict, train_all: bool, lr: float
) -> tuple[torch.optim.Optimizer, torch.optim.lr_scheduler.LambdaLR]:
    cfg = ctx.cfg.stage2
    for name in _FROZEN_L34:
        getattr(backbone, name).requires_grad_(train_all)
    f_params = [p for p in backbone.parameters() if p.requires_grad]
    projectors = [p for n in heads for p in get_head(heads, n).projector.parameters()]
    predictors = [p for n in heads for p in get_head(heads, n).predictor.parameters()]
    optimizer = torch.optim.Adam(
        [
            {"params": f_params, "lr": lr},
            {"params": projectors, "lr": cfg.lr_heads},
            {"params": predictors, "lr": cfg.lr_heads},
        ],
        weight_decay=cfg.weight_decay,
    )
    total = max(1, cfg.iters)

    def cosine(step: int) -> float:
        return 0.5 * (1.0 + math.cos(math.pi * min(step, total) / total))

    def constant(step: int) -> float:
        return 1.0

    # SimSiam's fix-pred-lr: the predictor keeps a constant rate while the rest decays.
    schedule: list[Callable[[int], float]] = [cosine, cosine, constant]
    return optimizer, torch.optim.lr_scheduler.LambdaLR(optimizer, schedule)


def _repulsion(
    ctx: TrainContext,
    heads: nn.ModuleDict,
    feats: Mapping[str, Tensor],
    mask: Tensor,
    preds: Mapping[str, Tensor],
) -> Tensor:
    """Mechanism B (§6 step 6): normal-view predictions must not point at anomaly embeddings."""
    has = mask.flatten(1).amax(1) > 0
    total = mask.new_zeros(())
    if not bool(has.any()):
        return total
    for name in ctx.cfg.stage2.layers:
        f = feats[name][has]
        weight = F.interpolate(mask[has][:, None], size=f.shape[-2:], mode="area")
        pooled = (f * weight).sum((2, 3)) / weight.sum((2, 3)).clamp_min(1e-6)
        projector = get_head(heads, name).projector
        was_training = projector.training
        projector.eval()  # a batch of 1 negative cannot use batch statistics
        with torch.no_grad():
            z_neg = projector(pooled)
        projector.train(was_training)
        cos = F.cosine_similarity(preds[name][:, None, :], z_neg[None, :, :], dim=-1)
        total = total + F.relu(cos - ctx.cfg.stage2.rep_margin).mean()
    return total


def _losses(
    ctx: TrainContext, backbone: ResNetFeatures, disc: Discriminator, heads: nn.ModuleDict
) -> tuple[Tensor, dict[str, float]]:
    cfg, batch = ctx.cfg.stage2, ctx.cfg.stage2.batch_size
    normals = ctx.sample_normals(batch)
    unit = to_unit_tensor(normals, ctx.device)
    v1 = normalise(make_views(unit, ctx.rng, cfg.texture_category))
    v2 = normalise(make_views(unit, ctx.rng, cfg.texture_category))
    x_syn, mask = ctx.synthesize(normals)
    needed = sorted(set(cfg.layers) | set(disc.input_layers), key=LAYERS.index)
    # One forward over the 3B images (tocoad-spec §6 step 3).
    feats = backbone(torch.cat([v1, v2, x_syn]), needed)
    l_sim, z_std = unit.new_zeros(()), 0.0
    preds: dict[str, Tensor] = {}
    for name in cfg.layers:
        pooled = feats[name].mean((2, 3))
        z1, p1 = heads[name](pooled[:batch])
        z2, p2 = heads[name](pooled[batch : 2 * batch])
        l_sim = l_sim + simsiam_loss(p1, z1, p2, z2)
        preds[name] = p1
        z_std += F.normalize(z1.detach(), dim=1).std(0).mean().item() / len(cfg.layers)
    syn_feats = {k: v[2 * batch :] for k, v in feats.items()}
    # Mechanism A: D is frozen but the graph through it stays, so L_neg's gradient reaches F.
    l_neg = focal_loss(
        disc(syn_feats, ctx.cfg.image_size),
        mask,
        ctx.cfg.stage1.focal_alpha,
        ctx.cfg.stage1.focal_gamma,
    )
    loss = l_sim + cfg.lambda_neg * l_neg
    metrics = {"l_sim": l_sim.item(), "l_neg": l_neg.item(), "z_std": z_std}
    if cfg.explicit_negatives:
        l_rep = _repulsion(ctx, heads, syn_feats, mask, preds)
        loss = loss + cfg.lambda_rep * l_rep
        metrics["l_rep"] = l_rep.item()
    return loss, metrics


def _health(ctx: TrainContext, metrics: dict[str, float], stage1_loss: float) -> None:
    # tocoad-spec §6: z std near 1/sqrt(d) means no collapse; L_neg must stay < 1.5 x Stage I.
    metrics["z_std_ref"] = 1.0 / math.sqrt(ctx.cfg.stage2.proj_dim)
    if not math.isnan(stage1_loss) and metrics["l_neg"] > 1.5 * stage1_loss:
        logger.warning(
            "stage2 L_neg %.4f exceeds 1.5 x stage1 loss %.4f; consider a larger lambda_neg",
            metrics["l_neg"],
            stage1_loss,
        )


class _Trainer:
    """Stage II state: heads, optimiser with three LR groups, resolved auto settings."""

    def __init__(
        self, ctx: TrainContext, backbone: ResNetFeatures, disc: Discriminator, stage1_loss: float
    ) -> None:
        cfg = ctx.cfg.stage2
        self.ctx, self.backbone, self.disc, self.stage1_loss = ctx, backbone, disc, stage1_loss
        self.train_all, self.bn_train, lr = _settings(ctx)
        self.heads = build_heads(
            backbone.channels, cfg.layers, cfg.proj_dim, cfg.pred_dim, cfg.proj_hidden_ratio
        ).to(ctx.device)
        self.optimizer, self.scheduler = _optimizer(ctx, backbone, self.heads, self.train_all, lr)

    def resume(self, state: Mapping[str, Any]) -> int:
        self.heads.load_state_dict(state["heads"])
        self.optimizer.load_state_dict(state["optimizer"])
        self.scheduler.load_state_dict(state["scheduler"])
        restore_rng(self.ctx.rng, state["rng"])
        return int(state["step"])

    def step(self, done: int) -> dict[str, float]:
        _set_modes(self.backbone, self.train_all, self.bn_train)
        self.heads.train()
        loss, metrics = _losses(self.ctx, self.backbone, self.disc, self.heads)
        self.optimizer.zero_grad(set_to_none=True)
        torch.autograd.backward(loss)
        self.optimizer.step()
        self.scheduler.step()
        if done % self.ctx.cfg.log_every == 0:
            _health(self.ctx, metrics, self.stage1_loss)
        return metrics

    def snapshot(self, step: int) -> dict[str, Any]:
        return make_checkpoint(
            self.ctx,
            STAGE,
            step,
            backbone=cpu_state(self.backbone),
            discriminator=cpu_state(self.disc),
            heads=cpu_state(self.heads),
            optimizer=cpu_copy(self.optimizer.state_dict()),
            scheduler=self.scheduler.state_dict(),
            stage1_loss=self.stage1_loss,
        )


def run_stage2(
    ctx: TrainContext,
    backbone: ResNetFeatures,
    disc: Discriminator,
    stage1_loss: float,
    resume: Mapping[str, Any] | None = None,
) -> None:
    """Fine-tune F with SimSiam + the frozen-D negative guidance, in place.

    Args:
        ctx: run context.
        backbone: F after Stage I (updated in place, left in eval mode).
        disc: D after Stage I; frozen here (eval mode, no parameter updates).
        stage1_loss: Stage I's final loss, the reference of the L_neg health check.
        resume: a stage-2 checkpoint to continue from (heads, optimiser, RNG, step).

    Raises:
        JobCanceledError: when ``hooks.should_stop()`` turns true (after a checkpoint).
    """
    disc.requires_grad_(False)
    disc.eval()
    if resume is not None and int(resume["step"]) >= ctx.cfg.stage2.iters:
        # A finished stage (e.g. the checkpoint saved just before the bank): nothing to redo.
        restore_rng(ctx.rng, resume["rng"])
    else:
        trainer = _Trainer(ctx, backbone, disc, stage1_loss)
        start = trainer.resume(resume) if resume is not None else 0
        run_steps(ctx, STAGE, start, ctx.cfg.stage2.iters, trainer.step, trainer.snapshot)
    backbone.requires_grad_(True)
    backbone.eval()
