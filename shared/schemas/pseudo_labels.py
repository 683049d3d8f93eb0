"""Seam: the output of a pseudo-label job (pretrain writes it, finetune's AGDP job reads it).

Under the job's output prefix ``<out>`` (default ``pseudo/<category>/<job id>/``,
agssp-spec §3 for the boxes, §5.2 for the one class)::

    labels/<image stem>.txt  YOLO lines ``0 xc yc w h`` normalised by the ORIGINAL (upright,
                             EXIF-rotated) image size, 6 decimals; every paired image has a
                             file, an empty file is a background image
    classes.txt              ``anomaly`` (class 0)
    annotations.json         COCO: one category (id 0, "anomaly"); images carry
                             ``file_name``, ``width``, ``height`` and ``image_key``
    summary.json             threshold, parameters and box statistics
    examples/<stem>.png      a few images with their boxes drawn
    manifest.json            a ``PseudoLabelManifest``, written LAST: its presence marks a
                             complete output; ``images`` maps stem -> image key

A reader may be pointed at ``<out>/`` or at ``<out>/labels/`` (``labels_dir`` resolves both).
"""

from __future__ import annotations

import json

from pydantic import BaseModel, ConfigDict, Field, ValidationError

from shared.errors import InvalidInputError

LABELS_DIR = "labels/"
LABEL_SUFFIX = ".txt"
CLASSES_FILE = "classes.txt"
COCO_FILE = "annotations.json"
SUMMARY_FILE = "summary.json"
EXAMPLES_DIR = "examples/"
MANIFEST_FILE = "manifest.json"
CLASS_NAMES = ("anomaly",)
KIND = "pseudo-labels"
FORMAT = 1


class PseudoLabelFiles(BaseModel):
    """Names of the output's files, relative to ``<out>/``."""

    model_config = ConfigDict(extra="ignore")

    labels: str = LABELS_DIR
    classes: str = CLASSES_FILE
    annotations: str = COCO_FILE
    summary: str = SUMMARY_FILE
    examples: list[str] = Field(default_factory=list, description="file names under examples/")


class PseudoLabelManifest(BaseModel):
    """``manifest.json`` of a pseudo-label output."""

    model_config = ConfigDict(extra="ignore", allow_inf_nan=False)

    kind: str = KIND
    format: int = FORMAT
    job_id: str | None = None
    category: str
    images_prefix: str
    maps_prefix: str
    map_job_id: str | None = None
    classes: list[str] = Field(default_factory=lambda: list(CLASS_NAMES))
    threshold: float
    count: int = Field(ge=0, description="images with a label file")
    images_with_boxes: int = Field(ge=0)
    files: PseudoLabelFiles = Field(default_factory=PseudoLabelFiles)
    images: dict[str, str] = Field(description="image stem -> image key")

    def to_bytes(self) -> bytes:
        return self.model_dump_json(indent=1).encode()

    @classmethod
    def from_bytes(cls, raw: bytes, key: str = MANIFEST_FILE) -> PseudoLabelManifest:
        """Parse a manifest; raises InvalidInputError (code ``bad_manifest``) naming ``key``."""
        try:
            return cls.model_validate(json.loads(raw))
        except (ValueError, ValidationError) as exc:
            raise InvalidInputError(
                f"{key} is not a pseudo-label manifest: {exc}", code="bad_manifest"
            ) from exc


def manifest_key(out: str) -> str:
    return f"{out}{MANIFEST_FILE}"


def label_key(out: str, stem: str) -> str:
    return f"{out}{LABELS_DIR}{stem}{LABEL_SUFFIX}"


def file_key(out: str, name: str) -> str:
    """Key of one of the top-level files (``CLASSES_FILE``, ``COCO_FILE``, ``SUMMARY_FILE``)."""
    return f"{out}{name}"


def example_key(out: str, stem: str) -> str:
    return f"{out}{EXAMPLES_DIR}{stem}.png"


def classes_text() -> bytes:
    return "\n".join(CLASS_NAMES).encode() + b"\n"


def output_prefix(labels_prefix: str) -> str:
    """``<out>/`` for a reader pointed at ``<out>/`` or at ``<out>/labels/``."""
    if labels_prefix.endswith(LABELS_DIR):
        return labels_prefix[: -len(LABELS_DIR)]
    return labels_prefix
