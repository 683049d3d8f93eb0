"""Deterministic train/val splits that keep duplicates together, and few-shot "mini-N" subsets."""

from __future__ import annotations

import random
from collections.abc import Mapping

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
