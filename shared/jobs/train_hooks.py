"""The bridge from a job's record to a training loop's ``TrainHooks`` (torch-free).

Every training job kind (AGBP, AGDP, finetune) reports epochs as progress on its record,
stops on the job's cancel flag and saves its checkpoints in the job's prefix; only what a
checkpoint is, and where training sits within the job's progress, differ.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Any

from shared.jobs.context import JobContext
from shared.ml.hooks import TrainHooks


def job_train_hooks(
    ctx: JobContext,
    *,
    on_checkpoint: Callable[[dict[str, Any]], None],
    resume_state: dict[str, Any] | None,
    span: tuple[float, float] = (0.0, 100.0),
    checkpoint_min_interval_s: float = 0.0,
) -> TrainHooks:
    """Hooks that write a loop's progress (scaled into ``span`` of the job's) and metrics to
    the record, read the job's cancel flag, and persist checkpoints with ``on_checkpoint``
    (no closer together than ``checkpoint_min_interval_s`` where the loop honours it)."""
    low, high = span

    def on_progress(percent: float, message: str, metrics: Mapping[str, float]) -> None:
        scaled = low + (high - low) * percent / 100.0
        ctx.progress(scaled, message, force=True, metrics=dict(metrics))

    return TrainHooks(
        on_progress=on_progress,
        should_stop=ctx.should_stop,
        on_checkpoint=on_checkpoint,
        resume_state=resume_state,
        checkpoint_min_interval_s=checkpoint_min_interval_s,
    )
