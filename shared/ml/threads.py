"""CPU threads for training: how many cores this process was given, and applying a count.

ultralytics pins torch to ``cpu_count - 1`` threads when it selects a CPU device, one thread
on a 2-core machine; training here uses every core it is given unless a setting says fewer
(``TRAINING_THREADS``, 0 = all). This module never imports torch itself, so job workers
without torch may call it: the count reaches torch through ``OMP_NUM_THREADS`` (read when its
thread pool starts, and left alone by ultralytics' import when set) or, when torch is already
loaded, through ``torch.set_num_threads``.
"""

from __future__ import annotations

import os
import sys

_configured: int | None = None


def cores_available() -> int:
    """Cores this process may run on (its CPU affinity; ``os.cpu_count`` where unknown)."""
    try:
        return max(1, len(os.sched_getaffinity(0)))
    except (AttributeError, OSError):  # not Linux
        return max(1, os.cpu_count() or 1)


def resolve_threads(requested: int) -> int:
    """The thread count a setting means: ``0`` = every available core, else ``requested``."""
    if requested < 0:
        raise ValueError(f"thread count must be >= 0 (0 = all cores), got {requested}")
    return requested or cores_available()


def configure_training_threads(requested: int) -> int:
    """Remember and apply the training thread count of this process.

    Args:
        requested: The setting's value; 0 = every available core.

    Returns:
        The count applied to torch's intra-op pool.
    """
    global _configured
    threads = resolve_threads(requested)
    _configured = threads
    os.environ["OMP_NUM_THREADS"] = str(threads)
    torch = sys.modules.get("torch")
    if torch is not None:
        torch.set_num_threads(threads)
    return threads


def training_threads() -> int:
    """The count ``configure_training_threads`` applied, or every available core."""
    return _configured if _configured is not None else cores_available()
