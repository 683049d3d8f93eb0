"""Device selection: never hard-code cuda or cpu."""

from __future__ import annotations

import torch


def resolve_device(name: str = "auto") -> torch.device:
    """Map a setting ('auto', 'cpu', 'cuda', 'cuda:1', 'mps') to a usable device.

    'auto' picks CUDA when available, else CPU. An explicit CUDA request on a machine
    without CUDA raises ``RuntimeError`` naming the setting's value.
    """
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    device = torch.device(name)
    if device.type == "cuda" and not torch.cuda.is_available():
        raise RuntimeError(f"device {name!r} requested but CUDA is not available on this machine")
    return device


def seed_everything(seed: int) -> None:
    """Seed torch (CPU and CUDA), numpy and random."""
    import random

    import numpy as np

    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)
