"""Two detectors' misses and false alarms on the same images, image by image.

The input is each detector's ``ErrorAnalysis`` (``ml.error_analysis``) on one split; the
output lists every image with both detectors' counts and how far apart they are
(``|misses b - misses a| + |false alarms b - false alarms a|``), largest first, so a person
looks first at the images where the two disagree most. Pure pydantic.
"""

from __future__ import annotations

from pydantic import BaseModel, Field

from services.finetune.ml.error_analysis import ErrorAnalysis, ImageErrors
from shared.errors import InvalidInputError


class SideCounts(BaseModel):
    """One detector's counts on one image."""

    misses: int
    false_alarms: int
    detections: int


class ImageDifference(BaseModel):
    """One image under both detectors."""

    file_name: str
    gt: int = Field(description="ground-truth boxes on the image")
    a: SideCounts
    b: SideCounts
    difference: int = Field(description="|misses b - a| + |false alarms b - a|")
    change: int = Field(description="(misses + false alarms) of b minus those of a")


def _counts(image: ImageErrors) -> SideCounts:
    return SideCounts(
        misses=image.misses, false_alarms=image.false_alarms, detections=len(image.dets)
    )


def compare_errors(a: ErrorAnalysis, b: ErrorAnalysis) -> list[ImageDifference]:
    """Every image with both detectors' counts, sorted by ``difference`` (largest first),
    then by ``|change|``, then by file name.

    Raises:
        InvalidInputError: the analyses cover other images or classes (code eval_mismatch).
    """
    names = [im.file_name for im in a.images]
    if names != [im.file_name for im in b.images] or a.classes != b.classes:
        raise InvalidInputError(
            "the two evaluations cover different images or classes", code="eval_mismatch"
        )
    rows = []
    for left, right in zip(a.images, b.images, strict=True):
        ca, cb = _counts(left), _counts(right)
        rows.append(
            ImageDifference(
                file_name=left.file_name,
                gt=len(left.gt),
                a=ca,
                b=cb,
                difference=abs(cb.misses - ca.misses) + abs(cb.false_alarms - ca.false_alarms),
                change=(cb.misses + cb.false_alarms) - (ca.misses + ca.false_alarms),
            )
        )
    rows.sort(key=lambda r: (-r.difference, -abs(r.change), r.file_name))
    return rows
