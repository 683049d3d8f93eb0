"""AGBP training loop, in nanoGPT's reading order: config, model, data, resume, loop.

I/O goes through ``TrainHooks`` (progress, checkpoints, cancel); DDP is used when a process
group is initialised, one process otherwise.
"""

from __future__ import annotations

import copy
import logging
import time
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.distributed as dist
from torch import Tensor, nn
from torch.nn.parallel import DistributedDataParallel
from torch.utils.data import DataLoader

from services.pretrain.ml.agbp_config import required, resolve_config
from services.pretrain.ml.augment import AugmentConfig, compute_mean_std, normalize_images
from services.pretrain.ml.checkpoint import (
    CHECKPOINT_FORMAT,
    check_same_run,
    detached,
    export_weights,
    restore_rng,
    rng_state,
)
from services.pretrain.ml.data import (
    AgbpDataset,
    DecodedPairCache,
    PairSource,
    ResumableSampler,
)
from services.pretrain.ml.model import build_objective
from services.pretrain.ml.objectives import AgbpObjective, Batch
from services.pretrain.ml.optim import build_optimizer, get_lr
from services.pretrain.params import AgbpConfig
from shared.errors import InvalidInputError
from shared.ml.backbones import create_backbone
from shared.ml.device import seed_everything
from shared.ml.hooks import TrainHooks

logger = logging.getLogger(__name__)

# Decoded images and maps kept in memory between epochs (see ``DecodedPairCache``).
DECODED_CACHE_BYTES = 1 << 30


@dataclass(frozen=True)
class AgbpResult:
    """Outcome of ``train_agbp``.

    Attributes:
        state_dict: backbone weights; ultralytics detector keys for CSPDarknet backbones.
        history: one entry per finished epoch: ``epoch``, ``lr``, mean ``loss``, ``distill``
            and (when the objective has one) ``task``.
        config: the resolved configuration (no None left except unused options).
        steps: optimisation steps done in total, resumed ones included.
        stopped: True when ``hooks.should_stop`` ended the run early.
    """

    state_dict: dict[str, Tensor]
    history: list[dict[str, float]]
    config: AgbpConfig
    steps: int
    stopped: bool


@dataclass
class _Run:
    cfg: AgbpConfig
    objective: AgbpObjective
    model: nn.Module
    optimizer: torch.optim.Optimizer
    scaler: torch.amp.GradScaler
    dataset: AgbpDataset
    sampler: ResumableSampler
    device: torch.device
    steps_per_epoch: int
    rank: int
    world: int
    step: int = 0
    last_saved: int = -1
    saved_at: float = field(default_factory=time.monotonic)  # the last checkpoint, or the start
    history: list[dict[str, float]] = field(default_factory=list)
    # Per-loss sums of the epoch so far, float64 on the device: adding there needs no host
    # sync per step, and gives the same values as summing Python floats (doubles).
    sums: dict[str, Tensor] = field(default_factory=dict)
    batches: int = 0
    trainable: list[nn.Parameter] = field(default_factory=list)

    @property
    def total_steps(self) -> int:
        return self.cfg.epochs * self.steps_per_epoch

    @property
    def batch_size(self) -> int:
        return required(self.cfg.batch_size, "batch_size")


