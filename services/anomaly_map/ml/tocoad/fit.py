"""Single entry point for the service layer: train ToCoAD end to end on normal images."""

from __future__ import annotations

import math
import time
from collections.abc import Callable, Mapping, Sequence
from typing import Any

import numpy as np
import torch

from services.anomaly_map.params.tocoad import TocoadConfig
from shared.ml.device import resolve_device, seed_everything
from shared.ml.hooks import TrainHooks

from .backbone import ResNetFeatures, create_backbone, load_backbone_weights
from .common import (
    TrainContext,
    check_resume,
    cpu_state,
    make_checkpoint,
    phase_spans,
    stop_if_requested,
)
from .data import resize_images
from .defects import DefectExemplar, NativeSample
from .discriminator import Discriminator
from .generator import AnomalyGenerator
from .model import TocoadModel, build_memory_bank
from .stage1 import run_stage1
from .stage2 import run_stage2


def _networks(cfg: TocoadConfig, device: torch.device) -> tuple[ResNetFeatures, Discriminator]:
    backbone = create_backbone(cfg.backbone)
    if cfg.backbone_weights is not None:
        load_backbone_weights(backbone, cfg.backbone_weights)
    disc = Discriminator(backbone.channels, backbone.is_bottleneck, cfg.use_f2_skip)
    return backbone.to(device), disc.to(device)


def _resume(
    state: Mapping[str, Any] | None,
    cfg: TocoadConfig,
    backbone: ResNetFeatures,
    disc: Discriminator,
) -> tuple[str | None, float]:
    """Load the networks of a checkpoint; returns (its stage, Stage I's final loss)."""
    if state is None:
        return None, math.nan
    check_resume(state, cfg)
    backbone.load_state_dict(state["backbone"])
    disc.load_state_dict(state["discriminator"])
    return str(state["stage"]), float(state["stage1_loss"])


def fit_tocoad(
    images: Sequence[np.ndarray],
    cfg: TocoadConfig,
    *,
    hooks: TrainHooks | None = None,
    device: torch.device | str = "auto",
    textures: Sequence[np.ndarray] | None = None,
    after_stage1: Callable[[ResNetFeatures, Discriminator], None] | None = None,
    defects: Sequence[DefectExemplar] = (),
    natives: Sequence[NativeSample] = (),
) -> TocoadModel:
    """Train ToCoAD (Stage I DNP, Stage II NCL) and build the memory bank.

    Args:
        images: normal training images, each (H, W, 3) uint8 RGB; resized to S x S.
        cfg: run configuration.
        hooks: progress, cancel, checkpoint and resume callbacks; ``hooks.resume_state`` must be
            a checkpoint this function handed to ``on_checkpoint`` under the same config.
        device: torch device or a setting for ``resolve_device`` ('auto', 'cpu', 'cuda:0').
        textures: optional anomaly-source textures (HxWx3 uint8, e.g. DTD read by the caller);
            None uses procedural + self-sourced textures (tocoad-spec §3).
        after_stage1: called with (F, D) once Stage I is done (benchmarks snapshot the
            Stage-I-only and bank-only variants here); must not change them.
        defects: labelled defect exemplars (``defects.exemplars_from_mask`` / ``_from_boxes``)
            that Stage I pastes onto the normals besides its synthetic anomalies.
        natives: labelled images at the model's scale with their targets
            (``defects.natives_from_mask`` / ``_from_boxes``): ``cfg.generator.p_native`` of
            Stage I's samples are one of them.

    Returns:
        The trained model (F in eval mode + coreset memory bank).

    Raises:
        InvalidInputError: bad images, weights file or resume state.
        JobCanceledError: ``hooks.should_stop()`` turned true (a checkpoint was saved first).
    """
    hooks = hooks or TrainHooks()
    started = time.monotonic()
    target = device if isinstance(device, torch.device) else resolve_device(device)
    seed_everything(cfg.seed)
    hooks.on_progress(0.0, f"preparing {len(images)} images at {cfg.image_size} px", {})
    normals = resize_images(images, cfg.image_size, cfg.aspect)
    backbone, disc = _networks(cfg, target)
    hooks.on_progress(0.0, "building anomaly textures", {})
    generator = AnomalyGenerator(
        cfg.generator, cfg.image_size, normals, textures, cfg.seed, defects=defects, natives=natives
    )
    ctx = TrainContext(cfg, target, normals, generator, np.random.default_rng(cfg.seed), hooks)
    ctx.started = started
    spans = phase_spans(cfg, len(normals))
    stage, stage1_loss = _resume(hooks.resume_state, cfg, backbone, disc)
    if stage != "stage2":
        ctx.span = spans["stage1"]
        stage1_loss = run_stage1(ctx, backbone, disc, hooks.resume_state if stage else None)
    if after_stage1 is not None:
        after_stage1(backbone, disc)
    ctx.span = spans["stage2"]
    run_stage2(ctx, backbone, disc, stage1_loss, hooks.resume_state if stage == "stage2" else None)
    ctx.span = spans["bank"]
    stop_if_requested(ctx, lambda: _final_checkpoint(ctx, backbone, disc, stage1_loss))
    bank = build_memory_bank(
        backbone, normals, cfg, target, lambda f: ctx.progress(f, "memory bank", {})
    )
    return TocoadModel(cfg, backbone, bank, disc if cfg.needs_discriminator else None, target)


def _final_checkpoint(
    ctx: TrainContext, backbone: ResNetFeatures, disc: Discriminator, stage1_loss: float
) -> dict[str, Any]:
    # A stage-2 checkpoint at its last step: resuming skips both loops and rebuilds the bank.
    return make_checkpoint(
        ctx,
        "stage2",
        ctx.cfg.stage2.iters,
        backbone=cpu_state(backbone),
        discriminator=cpu_state(disc),
        heads={},
        optimizer=None,
        scheduler=None,
        stage1_loss=stage1_loss,
    )
