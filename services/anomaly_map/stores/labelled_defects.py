"""Labelled defects for a ToCoAD fit, read from a stored detection dataset (the seam in
``shared.schemas.detection_dataset``, written by the finetune service's imports).

A fit names a dataset (``name``, ``name:latest`` or ``name:version``) and a split; every image
of the split that holds at least one box is a source of defect exemplars.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from shared.errors import InvalidInputError, NotFoundError
from shared.schemas.artifacts import check_segment
from shared.schemas.detection_dataset import (
    DATASET_FILE,
    IMAGES_DIR,
    MANIFEST_FILE,
    SPLITS_FILE,
    DetectionDataset,
    ImageRecord,
    latest_key,
    split_names,
    version_prefix,
)
from shared.storage.base import ObjectNotFoundError, ObjectStore

BoxXYXY = tuple[float, float, float, float]


@dataclass(frozen=True)
class DefectImage:
    """One labelled image's bytes and its boxes (pixel corners)."""

    file_name: str
    data: bytes
    boxes: tuple[BoxXYXY, ...]


def resolve_dataset(store: ObjectStore, spec: str) -> str:
    """``name``, ``name:latest`` or ``name:version`` -> the complete version's prefix.

    Raises:
        InvalidInputError: a malformed reference (code invalid_dataset_ref).
        NotFoundError: no such dataset or version (code dataset_not_found).
    """
    name, _, version = spec.partition(":")
    try:
        check_segment(name, "name")
        if version in ("", "latest"):
            version = store.get_bytes(latest_key(name)).decode().strip()
        check_segment(version, "version")
    except ValueError as exc:
        raise InvalidInputError(str(exc), code="invalid_dataset_ref") from exc
    except ObjectNotFoundError as exc:
        raise NotFoundError(f"dataset {name!r} does not exist", code="dataset_not_found") from exc
    prefix = version_prefix(name, version)
    if not store.exists(prefix + MANIFEST_FILE):
        raise NotFoundError(f"dataset {name}:{version} does not exist", code="dataset_not_found")
    return prefix


def split_files(store: ObjectStore, prefix: str, split: str) -> list[str]:
    """File names of ``split`` in the dataset at ``prefix``.

    Raises:
        InvalidInputError: the dataset has no such split (code unknown_split).
    """
    try:
        return split_names(store.get_bytes(prefix + SPLITS_FILE), split)
    except KeyError as exc:
        raise InvalidInputError(
            f"dataset {prefix} has no split {split!r}", code="unknown_split"
        ) from exc


def _defect_records(
    store: ObjectStore, prefix: str, split: str, max_images: int
) -> list[ImageRecord]:
    """Up to ``max_images`` images of ``split`` that hold boxes, evenly spaced."""
    wanted = set(split_files(store, prefix, split))
    dataset = DetectionDataset.model_validate_json(store.get_bytes(prefix + DATASET_FILE))
    labelled = [im for im in dataset.images if im.file_name in wanted and im.boxes]
    if len(labelled) > max_images:
        picks = np.linspace(0, len(labelled) - 1, max_images).round().astype(int)
        labelled = [labelled[i] for i in sorted(set(picks.tolist()))]
    return labelled


def defect_image_keys(
    store: ObjectStore, spec: str, split: str, max_images: int
) -> tuple[str, list[str]]:
    """The dataset version's images prefix and the keys of its defect images (as
    ``read_defect_images`` picks them), for a dataset map over labelled defects."""
    prefix = resolve_dataset(store, spec)
    images = prefix + IMAGES_DIR
    return images, [
        images + im.file_name for im in _defect_records(store, prefix, split, max_images)
    ]


def read_defect_images(
    store: ObjectStore, spec: str, split: str, max_images: int
) -> list[DefectImage]:
    """Up to ``max_images`` images of ``split`` that hold boxes (evenly spaced), with boxes."""
    prefix = resolve_dataset(store, spec)
    labelled = _defect_records(store, prefix, split, max_images)
    return [
        DefectImage(
            im.file_name,
            store.get_bytes(prefix + IMAGES_DIR + im.file_name),
            tuple((b.x1, b.y1, b.x2, b.y2) for b in im.boxes),
        )
        for im in labelled
    ]