def train_agbp(
    cfg: AgbpConfig,
    data: PairSource,
    *,
    hooks: TrainHooks,
    device: torch.device,
    weights: Path | Mapping[str, Tensor] | None = None,
    decoded_cache_bytes: int = DECODED_CACHE_BYTES,
) -> AgbpResult:
    """Pretrain a backbone with anomaly-map guidance (AGBP).

    Args:
        cfg: experiment configuration; unset fields take the backbone's recipe.
        data: image/map/label triples.
        hooks: progress, checkpoint, cancel and resume callbacks.
        device: from ``shared.ml.device.resolve_device``.
        weights: start weights of the backbone (e.g. ImageNet); ignored when resuming.
        decoded_cache_bytes: decoded pairs kept in memory after their first read when the
            data loads in this process (``num_workers`` 0); 0 decodes every read.

    Returns:
        Weights, per-epoch loss history and the resolved config.

    Raises:
        InvalidInputError: bad config, too few pairs, or a resume state of another run.
    """
    # -- configuration
    cfg = resolve_config(cfg)
    if cfg.num_workers == 0 and decoded_cache_bytes > 0:
        data = DecodedPairCache(data, decoded_cache_bytes)
    cfg = _with_statistics(cfg, data)
    rank, world = _dist_info()
    # -- model, optimiser, data (same initial weights on every rank, incl. MoCo's EMA copy)
    seed_everything(cfg.seed)
    run = _setup(cfg, data, device, rank, world, weights)
    seed_everything(cfg.seed + rank)  # masks and drop path differ per rank
    # -- resume
    if hooks.resume_state is not None:
        _restore(run, hooks.resume_state)
    # -- training loop
    for epoch in range(run.step // run.steps_per_epoch, cfg.epochs):
        if _run_epoch(run, epoch, hooks):
            return _result(run, stopped=True)
    return _result(run, stopped=False)


def _setup(
    cfg: AgbpConfig,
    data: PairSource,
    device: torch.device,
    rank: int,
    world: int,
    weights: Path | Mapping[str, Tensor] | None,
) -> _Run:
    batch_size = required(cfg.batch_size, "batch_size")
    if len(data) < batch_size * world:
        raise InvalidInputError(
            f"{len(data)} pairs cannot fill one batch of {batch_size} on {world} process(es)"
        )
    backbone = create_backbone(
        cfg.backbone,
        weights=weights,
        frozen_stages=required(cfg.frozen_stages, "frozen_stages"),
        out_indices=required(cfg.stages, "stages"),
        img_size=required(cfg.input_size, "input_size"),
        drop_path_rate=cfg.drop_path_rate,
    )
    objective = build_objective(cfg, backbone).to(device)
    model: nn.Module = objective
    if world > 1:
        # agssp-spec §4.4 misc: find_unused_parameters (a zero-weight task head is unused).
        ids = [device.index] if device.type == "cuda" else None
        model = DistributedDataParallel(objective, device_ids=ids, find_unused_parameters=True)
    dataset = AgbpDataset(
        data, _augment_config(cfg), seed=cfg.seed, two_views=cfg.objective == "mocov3_distill"
    )
    sampler = ResumableSampler(dataset, num_replicas=world, rank=rank, seed=cfg.seed)
    amp = cfg.amp and device.type == "cuda"
    return _Run(
        cfg=cfg,
        objective=objective,
        model=model,
        optimizer=build_optimizer(objective, cfg),
        scaler=torch.amp.GradScaler(device.type, enabled=amp),
        dataset=dataset,
        sampler=sampler,
        device=device,
        steps_per_epoch=len(sampler) // batch_size,
        rank=rank,
        world=world,
        trainable=[p for p in objective.parameters() if p.requires_grad],
    )


def _run_epoch(run: _Run, epoch: int, hooks: TrainHooks) -> bool:
    """Train one epoch from the run's current step; True when stopped by the hooks."""
    skipped_batches = run.step - epoch * run.steps_per_epoch
    run.dataset.set_epoch(epoch)
    run.sampler.start(epoch, skip=skipped_batches * run.batch_size)
    loader = DataLoader(
        run.dataset,
        batch_size=run.batch_size,
        sampler=run.sampler,
        num_workers=run.cfg.num_workers,
        drop_last=True,
        pin_memory=run.device.type == "cuda",
        # Own generator: worker seeds must not consume the global RNG, whose state is
        # checkpointed, or a resumed run would draw different SimMIM masks.
        generator=torch.Generator().manual_seed(run.cfg.seed + epoch),
    )
    run.model.train()
    every = run.cfg.checkpoint_every
    for batch in loader:
        if _should_stop(hooks, run):
            if run.step > run.last_saved:
                _checkpoint(run, hooks, reason="stop")
            return True
        _train_step(run, batch)
        if every and run.step % every == 0 and run.step % run.steps_per_epoch:
            _checkpoint(run, hooks, reason="step")
    _end_epoch(run, epoch, hooks)
    return False


def _train_step(run: _Run, batch: Batch) -> None:
    cfg = run.cfg
    lr = get_lr(run.step, cfg, run.steps_per_epoch)
    for group in run.optimizer.param_groups:
        group["lr"] = lr
    run.objective.on_step(run.step, run.total_steps)
    batch = _to_device(batch, run)
    with torch.autocast(run.device.type, dtype=torch.float16, enabled=run.scaler.is_enabled()):
        losses = run.model(batch)
    run.optimizer.zero_grad(set_to_none=True)
    run.scaler.scale(losses["loss"]).backward()
    if cfg.grad_clip:
        run.scaler.unscale_(run.optimizer)
        nn.utils.clip_grad_norm_([p for p in run.trainable if p.grad is not None], cfg.grad_clip)
    run.scaler.step(run.optimizer)
    run.scaler.update()
    run.step += 1
    run.batches += 1
    for name, value in losses.items():
        value = value.detach().to(torch.float64, copy=True)
        total = run.sums.get(name)
        run.sums[name] = value if total is None else total.add_(value)


def _epoch_sums(run: _Run) -> dict[str, float]:
    """The epoch's loss sums as floats (the one host sync of the loss values)."""
    return {name: float(total) for name, total in run.sums.items()}


def _end_epoch(run: _Run, epoch: int, hooks: TrainHooks) -> None:
    entry = {name: total / max(run.batches, 1) for name, total in _epoch_sums(run).items()}
    entry |= {"epoch": float(epoch + 1), "lr": run.optimizer.param_groups[0]["lr"]}
    run.history.append(entry)
    run.sums, run.batches = {}, 0
    if run.rank == 0:
        message = f"epoch {epoch + 1}/{run.cfg.epochs} step {run.step}"
        hooks.on_progress(100.0 * run.step / run.total_steps, message, dict(entry))
    if epoch + 1 == run.cfg.epochs or _checkpoint_due(run, hooks):
        _checkpoint(run, hooks, reason="epoch")


def _checkpoint_due(run: _Run, hooks: TrainHooks) -> bool:
    """Whether an end-of-epoch checkpoint is worth its cost: a design choice of ours, not
    the spec's. Each one serialises and syncs the weights and optimiser state, which on short
    epochs (a small pool, a fast GPU) cost a visible share of the run; skipping one loses at
    most ``checkpoint_min_interval_s`` plus an epoch of training to a kill."""
    return time.monotonic() - run.saved_at >= hooks.checkpoint_min_interval_s


def _to_device(batch: Batch, run: _Run) -> Batch:
    mean, std = required(run.cfg.mean, "mean"), required(run.cfg.std, "std")
    out = {k: v.to(run.device, non_blocking=True) for k, v in batch.items()}
    for key in ("image", "image2"):
        if key in out:
            out[key] = normalize_images(out[key], mean, std)
    return out


def _should_stop(hooks: TrainHooks, run: _Run) -> bool:
    stop = bool(hooks.should_stop())
    if run.world > 1:
        # Every rank must leave the loop at the same step, or collectives would hang.
        flag = torch.tensor(float(stop), device=run.device)
        dist.all_reduce(flag, op=dist.ReduceOp.MAX)
        stop = bool(flag.item())
    return stop


def _checkpoint(run: _Run, hooks: TrainHooks, *, reason: str) -> None:
    run.last_saved, run.saved_at = run.step, time.monotonic()
    if run.rank != 0:
        return
    state: dict[str, Any] = {
        "format": CHECKPOINT_FORMAT,
        "reason": reason,
        "step": run.step,
        "epoch": run.step // run.steps_per_epoch,
        "config": run.cfg.model_dump(mode="json"),
        # The backbone's weights are in "model" (keys "backbone.*"); the result exports them.
        "model": detached(run.objective.state_dict()),
        "optimizer": detached(run.optimizer.state_dict()),
        "scaler": run.scaler.state_dict(),
        "history": copy.deepcopy(run.history),
        "epoch_sums": _epoch_sums(run),
        "epoch_batches": run.batches,
        "rng": rng_state(),
    }
    hooks.on_checkpoint(state)


def _restore(run: _Run, state: Mapping[str, Any]) -> None:
    if state.get("format") != CHECKPOINT_FORMAT:
        raise InvalidInputError(f"resume state is not an AGBP checkpoint ({state.get('format')})")
    check_same_run(run.cfg, state["config"])
    run.objective.load_state_dict(state["model"])
    run.optimizer.load_state_dict(state["optimizer"])
    run.scaler.load_state_dict(state["scaler"])
    run.step = run.last_saved = int(state["step"])
    run.history = copy.deepcopy(state["history"])
    run.sums = {
        name: torch.tensor(float(total), dtype=torch.float64, device=run.device)
        for name, total in state["epoch_sums"].items()
    }
    run.batches = int(state["epoch_batches"])
    if run.world == 1:
        restore_rng(state["rng"])
    else:
        seed_everything(run.cfg.seed + run.rank + run.step)
    logger.info("resumed AGBP at step %d", run.step)


def _result(run: _Run, *, stopped: bool) -> AgbpResult:
    return AgbpResult(
        state_dict=export_weights(run.objective.backbone),
        history=copy.deepcopy(run.history),
        config=run.cfg,
        steps=run.step,
        stopped=stopped,
    )


def _with_statistics(cfg: AgbpConfig, data: PairSource) -> AgbpConfig:
    if cfg.mean is not None and cfg.std is not None:
        return cfg
    rng = np.random.default_rng(cfg.seed)
    count = min(cfg.stats_sample, len(data))
    indices = rng.choice(len(data), size=count, replace=False)
    mean, std = compute_mean_std(data[int(i)][0] for i in indices)
    return cfg.model_copy(update={"mean": mean, "std": std})


def _augment_config(cfg: AgbpConfig) -> AugmentConfig:
    return AugmentConfig(
        crop_size=required(cfg.input_size, "input_size"),
        resize_base=required(cfg.resize_base, "resize_base"),
        map_interpolation=cfg.map_interpolation,
        # agssp-spec §4.1: the SimMIM pipeline has no photometric distortion.
        photometric=cfg.objective != "simmim_distill",
    )


def _dist_info() -> tuple[int, int]:
    if dist.is_available() and dist.is_initialized():
        return dist.get_rank(), dist.get_world_size()
    return 0, 1
