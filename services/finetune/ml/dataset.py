"""Detection-dataset types of the finetune service: the stored format (a seam in
``shared.schemas.detection_dataset``, re-exported here) and predicted boxes.
"""

from __future__ import annotations

from pydantic import BaseModel, ConfigDict, Field

from shared.errors import InvalidInputError
from shared.schemas.detection_dataset import Box, DetectionDataset, ImageRecord

__all__ = ["Box", "DetectionDataset", "ImageRecord", "ScoredBox", "to_single_class"]


class ScoredBox(BaseModel):
    """A predicted box with its confidence score (same coordinates as :class:`Box`)."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    x1: float
    y1: float
    x2: float
    y2: float
    class_id: int = Field(ge=0)
    score: float


def to_single_class(dataset: DetectionDataset, name: str = "anomaly") -> DetectionDataset:
    """Map every box to class 0 named ``name`` (AGDP pseudo-box labels, agssp-spec §5.2)."""
    images = [
        im.model_copy(update={"boxes": [b.model_copy(update={"class_id": 0}) for b in im.boxes]})
        for im in dataset.images
    ]
    return DetectionDataset(classes=[name], images=images)


def dataset_error(source: str, problem: str) -> InvalidInputError:
    """An ``InvalidInputError`` naming the offending file (importers raise these)."""
    return InvalidInputError(f"{source}: {problem}", code="invalid_dataset")
