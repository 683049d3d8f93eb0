"""Self-describing AGBP checkpoints: detached copies, RNG state, same-run check on resume."""

from __future__ import annotations

import copy
from collections.abc import Mapping
from typing import Any

import torch
from torch import Tensor

from services.pretrain.params import AgbpConfig
from shared.errors import InvalidInputError
from shared.ml.backbones import Backbone, detector_state_dict
from shared.schemas.backbones import BACKBONE_FAMILIES, DETECTOR_KEYS

CHECKPOINT_FORMAT = "agbp-checkpoint/1"
# Fields that may change between a checkpoint and its resume; all others must match.
_RESUMABLE_CHANGES = frozenset({"epochs", "num_workers", "checkpoint_every"})


def check_same_run(cfg: AgbpConfig, saved: Mapping[str, Any]) -> None:
    """Raise ``InvalidInputError`` naming the fields where ``cfg`` differs from ``saved``."""
    current = cfg.model_dump(mode="json")
    keys = (current.keys() | saved.keys()) - _RESUMABLE_CHANGES
    changed = sorted(k for k in keys if current.get(k) != saved.get(k))
    if changed:
        raise InvalidInputError(f"resume state belongs to another configuration: {changed}")


def export_weights(backbone: Backbone) -> dict[str, Tensor]:
    """CPU copy of the backbone weights; detector key names for CSPDarknet."""
    if BACKBONE_FAMILIES[backbone.family].key_names == DETECTOR_KEYS:
        return detector_state_dict(backbone)
    return {k: v.detach().to("cpu", copy=True) for k, v in backbone.state_dict().items()}


def detached(obj: Any) -> Any:
    """Deep copy on CPU: a saved state must not change when training continues."""
    if isinstance(obj, Tensor):
        return obj.detach().to("cpu", copy=True)
    if isinstance(obj, Mapping):
        return {k: detached(v) for k, v in obj.items()}
    if isinstance(obj, list | tuple):
        return type(obj)(detached(v) for v in obj)
    return copy.deepcopy(obj)


def rng_state() -> dict[str, Any]:
    """Torch CPU and CUDA generator states (the data pipeline has its own seeds)."""
    cuda = torch.cuda.get_rng_state_all() if torch.cuda.is_available() else []
    return {"torch": torch.get_rng_state(), "cuda": cuda}


def restore_rng(state: Mapping[str, Any]) -> None:
    """Set the generators back to a ``rng_state()`` snapshot."""
    torch.set_rng_state(state["torch"])
    if torch.cuda.is_available() and state["cuda"]:
        torch.cuda.set_rng_state_all(state["cuda"])
