"""YOLOv8 detectors (scales n/s/m) built from ultralytics' own YAML, with counted weight transfer.

Every transfer copies the tensors whose name and shape match (agssp-spec §5.3), reports
what was skipped and why, and refuses a start that loaded too little (field-notes §0.3).
"""

from __future__ import annotations

import copy
import functools
import re
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any, cast

import torch
from torch import nn

from services.finetune.ml.yolov8.checkpoint import SCALES, DetectorCheckpoint, Scale
from services.finetune.ml.yolov8.offline import import_ultralytics
from shared.errors import InvalidInputError

DEFAULT_MIN_FRACTION = 0.9
# AGBP artifacts hold the first ten DetectionModel layers (stem ... SPPF) under their
# DetectionModel names; agssp-spec §5.2 "key names backbone.* match".
_BACKBONE_KEY = re.compile(r"^model\.[0-9]\.")


@dataclass(frozen=True)
class TransferReport:
    """Outcome of one weight transfer.

    Attributes:
        loaded: source tensors copied into the target.
        total: source tensors considered (the denominator of :attr:`fraction`).
        skipped: ``(name, reason)`` for every source tensor not copied.
        target_total: tensors in the target (those not loaded keep their fresh init).
    """

    loaded: int
    total: int
    skipped: tuple[tuple[str, str], ...]
    target_total: int

    @property
    def fraction(self) -> float:
        """Share of source tensors that were copied (1.0 for an empty source)."""
        return self.loaded / self.total if self.total else 1.0

    def summary(self) -> str:
        """One line for logs and error messages."""
        head = ", ".join(f"{name} ({why})" for name, why in self.skipped[:3])
        more = f" and {len(self.skipped) - 3} more" if len(self.skipped) > 3 else ""
        skipped = f"; skipped {head}{more}" if self.skipped else ""
        return f"loaded {self.loaded}/{self.total} source tensors{skipped}"


@dataclass(frozen=True)
class BackboneInit:
    """Start from an AGBP backbone ``state_dict`` (keys ``model.0.*`` .. ``model.9.*``)."""

    state_dict: Mapping[str, torch.Tensor]
    min_fraction: float = DEFAULT_MIN_FRACTION


@dataclass(frozen=True)
class DetectorInit:
    """Start from a whole detector (AGDP or finetuned); class-logit convs re-init on mismatch."""

    checkpoint: DetectorCheckpoint
    min_fraction: float = DEFAULT_MIN_FRACTION


@dataclass(frozen=True)
class CheckpointPathInit:
    """Start from a local file: our checkpoint format, or a TRUSTED ultralytics ``.pt`` pickle."""

    path: Path
    min_fraction: float = DEFAULT_MIN_FRACTION


InitSpec = BackboneInit | DetectorInit | CheckpointPathInit | None


@dataclass
class Detector:
    """An ultralytics ``DetectionModel`` and what it was built from.

    Attributes:
        model: the network; ``model(x)`` with ``x`` (B, 3, H, W) in [0, 1], H and W
            multiples of 32, returns (B, 4 + num_classes, anchors) in eval mode.
        report: the transfer that initialised it, None for a random start.
    """

    model: nn.Module
    scale: Scale
    classes: tuple[str, ...]
    report: TransferReport | None = None

    def to_checkpoint(
        self, metrics: Mapping[str, float] | None = None, config: Mapping[str, Any] | None = None
    ) -> DetectorCheckpoint:
        """Snapshot the current weights (float32, CPU) as a :class:`DetectorCheckpoint`."""
        state = {k: v.detach().float().cpu().clone() for k, v in self.model.state_dict().items()}
        return DetectorCheckpoint(
            scale=self.scale,
            classes=self.classes,
            state_dict=state,
            metrics=dict(metrics or {}),
            config=dict(config or {}),
        )


def build_detector(
    scale: Scale,
    num_classes: int,
    init: InitSpec = None,
    class_names: tuple[str, ...] | None = None,
    seed: int | None = None,
) -> Detector:
    """Build YOLOv8-``scale`` for ``num_classes`` classes and initialise it from ``init``.

    Args:
        scale: "n", "s" or "m".
        num_classes: number of output classes.
        init: None (random), an AGBP backbone, a detector checkpoint or a local file.
        class_names: names for the classes; defaults to "0", "1", ...
        seed: seeds the random initialisation (without touching the global RNG state).

    Returns:
        The detector in train mode, with the transfer report when ``init`` is given.

    Raises:
        InvalidInputError: bad scale/class count, or the transfer copied less than
            ``init.min_fraction`` of the source tensors.
    """
    if scale not in SCALES:
        raise InvalidInputError(f"scale must be one of {SCALES}, got {scale!r}")
    if num_classes < 1:
        raise InvalidInputError(f"num_classes must be >= 1, got {num_classes}")
    names = class_names or tuple(str(i) for i in range(num_classes))
    if len(names) != num_classes:
        raise InvalidInputError(f"{len(names)} class names for {num_classes} classes")
    model = _new_model(scale, num_classes, names, seed)
    report = _apply_init(model, init) if init is not None else None
    return Detector(model=model, scale=scale, classes=tuple(names), report=report)


