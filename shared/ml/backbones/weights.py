"""Loading weights into a backbone loudly, and exporting them under detector key names.

torch (``strict=False``) and ultralytics (``intersect_dicts``) drop mismatched tensors
silently (field-notes §B2, ultralytics #8811); here every load is counted and a load that
matches too little is refused.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import torch
from torch import Tensor

from shared.errors import InvalidInputError
from shared.ml.backbones.base import Backbone, LoadReport
from shared.schemas.backbones import BACKBONE_FAMILIES, DETECTOR_KEYS

logger = logging.getLogger(__name__)

DEFAULT_MIN_MATCH = 0.9
# Wrappers added by DDP and by mmengine-style model containers; stripped before matching.
_KEY_PREFIXES = ("module.", "backbone.")
# Where common checkpoint layouts keep the tensors (ours first: see train.py "backbone").
_NESTED_KEYS = ("backbone", "state_dict", "model", "ema")


def load_weights(
    backbone: Backbone,
    weights: Path | Mapping[str, Tensor],
    *,
    min_match: float = DEFAULT_MIN_MATCH,
) -> LoadReport:
    """Copy matching tensors (same key and shape) into ``backbone``, or refuse and copy none.

    Args:
        backbone: the model to fill in place.
        weights: a local ``.pt`` file holding a state_dict (read with ``weights_only``; a
            pickled ultralytics checkpoint is refused) or a state_dict.
        min_match: smallest accepted share of the backbone's tensors that must match.

    Returns:
        The counts, also logged.

    Raises:
        InvalidInputError: unreadable file, or fewer than ``min_match`` of the tensors matched.
    """
    source = _read_state_dict(weights) if isinstance(weights, Path) else weights
    own = backbone.state_dict()
    usable, mismatched = _match(_strip_prefixes(source), own)
    counted = [k for k in own if not k.endswith("num_batches_tracked")]
    report = LoadReport(
        matched=sum(1 for k in counted if k in usable),
        total=len(counted),
        missing=tuple(k for k in counted if k not in usable),
        shape_mismatch=tuple(mismatched),
        unused=len(source) - len(usable),
    )
    logger.info(
        "loaded %d/%d tensors into %s",
        report.matched,
        report.total,
        backbone.name,
        extra={"shape_mismatch": len(mismatched), "unused": report.unused},
    )
    backbone.load_report = report
    if report.ratio < min_match:
        raise InvalidInputError(
            f"only {report.matched}/{report.total} tensors of backbone {backbone.name!r} matched "
            f"the given weights (needs {min_match:.0%}); {len(mismatched)} had other shapes, "
            f"first missing keys: {list(report.missing[:3])}. Check the backbone name and that "
            "the file is a state_dict of the same architecture."
        )
    # Only after the check: a refused load leaves the backbone untouched.
    backbone.load_state_dict(usable, strict=False)
    return report


def detector_state_dict(backbone: Backbone) -> dict[str, Tensor]:
    """Backbone weights under the keys an ultralytics YOLOv8 detector expects.

    CSPDarknet already uses the detector's ``model.<i>.…`` keys (identity; detached CPU copies);
    ResNet and Swin have no YOLOv8 counterpart.

    Raises:
        InvalidInputError: the backbone is not a CSPDarknet.
    """
    if BACKBONE_FAMILIES[backbone.family].key_names != DETECTOR_KEYS:
        raise InvalidInputError(
            f"backbone {backbone.name!r} ({backbone.family}) does not fit a YOLOv8 detector; "
            "only yolov8n/s/m backbones can be exported to detector keys"
        )
    return {
        key: value.detach().to("cpu", copy=True) for key, value in backbone.state_dict().items()
    }


def _read_state_dict(path: Path) -> Mapping[str, Tensor]:
    if not path.is_file():
        raise InvalidInputError(f"weights file {path} does not exist")
    try:
        # weights_only: a checkpoint is data, never code (field-notes §0.10).
        loaded: Any = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:
        raise InvalidInputError(
            f"cannot read {path} as a plain state_dict ({exc.__class__.__name__}); pickled "
            "ultralytics checkpoints are refused: save `model.state_dict()` instead"
        ) from exc
    return _find_tensors(loaded, path)


def _find_tensors(loaded: Any, path: Path) -> Mapping[str, Tensor]:
    if isinstance(loaded, Mapping) and loaded and _all_tensors(loaded):
        return loaded
    if isinstance(loaded, Mapping):
        for key in _NESTED_KEYS:
            nested = loaded.get(key)
            if isinstance(nested, Mapping) and nested and _all_tensors(nested):
                return nested
    raise InvalidInputError(f"{path} holds no state_dict (looked at top level and {_NESTED_KEYS})")


def _all_tensors(mapping: Mapping[Any, Any]) -> bool:
    return all(isinstance(k, str) and isinstance(v, Tensor) for k, v in mapping.items())


def _match(
    source: Mapping[str, Tensor], own: Mapping[str, Tensor]
) -> tuple[dict[str, Tensor], list[str]]:
    usable: dict[str, Tensor] = {}
    mismatched: list[str] = []
    for key, value in source.items():
        if key not in own:
            continue
        if own[key].shape == value.shape:
            usable[key] = value
        else:
            mismatched.append(key)
    return usable, mismatched


def _strip_prefixes(state: Mapping[str, Tensor]) -> dict[str, Tensor]:
    out: dict[str, Tensor] = {}
    for key, value in state.items():
        for prefix in _KEY_PREFIXES:
            if key.startswith(prefix):
                key = key[len(prefix) :]
        out[key] = value
    return out
