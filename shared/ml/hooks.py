"""Callbacks through which pure-torch training loops talk to the job system.

``ml/`` code never sees storage or Celery: a job's use case builds a ``TrainHooks`` whose
callables write progress to the job record, save checkpoints to the object store and read
the cooperative cancel flag.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any


def _noop_progress(percent: float, message: str, metrics: Mapping[str, float]) -> None:
    return None


def _never_stop() -> bool:
    return False


def _no_checkpoint(state: dict[str, Any]) -> None:
    return None


@dataclass(frozen=True)
class TrainHooks:
    """What a training loop may call between steps.

    Attributes:
        on_progress: ``(percent 0-100, message, metrics)``; cheap, may be throttled by the caller.
        should_stop: True when the job was canceled; the loop returns at the next step boundary.
        on_checkpoint: receives a self-describing state dict (weights, optimiser, step, config)
            to persist; called every ``checkpoint_every`` steps and at the end of each epoch.
        resume_state: a state dict previously passed to ``on_checkpoint``, or None.
        checkpoint_min_interval_s: a loop that honours it (AGBP's) skips an end-of-epoch
            checkpoint that would follow the last saved one (or the start) sooner than this,
            except the last epoch's; a stop's checkpoint is never skipped. 0 saves every epoch.
    """

    on_progress: Callable[[float, str, Mapping[str, float]], None] = _noop_progress
    should_stop: Callable[[], bool] = _never_stop
    on_checkpoint: Callable[[dict[str, Any]], None] = _no_checkpoint
    resume_state: dict[str, Any] | None = None
    checkpoint_min_interval_s: float = 0.0
    extra: dict[str, Any] = field(default_factory=dict)
