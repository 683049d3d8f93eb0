"""Labelled defects for a ToCoAD fit, read from a stored detection dataset (the seam in
``shared.schemas.detection_dataset``, written by the finetune service's imports).

A fit names a dataset (``name``, ``name:latest`` or ``name:version``) and a split; every image
of the split that holds at least one box is a labelled defect image. Two uses share them: the
ToCoAD fit pastes them (Stage I), and their maps check the pseudo-label gate. An image pasted
in the fit is no fair check, so ``split_sides`` holds a share out for the check (issue 21).
"""

from __future__ import annotations

import hashlib
import math
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from services.anomaly_map.params import (
    MIN_REFERENCE,
    REFERENCE_SHARE,
    DefectSide,
    LabelledDefects,
)
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


@dataclass(frozen=True)
class DefectSides:
    """A split's defect images (file names, in dataset order) on each side of the hold-out."""

    every: tuple[str, ...]
    paste: tuple[str, ...]
    reference: tuple[str, ...]
    held_out: bool  # False: too few images, every image is on both sides

    def names(self, side: DefectSide) -> tuple[str, ...]:
        return {"paste": self.paste, "reference": self.reference, "all": self.every}[side]


def _unit_hash(name: str) -> float:
    """A stable number in [0, 1) per file name (no salt: every process agrees)."""
    return int.from_bytes(hashlib.sha256(name.encode()).digest()[:8], "big") / 2.0**64


def _main_class(record: ImageRecord) -> int:
    """The class most of the image's boxes hold (the lowest id on a tie)."""
    counts = Counter(b.class_id for b in record.boxes)
    return min(counts, key=lambda c: (-counts[c], c))


def split_sides(
    records: Sequence[ImageRecord],
    share: float = REFERENCE_SHARE,
    min_reference: int = MIN_REFERENCE,
) -> DefectSides:
    """Hold ``share`` of the defect images out of the fit, to check the gate with.

    The paper and agssp-spec §3 step 2 / §6.4.3 leave the image gate to us; tocoad-spec §5
    keeps Stage I's monitoring on held-out synthetic images. Likewise images the fit pasted
    (tocoad-spec §3, our labelled source) may score above the pool's own defects, so the gate
    check reads only images the fit never saw. The split depends only on file names and
    classes, so a fit and a map job over the same split agree without passing lists: per main
    class the images are ranked by a hash of their name, each gets its within-class quantile
    ((rank + 0.5) / n), and the ``share * n`` (rounded half up) lowest quantiles (ties by hash) are the
    reference: stratified, so every class with enough images lands on both sides.

    Args:
        records: the split's images that hold boxes.
        share: share held out, in (0, 0.5]: the paste side keeps at least as many.
        min_reference: fewer reference images than this (the gate cannot place a quantile
            on them): nothing is held out, both sides get every image, ``held_out`` False.
    """
    names = [r.file_name for r in records]
    count = math.floor(share * len(names) + 0.5)
    if count < min_reference or len(names) - count < 1:
        return DefectSides(tuple(names), tuple(names), tuple(names), held_out=False)
    classes: dict[int, list[str]] = {}
    for record in records:
        classes.setdefault(_main_class(record), []).append(record.file_name)
    order: dict[str, tuple[float, float, str]] = {}
    for members in classes.values():
        ranked = sorted(members, key=lambda n: (_unit_hash(n), n))
        for rank, name in enumerate(ranked):
            order[name] = ((rank + 0.5) / len(ranked), _unit_hash(name), name)
    reference = set(sorted(order, key=order.__getitem__)[:count])
    return DefectSides(
        every=tuple(names),
        paste=tuple(n for n in names if n not in reference),
        reference=tuple(n for n in names if n in reference),
        held_out=True,
    )


@dataclass(frozen=True)
class DefectSelection:
    """The images one job uses: its side of the split, at most ``max_images`` of them."""

    spec: LabelledDefects
    prefix: str  # the dataset version's prefix
    sides: DefectSides
    records: tuple[ImageRecord, ...]

    def warning(self) -> str | None:
        """Why a side could not be held out, when one was asked for and it was not."""
        if self.spec.side == "all" or self.sides.held_out:
            return None
        return (
            f"{len(self.sides.every)} labelled defect images are too few to hold out "
            f"{self.spec.reference_share:.0%} of them (at least {self.spec.min_reference} "
            "reference images): both sides use all of them, so a gate check on maps of a fit "
            "that pasted them may be biased (reference_held_out false)"
        )

    def outputs(self) -> dict[str, Any]:
        """What the job's record says about the images it used (``defect_images``)."""
        return {
            "side": self.spec.side,
            "images": len(self.records),
            "paste_images": len(self.sides.paste),
            "reference_images": len(self.sides.reference),
            "reference_held_out": self.sides.held_out,
            "reference_share": self.spec.reference_share,
        }


def select_defects(store: ObjectStore, spec: LabelledDefects) -> DefectSelection:
    """The defect images of ``spec``'s side: the split's images with boxes, divided by
    ``split_sides`` over all of them, then up to ``max_images`` of the side, evenly spaced."""
    prefix = resolve_dataset(store, spec.dataset)
    wanted = set(split_files(store, prefix, spec.split))
    dataset = DetectionDataset.model_validate_json(store.get_bytes(prefix + DATASET_FILE))
    labelled = [im for im in dataset.images if im.file_name in wanted and im.boxes]
    # Split before capping: the sides must not depend on each job's max_images.
    sides = split_sides(labelled, spec.reference_share, spec.min_reference)
    chosen = set(sides.names(spec.side))
    records = [im for im in labelled if im.file_name in chosen]
    if len(records) > spec.max_images:
        picks = np.linspace(0, len(records) - 1, spec.max_images).round().astype(int)
        records = [records[i] for i in sorted(set(picks.tolist()))]
    return DefectSelection(spec, prefix, sides, tuple(records))


def defect_image_keys(selection: DefectSelection) -> tuple[str, list[str]]:
    """The dataset version's images prefix and the keys of the selected defect images, for a
    dataset map over labelled defects."""
    images = selection.prefix + IMAGES_DIR
    return images, [images + im.file_name for im in selection.records]


def read_defect_images(store: ObjectStore, selection: DefectSelection) -> list[DefectImage]:
    """The selected defect images' bytes, with their boxes."""
    return [
        DefectImage(
            im.file_name,
            store.get_bytes(selection.prefix + IMAGES_DIR + im.file_name),
            tuple((b.x1, b.y1, b.x2, b.y2) for b in im.boxes),
        )
        for im in selection.records
    ]