def detector_from_checkpoint(checkpoint: DetectorCheckpoint) -> Detector:
    """Rebuild exactly the detector a checkpoint describes (every tensor must load)."""
    init = DetectorInit(checkpoint, min_fraction=1.0)
    return build_detector(checkpoint.scale, len(checkpoint.classes), init, checkpoint.classes)


def transfer_weights(
    source: Mapping[str, torch.Tensor],
    target: nn.Module,
    min_fraction: float = DEFAULT_MIN_FRACTION,
    backbone_only: bool = False,
) -> TransferReport:
    """Copy every source tensor whose name and shape match a tensor of ``target``.

    Args:
        source: tensors by ``state_dict`` name.
        target: module to copy into (in place).
        min_fraction: least share of source tensors that must be copied.
        backbone_only: only ``model.0.*`` .. ``model.9.*`` keys are candidates; others are
            counted and skipped.

    Raises:
        InvalidInputError: fewer than ``min_fraction`` of the source tensors were copied.
    """
    own = target.state_dict()
    skipped: list[tuple[str, str]] = []
    loaded = 0
    with torch.no_grad():
        for name, tensor in source.items():
            reason = _skip_reason(name, tensor, own, backbone_only)
            if reason:
                skipped.append((name, reason))
                continue
            own[name].copy_(tensor.to(dtype=own[name].dtype, device=own[name].device))
            loaded += 1
    report = TransferReport(loaded, len(source), tuple(skipped), len(own))
    if report.total == 0 or report.fraction < min_fraction:
        raise InvalidInputError(
            f"weight transfer too small ({report.summary()}); need >= {min_fraction:.0%}. "
            "Check the YOLOv8 scale and the key names (model.<layer>.*)",
            code="weight_transfer_failed",
        )
    return report


def _skip_reason(
    name: str, tensor: torch.Tensor, own: Mapping[str, torch.Tensor], backbone_only: bool
) -> str | None:
    if backbone_only and not _BACKBONE_KEY.match(name):
        return "not a backbone key (model.0-9.*)"
    if name not in own:
        return "no tensor of that name in the detector"
    if tuple(tensor.shape) != tuple(own[name].shape):
        return f"shape {tuple(tensor.shape)} != {tuple(own[name].shape)}"
    return None


def _apply_init(
    model: nn.Module, init: BackboneInit | DetectorInit | CheckpointPathInit
) -> TransferReport:
    if isinstance(init, BackboneInit):
        return transfer_weights(init.state_dict, model, init.min_fraction, backbone_only=True)
    if isinstance(init, DetectorInit):
        return transfer_weights(init.checkpoint.state_dict, model, init.min_fraction)
    return transfer_weights(load_state_dict_file(init.path), model, init.min_fraction)


def load_state_dict_file(path: Path) -> dict[str, torch.Tensor]:
    """Tensors of a local checkpoint: our format, else an ultralytics ``.pt``.

    The ultralytics fallback unpickles the file (it may run code): only for trusted files.

    Raises:
        InvalidInputError: the file is missing or neither format.
    """
    if not path.is_file():
        raise InvalidInputError(f"checkpoint {path} does not exist")
    try:
        return DetectorCheckpoint.load(path).state_dict
    except InvalidInputError:
        pass  # not our format: try ultralytics' own layout below
    tasks = import_ultralytics("ultralytics.nn.tasks")
    try:
        module, _ = tasks.load_checkpoint(path)
    except Exception as exc:  # ultralytics raises TypeError, pickle and zip errors
        raise InvalidInputError(f"{path}: neither our checkpoint nor an ultralytics one") from exc
    return {k: v.detach().float().cpu() for k, v in module.state_dict().items()}


def _new_model(
    scale: Scale, num_classes: int, names: tuple[str, ...], seed: int | None
) -> nn.Module:
    tasks = import_ultralytics("ultralytics.nn.tasks")
    cfg = copy.deepcopy(_model_yaml(scale))  # DetectionModel writes nc into the dict
    with torch.random.fork_rng(devices=[]):
        if seed is not None:
            torch.manual_seed(seed)
        model = tasks.DetectionModel(cfg, ch=3, nc=num_classes, verbose=False)
    model.names = dict(enumerate(names))
    return cast(nn.Module, model)


@functools.cache
def _model_yaml(scale: Scale) -> dict[str, Any]:
    # The package's own yolov8.yaml (no download); parsing it is half of a build's time.
    tasks = import_ultralytics("ultralytics.nn.tasks")
    return dict(tasks.yaml_model_load(f"yolov8{scale}.yaml"))
