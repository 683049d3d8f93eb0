"""What both training stages share: run context, batch sampling, checkpoints, RNG state."""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from functools import partial
from typing import Any

import numpy as np
import torch
from torch import Tensor

from services.anomaly_map.params.tocoad import TocoadConfig
from shared.errors import InvalidInputError, JobCanceledError
from shared.ml.hooks import TrainHooks

from .data import normalise, to_unit_tensor
from .generator import AnomalyGenerator

CHECKPOINT_FORMAT = "tocoad-checkpoint/1"
logger = logging.getLogger(__name__)


@dataclass
class TrainContext:
    """Everything a stage loop needs besides the networks.

    Attributes:
        cfg: the run's configuration.
        device: where the networks live.
        normals: (N, S, S, 3) uint8 training images.
        generator: anomaly generator G.
        rng: the single host random stream (G, views, batch sampling); checkpointed.
        hooks: progress / cancel / checkpoint callbacks.
        span: (start, end) percent of the whole fit covered by the running stage; spans are
            proportional to the images each phase pushes through F, so percent tracks time.
        started: monotonic time the fit started (for the ETA in every progress message).
    """

    cfg: TocoadConfig
    device: torch.device
    normals: np.ndarray
    generator: AnomalyGenerator
    rng: np.random.Generator
    hooks: TrainHooks
    span: tuple[float, float] = (0.0, 100.0)
    started: float = 0.0

    def sample_normals(self, batch_size: int) -> np.ndarray:
        """(B, S, S, 3) uint8 drawn with replacement (sets may be smaller than a batch)."""
        return self.normals[self.rng.integers(len(self.normals), size=batch_size)]

    def synthesize(self, normals: np.ndarray) -> tuple[Tensor, Tensor]:
        """G applied to (B, S, S, 3) uint8 normals: (B, 3, S, S) normalised, (B, S, S) masks."""
        images, masks = self.generator.batch(normals, self.rng)
        x = normalise(to_unit_tensor(images, self.device))
        return x, torch.from_numpy(masks).to(self.device)

    def progress(self, fraction: float, message: str, metrics: Mapping[str, float]) -> None:
        """Report progress of the running stage, mapped onto the fit's percent span."""
        start, end = self.span
        percent = start + (end - start) * min(1.0, fraction)
        elapsed = time.monotonic() - (self.started or time.monotonic())
        values = dict(metrics)
        if percent > 0.5 and elapsed > 0:
            eta = elapsed * (100.0 - percent) / percent
            values["eta_s"] = round(eta, 1)
            message = f"{message} (ETA {_duration(eta)})"
        values["elapsed_s"] = round(elapsed, 1)
        self.hooks.on_progress(percent, message, values)
        logger.info("%s %s", message, values)


def _duration(seconds: float) -> str:
    minutes, secs = divmod(int(seconds), 60)
    return f"{minutes} min {secs:02d} s" if minutes else f"{secs} s"


def phase_spans(cfg: TocoadConfig, num_images: int) -> dict[str, tuple[float, float]]:
    """Percent spans of stage1, stage2 and the bank, by images pushed through F (§10)."""
    work = {
        "stage1": cfg.stage1.iters * cfg.stage1.batch_size * 1.0,
        "stage2": cfg.stage2.iters * cfg.stage2.batch_size * 3.0 * 0.9,  # 3 views, D frozen
        "bank": num_images * 0.3,  # no-grad forward
    }
    total = max(sum(work.values()), 1e-9)
    spans, start = {}, 0.0
    for name, amount in work.items():
        end = start + 100.0 * amount / total
        spans[name] = (start, end)
        start = end
    return spans


def rng_state(rng: np.random.Generator) -> dict[str, Any]:
    """Host and torch random states for an exact resume."""
    state: dict[str, Any] = {"numpy": rng.bit_generator.state, "torch": torch.get_rng_state()}
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def restore_rng(rng: np.random.Generator, state: Mapping[str, Any]) -> None:
    """Inverse of ``rng_state``."""
    rng.bit_generator.state = state["numpy"]
    torch.set_rng_state(state["torch"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


def make_checkpoint(ctx: TrainContext, stage: str, step: int, **parts: Any) -> dict[str, Any]:
    """Self-describing checkpoint: format, stage, completed steps, config, RNG and ``parts``."""
    return {
        "format": CHECKPOINT_FORMAT,
        "stage": stage,
        "step": step,
        "config": ctx.cfg.model_dump(mode="json"),
        "rng": rng_state(ctx.rng),
        **parts,
    }


def check_resume(state: Mapping[str, Any], cfg: TocoadConfig) -> None:
    """Refuse a checkpoint of another format or made with another configuration.

    Raises:
        InvalidInputError: naming the mismatch.
    """
    if state.get("format") != CHECKPOINT_FORMAT:
        raise InvalidInputError(
            f"resume_state has format {state.get('format')!r}; expected {CHECKPOINT_FORMAT!r}"
        )
    if state.get("config") != cfg.model_dump(mode="json"):
        raise InvalidInputError(
            "resume_state was written with a different TocoadConfig; resume with the same config"
        )


def stop_if_requested(ctx: TrainContext, snapshot: Callable[[], dict[str, Any]]) -> None:
    """Cooperative cancel at a step boundary: hand the current state to ``on_checkpoint``, raise.

    Raises:
        JobCanceledError: when ``hooks.should_stop()`` is true.
    """
    if ctx.hooks.should_stop():
        state = snapshot()
        ctx.hooks.on_checkpoint(state)
        raise JobCanceledError(f"ToCoAD {state['stage']} canceled after step {state['step']}")


def run_steps(
    ctx: TrainContext,
    stage: str,
    start: int,
    iters: int,
    step: Callable[[int], dict[str, float]],
    snapshot: Callable[[int], dict[str, Any]],
) -> None:
    """The loop both stages share (nanoGPT order: cancel check, step, log, checkpoint).

    Args:
        ctx: run context (hooks, logging and checkpoint intervals).
        stage: name used in messages and checkpoints.
        start: completed steps so far (non-zero when resuming).
        iters: total steps of the stage.
        step: runs one optimisation step given the 1-based step number; returns metrics.
        snapshot: builds the checkpoint after the given number of completed steps.

    Raises:
        JobCanceledError: when ``hooks.should_stop()`` turns true (after a checkpoint).
    """
    for index in range(start, iters):
        stop_if_requested(ctx, partial(snapshot, index))
        done = index + 1
        metrics = step(done)
        # The first step is reported at once, so the ETA shows within seconds of the start.
        if done % ctx.cfg.log_every == 0 or done == iters or index == start:
            ctx.progress(done / iters, f"{stage} {done}/{iters}", metrics)
        if done % ctx.cfg.checkpoint_every == 0 or done == iters:
            ctx.hooks.on_checkpoint(snapshot(done))


def cpu_copy(obj: Any) -> Any:
    """Deep CPU copy of nested dicts/lists of tensors (safe to persist while training goes on)."""
    if isinstance(obj, Tensor):
        return obj.detach().cpu().clone()
    if isinstance(obj, dict):
        return {k: cpu_copy(v) for k, v in obj.items()}
    if isinstance(obj, list | tuple):
        return type(obj)(cpu_copy(v) for v in obj)
    return obj


def cpu_state(module: torch.nn.Module) -> dict[str, Tensor]:
    """CPU copy of a module's ``state_dict``."""
    return {k: v.detach().cpu().clone() for k, v in module.state_dict().items()}
