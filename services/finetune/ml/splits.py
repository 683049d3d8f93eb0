"""Deterministic train/val splits that keep duplicates together, and few-shot "mini-N" subsets.

``split_stratified`` is the import's default: per stratum (an image group's rarest class,
or "defect-free"), the val share of that stratum, at least one group where the stratum has
5 images or more, so that every class and both defective and defect-free images appear in
validation; duplicate groups (exact and near, ``image_files``) never straddle the split.
``split_train_val`` (a shuffle of the groups) is the earlier split, kept for data sets
imported with it (their benchmarks' rows stay comparable).
"""

from __future__ import annotations

import random
from collections.abc import Iterable, Mapping, Sequence

from services.finetune.ml.dataset import DetectionDataset
from shared.errors import InvalidInputError


def split_train_val(
    dataset: DetectionDataset,
    val_fraction: float,
    seed: int,
    groups: Mapping[str, str] | None = None,
) -> tuple[DetectionDataset, DetectionDataset]:
    """Split images into train and val, never separating images of one group.

    Pass the SHA-256 of each image's bytes as ``groups`` (see ``image_files.content_hash``)
    so byte-identical duplicates (NEU-DET ``patches_101``/``patches_105``) cannot leak
    between the splits. Groups are shuffled with ``seed`` and taken into val until it
    holds ``round(val_fraction * n)`` images or more, so the val size can overshoot by at
    most one group minus one image.

    Args:
        dataset: images to split.
        val_fraction: share of images for validation, in ``[0, 1)``.
        seed: the same seed, dataset and groups always give the same split.
        groups: ``file name -> group key``; images not listed form their own group.

    Returns:
        ``(train, val)`` with the dataset's classes; images keep their original order.

    Raises:
        InvalidInputError: ``val_fraction`` is out of range.
    """
    if not 0.0 <= val_fraction < 1.0:
        raise InvalidInputError(f"val_fraction must be in [0, 1), got {val_fraction}")
    members: dict[str, list[str]] = {}
    for image in dataset.images:
        key = (groups or {}).get(image.file_name, f"\x00{image.file_name}")
        members.setdefault(key, []).append(image.file_name)
    keys = sorted(members)  # independent of the dataset's image order
    random.Random(seed).shuffle(keys)
    target = round(val_fraction * len(dataset.images))
    val: set[str] = set()
    for key in keys:
        if len(val) >= target:
            break
        val.update(members[key])
    train = [im.file_name for im in dataset.images if im.file_name not in val]
    return dataset.subset(train), dataset.subset(val)


def mini_subset(dataset: DetectionDataset, per_class: int, seed: int) -> DetectionDataset:
    """A few-shot subset with at least ``per_class`` labelled images for every class.

    Classes are served rarest first (fewest images); for each, images holding the class
    are drawn in a seeded order until the subset holds ``per_class`` images with that
    class (or all there are). An image drawn for one class counts for every class it
    holds, so frequent, co-occurring classes may end up with more than ``per_class``.

    Raises:
        InvalidInputError: ``per_class`` < 1.
    """
    if per_class < 1:
        raise InvalidInputError(f"per_class must be >= 1, got {per_class}")
    holders: dict[int, list[str]] = {c: [] for c in range(len(dataset.classes))}
    for image in dataset.images:
        for class_id in {b.class_id for b in image.boxes}:
            holders[class_id].append(image.file_name)
    rng = random.Random(seed)
    chosen: set[str] = set()
    for class_id in sorted(holders, key=lambda c: (len(holders[c]), c)):
        candidates = sorted(holders[class_id])
        rng.shuffle(candidates)
        have = sum(1 for name in candidates if name in chosen)
        for name in candidates:
            if have >= per_class:
                break
            if name not in chosen:
                chosen.add(name)
                have += 1
    return dataset.subset(chosen)


MIN_STRATUM = 5  # a class (or the defect-free images) this common is always seen in val


def split_stratified(
    dataset: DetectionDataset,
    val_fraction: float,
    seed: int,
    groups: Mapping[str, str] | None = None,
) -> tuple[DetectionDataset, DetectionDataset]:
    """Split images into train and val, stratified by class and by defect presence.

    Groups (``file name -> key``: duplicates share a key) move as one. A group's stratum is
    the rarest class among its boxes (by images holding it), or "defect-free"; each stratum
    gives ``round(val_fraction x its images)`` images to val, at least one group when it
    holds ``MIN_STRATUM`` images or more and more than one group. A class that still has no
    val image although ``MIN_STRATUM`` images hold it (it co-occurs with rarer ones) gets
    its smallest train group moved over.

    Raises:
        InvalidInputError: ``val_fraction`` is out of range.
    """
    if not 0.0 <= val_fraction < 1.0:
        raise InvalidInputError(f"val_fraction must be in [0, 1), got {val_fraction}")
    members = _groups(dataset, groups)
    classes_of = {im.file_name: {b.class_id for b in im.boxes} for im in dataset.images}
    holders = _class_counts(classes_of.values(), len(dataset.classes))
    strata: dict[int, list[str]] = {}
    for key, names in members.items():
        found = set().union(*(classes_of[n] for n in names))
        stratum = min(found, key=lambda c: (holders[c], c)) if found else -1
        strata.setdefault(stratum, []).append(key)
    rng = random.Random(seed)
    val: set[str] = set()
    for stratum in sorted(strata):
        keys = sorted(strata[stratum])
        rng.shuffle(keys)
        val.update(_take(keys, members, val_fraction))
    if val_fraction > 0:
        _cover(members, classes_of, holders, val)
    train = [im.file_name for im in dataset.images if im.file_name not in val]
    return dataset.subset(train), dataset.subset(val)


def _groups(dataset: DetectionDataset, groups: Mapping[str, str] | None) -> dict[str, list[str]]:
    members: dict[str, list[str]] = {}
    for image in dataset.images:
        key = (groups or {}).get(image.file_name, f"\x00{image.file_name}")
        members.setdefault(key, []).append(image.file_name)
    return members


def _class_counts(per_image: Iterable[set[int]], num_classes: int) -> list[int]:
    counts = [0] * num_classes
    for found in per_image:
        for class_id in found:
            counts[class_id] += 1
    return counts


def _take(keys: Sequence[str], members: Mapping[str, list[str]], fraction: float) -> set[str]:
    """Groups of one stratum for val, in ``keys`` order, until its share is reached; the
    last group always stays in train (a stratum of one group gives val nothing)."""
    size = sum(len(members[k]) for k in keys)
    want = round(fraction * size)
    if fraction > 0 and size >= MIN_STRATUM:
        want = max(want, 1)
    taken: set[str] = set()
    for key in keys[:-1]:
        if len(taken) >= want:
            break
        taken.update(members[key])
    return taken


def _cover(
    members: Mapping[str, list[str]],
    classes_of: Mapping[str, set[int]],
    holders: Sequence[int],
    val: set[str],
) -> None:
    """Move, per class held by ``MIN_STRATUM`` images but absent from val, its smallest
    train group into val (only while train keeps another group with that class)."""
    for class_id, count in enumerate(holders):
        if count < MIN_STRATUM or any(class_id in classes_of[n] for n in val):
            continue
        with_class = [
            k for k, names in members.items()
            if not val & set(names) and any(class_id in classes_of[n] for n in names)
        ]  # fmt: skip
        if len(with_class) > 1:
            smallest = min(with_class, key=lambda k: (len(members[k]), k))
            val.update(members[smallest])
