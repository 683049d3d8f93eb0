"""The stored detection dataset: the seam between its writer (finetune's imports) and its
readers (finetune's training and evaluation, the ToCoAD fit's labelled defects).

A version lives under ``datasets/<name>/<version>/``::

    dataset.json   ``DetectionDataset`` (classes, images, boxes in pixels)
    splits.json    {"seed", "val_fraction", "splits": {"train": [...], "val": [...], "mini-N": [...]}}
    images/<file>  the image files, flat
    manifest.json  written LAST: counts, classes, split sizes, source; marks a complete version

and ``datasets/<name>/LATEST`` holds the newest complete version's name.

Boxes are continuous pixel coordinates with the origin at the top-left corner of the image:
a box covering pixel columns 0..9 has ``x1 = 0, x2 = 10`` (the COCO convention).
"""

from __future__ import annotations

import json
from typing import Self

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

DATASETS_PREFIX = "datasets/"
DATASET_FILE = "dataset.json"
SPLITS_FILE = "splits.json"
MANIFEST_FILE = "manifest.json"
IMAGES_DIR = "images/"
LATEST_FILE = "LATEST"  # datasets/<name>/LATEST names the newest complete version


def version_prefix(name: str, version: str) -> str:
    """``datasets/<name>/<version>/`` (segments are checked by the caller)."""
    return f"{DATASETS_PREFIX}{name}/{version}/"


def latest_key(name: str) -> str:
    """The key of ``name``'s LATEST pointer."""
    return f"{DATASETS_PREFIX}{name}/{LATEST_FILE}"


class Box(BaseModel):
    """One labelled box: corners in pixels, ``x1 < x2`` and ``y1 < y2``."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    x1: float
    y1: float
    x2: float
    y2: float
    class_id: int = Field(ge=0)
    difficult: bool = False

    @model_validator(mode="after")
    def _positive_size(self) -> Self:
        if not (self.x2 > self.x1 and self.y2 > self.y1):
            raise ValueError(f"degenerate box {self.x1, self.y1, self.x2, self.y2}")
        return self

    @property
    def area(self) -> float:
        """Box area in square pixels."""
        return (self.x2 - self.x1) * (self.y2 - self.y1)


class ImageRecord(BaseModel):
    """One image: a plain file name (no folders), its size in pixels and its boxes."""

    model_config = ConfigDict(extra="forbid")

    file_name: str = Field(min_length=1)
    width: int = Field(gt=0)
    height: int = Field(gt=0)
    boxes: list[Box] = Field(default_factory=list)

    @field_validator("file_name")
    @classmethod
    def _plain_name(cls, value: str) -> str:
        # Names become paths under a work dir when materialised; no traversal, no folders.
        if "/" in value or "\\" in value or value in {".", ".."} or "\x00" in value:
            raise ValueError(f"file name {value!r} must be a plain file name without folders")
        return value

    @property
    def stem(self) -> str:
        """File name without its last extension."""
        return self.file_name.rsplit(".", 1)[0] if "." in self.file_name else self.file_name


class DetectionDataset(BaseModel):
    """Class names (index = ``class_id``) and the labelled images."""

    model_config = ConfigDict(extra="forbid")

    classes: list[str] = Field(min_length=1)
    images: list[ImageRecord] = Field(default_factory=list)

    @model_validator(mode="after")
    def _consistent(self) -> Self:
        if len(set(self.classes)) != len(self.classes):
            raise ValueError(f"class names must be unique, got {self.classes}")
        names = [im.file_name for im in self.images]
        if len(set(names)) != len(names):
            dupes = sorted({n for n in names if names.count(n) > 1})[:5]
            raise ValueError(f"image file names must be unique, repeated: {dupes}")
        stems = [im.stem for im in self.images]
        if len(set(stems)) != len(stems):
            # YOLO label files are named by stem; two images sharing one would share labels.
            raise ValueError("image file stems must be unique (a.jpg and a.png collide)")
        limit = len(self.classes)
        for im in self.images:
            bad = [b.class_id for b in im.boxes if b.class_id >= limit]
            if bad:
                raise ValueError(f"{im.file_name}: class ids {bad} >= number of classes {limit}")
        return self

    @property
    def num_boxes(self) -> int:
        """Total number of boxes over all images."""
        return sum(len(im.boxes) for im in self.images)

    def box_counts(self) -> dict[str, int]:
        """Number of boxes per class name."""
        counts = dict.fromkeys(self.classes, 0)
        for im in self.images:
            for box in im.boxes:
                counts[self.classes[box.class_id]] += 1
        return counts

    def image_counts(self) -> dict[str, int]:
        """Number of images holding at least one box of each class."""
        counts = dict.fromkeys(self.classes, 0)
        for im in self.images:
            for class_id in {b.class_id for b in im.boxes}:
                counts[self.classes[class_id]] += 1
        return counts

    def subset(self, file_names: set[str] | list[str]) -> DetectionDataset:
        """The images named in ``file_names`` (kept in this dataset's order), same classes."""
        wanted = set(file_names)
        return DetectionDataset(
            classes=list(self.classes),
            images=[im for im in self.images if im.file_name in wanted],
        )


def split_names(splits_json: bytes, split: str) -> list[str]:
    """The file names of ``split`` in a ``splits.json`` document.

    Raises:
        KeyError: the document has no such split.
    """
    names: list[str] = json.loads(splits_json)["splits"][split]
    return names
