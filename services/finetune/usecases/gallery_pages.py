"""The gallery's page model, and how a page is cut from a whole set (filters, order, slice).

Kept apart from where the sets come from (``usecases.galleries``) so the same filters hold
for every kind of set.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Literal

from pydantic import BaseModel, Field

from shared.errors import InvalidInputError

Layer = Literal["truth", "pseudo", "map", "pred"]
SetKind = Literal["dataset", "pool", "images", "evaluation"]
SortOrder = Literal["name", "score"]
MAX_PAGE = 200


class GalleryBox(BaseModel):
    """A box in pixels of the original image: its class name and, for pseudo boxes and
    predictions, score; on an evaluation, whether it was matched at the evaluation's conf."""

    x1: float
    y1: float
    x2: float
    y2: float
    label: str
    score: float | None = None
    tp: bool | None = Field(
        None, description="a prediction that matched a ground-truth box of its class"
    )
    found: bool | None = Field(
        None, description="a ground-truth box some prediction of its class matched"
    )


class GalleryItem(BaseModel):
    """One image: its store key, size (None for a plain prefix), boxes per layer, anomaly
    score and map key where the set has them."""

    name: str
    image_key: str
    width: int | None = None
    height: int | None = None
    truth: list[GalleryBox] = Field(default_factory=list, description="ground-truth boxes")
    pseudo: list[GalleryBox] = Field(default_factory=list, description="pseudo boxes")
    predicted: list[GalleryBox] | None = Field(
        None, description="an evaluated detector's boxes at the evaluation's conf"
    )
    misses: int | None = Field(None, description="ground-truth boxes no prediction found")
    false_alarms: int | None = Field(None, description="predictions that matched no box")
    score: float | None = Field(None, description="anomaly image score (scores.csv)")
    map_key: str | None = Field(None, description="the image's anomaly map (.npy)")
    thumbnail: str | None = Field(
        None, description="the JPEG thumbnail as a data: URI, when the page was asked for them"
    )


class GalleryPage(BaseModel):
    """One page of a set; ``total`` counts the images matching the filters."""

    kind: SetKind
    title: str
    classes: list[str]
    layers: list[Layer] = Field(description="overlays this set has")
    score_range: tuple[float, float] | None = Field(None, description="anomaly scores, set-wide")
    conf: float | None = Field(
        None, description="an evaluation's threshold: predictions below it are not shown"
    )
    images: int = Field(description="images in the set")
    total: int
    offset: int
    limit: int
    next_offset: int | None
    items: list[GalleryItem]


@dataclass(frozen=True)
class GalleryFilter:
    """Which images a page lists, and in which order."""

    class_name: str | None = None
    has_boxes: bool | None = None
    min_score: float | None = None
    max_score: float | None = None
    sort: SortOrder = "name"
    has_miss: bool | None = None
    has_false_alarm: bool | None = None


@dataclass(frozen=True)
class GalleryIndex:
    """A whole set, as its pages are cut from."""

    kind: SetKind
    title: str
    classes: list[str]
    layers: list[Layer]
    items: tuple[GalleryItem, ...]
    conf: float | None = None

    @property
    def score_range(self) -> tuple[float, float] | None:
        scores = [i.score for i in self.items if i.score is not None]
        return (min(scores), max(scores)) if scores else None


def page_of(index: GalleryIndex, filters: GalleryFilter, offset: int, limit: int) -> GalleryPage:
    """The images of ``index`` that pass ``filters``, in order, from ``offset``.

    Raises:
        InvalidInputError: a limit out of 1..MAX_PAGE or a negative offset (invalid_page), a
            class the set does not have (unknown_class), a score filter or order on a set
            without scores (no_scores), a miss or false-alarm filter on a set that is not an
            evaluation (no_evaluation), or min_score > max_score (invalid_score_range).
    """
    if not 1 <= limit <= MAX_PAGE or offset < 0:
        raise InvalidInputError(
            f"limit must be 1..{MAX_PAGE} and offset >= 0, got {limit} and {offset}",
            code="invalid_page",
        )
    check_filters(index, filters)
    chosen = [item for item in index.items if _passes(item, filters)]
    if filters.sort == "score":
        chosen.sort(key=lambda item: -(item.score if item.score is not None else -math.inf))
    end = offset + limit
    return GalleryPage(
        kind=index.kind,
        title=index.title,
        classes=index.classes,
        layers=index.layers,
        score_range=index.score_range,
        conf=index.conf,
        images=len(index.items),
        total=len(chosen),
        offset=offset,
        limit=limit,
        next_offset=end if end < len(chosen) else None,
        items=chosen[offset:end],
    )


def check_filters(index: GalleryIndex, filters: GalleryFilter) -> None:
    """Refuse filters ``index`` cannot apply (see ``page_of``)."""
    if filters.class_name is not None and filters.class_name not in index.classes:
        raise InvalidInputError(
            f"{index.title} has no class {filters.class_name!r}; it has {index.classes}",
            code="unknown_class",
        )
    wants_scores = filters.min_score is not None or filters.max_score is not None
    if (wants_scores or filters.sort == "score") and index.score_range is None:
        raise InvalidInputError(
            f"{index.title} has no anomaly scores to filter or sort by", code="no_scores"
        )
    wants_errors = filters.has_miss is not None or filters.has_false_alarm is not None
    if wants_errors and index.kind != "evaluation":
        raise InvalidInputError(
            f"{index.title} is not an evaluation: it has no misses or false alarms to filter "
            "by (see /v1/galleries/evaluations/{name}/{version})",
            code="no_evaluation",
        )
    low, high = filters.min_score, filters.max_score
    if low is not None and high is not None and low > high:
        raise InvalidInputError(
            f"min_score {low} is above max_score {high}", code="invalid_score_range"
        )


def _passes(item: GalleryItem, filters: GalleryFilter) -> bool:
    boxes = item.truth + item.pseudo  # has_boxes: the set's own boxes, never predictions
    labelled = boxes + (item.predicted or [])
    if filters.class_name is not None and all(b.label != filters.class_name for b in labelled):
        return False
    if filters.has_boxes is not None and bool(boxes) != filters.has_boxes:
        return False
    if not _errors_pass(item.misses, filters.has_miss):
        return False
    if not _errors_pass(item.false_alarms, filters.has_false_alarm):
        return False
    if filters.min_score is not None or filters.max_score is not None:
        if item.score is None:
            return False
        if filters.min_score is not None and item.score < filters.min_score:
            return False
        if filters.max_score is not None and item.score > filters.max_score:
            return False
    return True


def _errors_pass(count: int | None, wanted: bool | None) -> bool:
    """Whether an image with ``count`` misses (or false alarms) passes a has_... filter."""
    return wanted is None or ((count or 0) > 0) == wanted
