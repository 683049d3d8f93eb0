"""A trained Faster R-CNN as bytes: tensors, classes, backbone and settings; detector-level
start weights with a counted transfer."""

from __future__ import annotations

import io
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import Tensor
from torchvision.models.detection import FasterRCNN

from services.finetune.ml.faster_rcnn.model import FasterRcnnConfig, build_faster_rcnn
from shared.errors import InvalidInputError

CHECKPOINT_FORMAT = "agssp-faster-rcnn-v1"


@dataclass(frozen=True)
class FasterRcnnCheckpoint:
    """A trained Faster R-CNN: its tensors, classes, backbone and architecture settings.

    Attributes:
        classes: class names, index = class id (0-based; torchvision's background is not one).
        backbone: the ResNet's ``BACKBONES`` name.
        config: the ``FasterRcnnConfig`` it was built and trained with, as a dict.
        state_dict: every tensor of the model (float32, CPU).
        metrics: evaluation figures of this checkpoint.
        train: the job's training config (style guide §0.4: config beside the weights).
    """

    classes: tuple[str, ...]
    backbone: str
    config: dict[str, Any]
    state_dict: dict[str, Tensor]
    metrics: dict[str, float] = field(default_factory=dict)
    train: dict[str, Any] = field(default_factory=dict)

    def architecture(self) -> FasterRcnnConfig:
        """The ``FasterRcnnConfig`` the tensors belong to."""
        known = {k: v for k, v in self.config.items() if k in FasterRcnnConfig.__dataclass_fields__}
        for key in ("anchor_sizes", "mean", "std"):
            if key in known:
                known[key] = tuple(known[key])
        return FasterRcnnConfig(**known)

    def payload(self) -> dict[str, Any]:
        """Tensors and plain data only: what ``torch.save`` writes (``weights_only`` reads)."""
        return {
            "format": CHECKPOINT_FORMAT,
            "classes": list(self.classes),
            "backbone": self.backbone,
            "config": self.config,
            "state_dict": self.state_dict,
            "metrics": self.metrics,
            "train": self.train,
        }

    def to_bytes(self) -> bytes:
        """Serialise :meth:`payload` with ``torch.save``."""
        buffer = io.BytesIO()
        torch.save(self.payload(), buffer)
        return buffer.getvalue()

    @classmethod
    def from_payload(cls, raw: Any, source: str = "<bytes>") -> FasterRcnnCheckpoint:
        """The checkpoint a :meth:`payload` holds.

        Raises:
            InvalidInputError: not a checkpoint of this format (code ``bad_weights``).
        """
        if not isinstance(raw, dict) or raw.get("format") != CHECKPOINT_FORMAT:
            raise InvalidInputError(
                f"{source}: not a {CHECKPOINT_FORMAT} checkpoint", code="bad_weights"
            )
        return cls(
            classes=tuple(raw["classes"]),
            backbone=str(raw["backbone"]),
            config=dict(raw["config"]),
            state_dict=dict(raw["state_dict"]),
            metrics=dict(raw.get("metrics", {})),
            train=dict(raw.get("train", {})),
        )

    @classmethod
    def from_bytes(cls, data: bytes, source: str = "<bytes>") -> FasterRcnnCheckpoint:
        """Load bytes written by :meth:`to_bytes`; refuses pickled code (``weights_only``).

        Raises:
            InvalidInputError: not a checkpoint of this format (code ``bad_weights``).
        """
        return cls.from_payload(load_tensors(data, source), source)


def load_tensors(data: bytes, source: str) -> Any:
    """``torch.load`` with ``weights_only`` (no pickled code), on the CPU.

    Raises:
        InvalidInputError: unreadable (code ``bad_weights``).
    """
    try:
        return torch.load(io.BytesIO(data), map_location="cpu", weights_only=True)
    except Exception as exc:  # torch raises several unpickling error types
        raise InvalidInputError(f"{source}: not a readable checkpoint", code="bad_weights") from exc


def checkpoint_of(
    model: FasterRCNN,
    classes: Sequence[str],
    backbone: str,
    config: FasterRcnnConfig,
    train: Mapping[str, Any] | None = None,
) -> FasterRcnnCheckpoint:
    """The model's tensors (copied to the CPU) as a checkpoint."""
    state = {k: v.detach().cpu().clone() for k, v in model.state_dict().items()}
    return FasterRcnnCheckpoint(
        tuple(classes), backbone, _plain(config), state, train=dict(train or {})
    )


def model_from_checkpoint(checkpoint: FasterRcnnCheckpoint) -> FasterRCNN:
    """The model the checkpoint holds, in eval mode on the CPU."""
    config = checkpoint.architecture()
    model = build_faster_rcnn(len(checkpoint.classes), config, backbone=checkpoint.backbone)
    model.load_state_dict(checkpoint.state_dict)
    return model.eval()


def _plain(config: FasterRcnnConfig) -> dict[str, Any]:
    return {k: list(v) if isinstance(v, tuple) else v for k, v in vars(config).items()}


@dataclass(frozen=True)
class Transfer:
    """Counts of a whole-detector start (AGDP -> finetune): tensors loaded out of the
    model's, and those left fresh (class-specific layers when the class count differs)."""

    loaded: int
    total: int
    target_total: int
    skipped: tuple[tuple[str, str], ...]

    @property
    def fraction(self) -> float:
        """Share of the source's tensors that found a place."""
        return self.loaded / self.total if self.total else 0.0


def transfer_detector(
    model: FasterRCNN, source: Mapping[str, Tensor], min_fraction: float
) -> Transfer:
    """Copy the source detector's tensors of the same name and shape into ``model``.

    Tensors whose shapes differ (the box predictor's class logits and box deltas, when the
    class count differs) keep their fresh init and are listed in ``skipped``.

    Raises:
        InvalidInputError: fewer than ``min_fraction`` of the source's tensors fit (code
            ``transfer_too_small``); nothing is copied then.
    """
    own = model.state_dict()
    usable: dict[str, Tensor] = {}
    skipped: list[tuple[str, str]] = []
    for key, tensor in source.items():
        if key not in own:
            skipped.append((key, "not in the model"))
        elif own[key].shape != tensor.shape:
            skipped.append((key, f"shape {tuple(tensor.shape)} != {tuple(own[key].shape)}"))
        else:
            usable[key] = tensor
    report = Transfer(len(usable), len(source), len(own), tuple(skipped))
    if report.fraction < min_fraction:
        raise InvalidInputError(
            f"only {report.loaded}/{report.total} tensors of the start detector fit this "
            f"Faster R-CNN (needs {min_fraction:.0%}); first skipped: {list(skipped[:3])}",
            code="transfer_too_small",
        )
    model.load_state_dict(usable, strict=False)
    return report
