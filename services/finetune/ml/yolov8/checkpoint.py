"""Our detector checkpoint: tensors plus metadata, loadable without unpickling code."""

from __future__ import annotations

import io
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal, get_args

import torch

from shared.errors import InvalidInputError

Scale = Literal["n", "s", "m"]
SCALES: tuple[str, ...] = get_args(Scale)
CHECKPOINT_FORMAT = "agssp-yolov8-detector/1"


@dataclass
class DetectorCheckpoint:
    """A trained (AGDP or finetuned) YOLOv8 detector: backbone, neck and head.

    Attributes:
        scale: YOLOv8 width/depth scale the tensors belong to.
        classes: class names, index = class id (AGDP: ``("anomaly",)``).
        state_dict: every tensor of the ultralytics ``DetectionModel`` (float32, CPU).
        metrics: evaluation figures of this checkpoint (e.g. ``map50``).
        config: the resolved training config, saved next to the weights (style guide §0.4).
    """

    scale: Scale
    classes: tuple[str, ...]
    state_dict: dict[str, torch.Tensor]
    metrics: dict[str, float] = field(default_factory=dict)
    config: dict[str, Any] = field(default_factory=dict)

    def to_bytes(self) -> bytes:
        """Serialise with ``torch.save`` (tensors and plain data only)."""
        buffer = io.BytesIO()
        torch.save(
            {
                "format": CHECKPOINT_FORMAT,
                "scale": self.scale,
                "classes": list(self.classes),
                "state_dict": self.state_dict,
                "metrics": self.metrics,
                "config": self.config,
            },
            buffer,
        )
        return buffer.getvalue()

    def save(self, path: Path) -> Path:
        """Write :meth:`to_bytes` to ``path`` (parent created); returns ``path``."""
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(self.to_bytes())
        return path

    @classmethod
    def from_bytes(cls, data: bytes, source: str = "<bytes>") -> DetectorCheckpoint:
        """Load bytes written by :meth:`to_bytes`; refuses pickled code (``weights_only``).

        Raises:
            InvalidInputError: not a checkpoint of this format.
        """
        try:
            raw = torch.load(io.BytesIO(data), map_location="cpu", weights_only=True)
        except Exception as exc:  # torch raises several unpickling error types
            raise InvalidInputError(f"{source}: not a {CHECKPOINT_FORMAT} checkpoint") from exc
        if not isinstance(raw, dict) or raw.get("format") != CHECKPOINT_FORMAT:
            raise InvalidInputError(f"{source}: not a {CHECKPOINT_FORMAT} checkpoint")
        if raw["scale"] not in SCALES:
            raise InvalidInputError(f"{source}: unknown scale {raw['scale']!r}")
        return cls(
            scale=raw["scale"],
            classes=tuple(raw["classes"]),
            state_dict=dict(raw["state_dict"]),
            metrics=dict(raw.get("metrics", {})),
            config=dict(raw.get("config", {})),
        )

    @classmethod
    def load(cls, path: Path) -> DetectorCheckpoint:
        """Read a file written by :meth:`save`."""
        return cls.from_bytes(path.read_bytes(), source=str(path))
