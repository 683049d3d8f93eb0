"""A saved evaluation as a gallery set: each image of the evaluated split with its
ground-truth boxes (found or missed) and the detector's boxes at the evaluation's conf
(matched or false alarms), from the per-image records the job saved (``ml.error_analysis``).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from services.finetune.ml.error_analysis import DetMark, GtMark, ImageErrors
from services.finetune.stores.datasets import DatasetRef
from services.finetune.usecases.evaluation_views import error_analysis
from services.finetune.usecases.gallery_pages import GalleryBox, GalleryIndex, GalleryItem
from shared.schemas.artifacts import ArtifactRef


def evaluation_key(ref: ArtifactRef, document: dict[str, Any]) -> tuple[str, ...]:
    """The cache key of ``ref``'s evaluation ``document``: a re-evaluation on the same dataset
    version and split rewrites the document in place with a new ``evaluated_at``."""
    where = (str(document["dataset"]), str(document["split"]))
    return ("evaluation", str(ref), *where, str(document.get("evaluated_at", "")))


def evaluation_index(document: dict[str, Any]) -> GalleryIndex:
    """The gallery index of a saved evaluation document (``usecases.evaluations``).

    Raises:
        InvalidInputError: the document predates per-image records
            (evaluation_without_errors), or names an invalid dataset (invalid_dataset_ref).
    """
    errors = error_analysis(document)
    name, _, version = str(document["dataset"]).partition(":")
    dataset = DatasetRef(name, version)
    items = tuple(_item(dataset, errors.classes, image) for image in errors.images)
    title = f"{document['model']} on {dataset} · {document['split']} (conf {errors.conf:g})"
    return GalleryIndex(
        "evaluation", title, list(errors.classes), ["truth", "pred"], items, conf=errors.conf
    )


def _item(dataset: DatasetRef, classes: Sequence[str], image: ImageErrors) -> GalleryItem:
    return GalleryItem(
        name=image.file_name,
        image_key=dataset.image_key(image.file_name),
        width=image.width,
        height=image.height,
        truth=[_truth_box(classes, mark) for mark in image.gt],
        predicted=[_predicted_box(classes, mark) for mark in image.dets],
        misses=image.misses,
        false_alarms=image.false_alarms,
    )


def _truth_box(classes: Sequence[str], mark: GtMark) -> GalleryBox:
    x1, y1, x2, y2 = mark.box
    return GalleryBox(x1=x1, y1=y1, x2=x2, y2=y2, label=classes[mark.class_id], found=mark.found)


def _predicted_box(classes: Sequence[str], mark: DetMark) -> GalleryBox:
    x1, y1, x2, y2 = mark.box
    label = classes[mark.class_id]
    return GalleryBox(x1=x1, y1=y1, x2=x2, y2=y2, label=label, score=mark.score, tp=mark.tp)
