"""Deterministic train/val splits with duplicate groups, and mini-N few-shot subsets."""

from __future__ import annotations

import pytest

from services.finetune.ml.dataset import Box, DetectionDataset, ImageRecord
from services.finetune.ml.splits import mini_subset, split_train_val
from shared.errors import InvalidInputError


def _dataset(n: int = 40, classes: int = 3) -> DetectionDataset:
    images = []
    for i in range(n):
        # class (i % classes) in every image; every 5th image also holds class 0
        boxes = [Box(x1=0, y1=0, x2=5, y2=5, class_id=i % classes)]
        if i % 5 == 0:
            boxes.append(Box(x1=1, y1=1, x2=4, y2=4, class_id=0))
        images.append(ImageRecord(file_name=f"{i:02d}.jpg", width=10, height=10, boxes=boxes))
    return DetectionDataset(classes=[f"c{k}" for k in range(classes)], images=images)


def _names(dataset: DetectionDataset) -> list[str]:
    return [im.file_name for im in dataset.images]


def test_split_is_deterministic_and_sized_by_fraction() -> None:
    # given
    dataset = _dataset()
    # when
    train1, val1 = split_train_val(dataset, 0.25, seed=7)
    train2, val2 = split_train_val(dataset, 0.25, seed=7)
    _, val3 = split_train_val(dataset, 0.25, seed=8)
    # then
    assert _names(val1) == _names(val2)
    assert _names(train1) == _names(train2)
    assert len(val1.images) == 10
    assert len(train1.images) == 30
    assert not set(_names(train1)) & set(_names(val1))
    assert _names(val3) != _names(val1)


def test_split_does_not_depend_on_image_order() -> None:
    # given the same images listed in reverse
    dataset = _dataset()
    reversed_dataset = DetectionDataset(classes=dataset.classes, images=dataset.images[::-1])
    # when
    _, val = split_train_val(dataset, 0.3, seed=1)
    _, val_rev = split_train_val(reversed_dataset, 0.3, seed=1)
    # then
    assert set(_names(val)) == set(_names(val_rev))


def test_split_keeps_each_group_on_one_side() -> None:
    # given images paired into groups of two (e.g. equal content hashes)
    dataset = _dataset()
    groups = {f"{i:02d}.jpg": f"hash{i // 2}" for i in range(40)}
    for seed in range(10):
        # when
        train, val = split_train_val(dataset, 0.3, seed=seed, groups=groups)
        # then
        val_groups = {groups[n] for n in _names(val)}
        assert not val_groups & {groups[n] for n in _names(train)}
        assert len(val.images) == 12


def test_split_rejects_bad_fraction() -> None:
    # when / then
    with pytest.raises(InvalidInputError, match="val_fraction"):
        split_train_val(_dataset(), 1.0, seed=0)


def test_mini_subset_has_n_images_per_class_and_is_deterministic() -> None:
    # given
    dataset = _dataset(n=60)
    # when
    mini = mini_subset(dataset, per_class=4, seed=3)
    # then every class reaches 4 images; co-occurrence may push class 0 higher
    counts = mini.image_counts()
    assert counts["c1"] == 4
    assert counts["c2"] == 4
    assert 4 <= counts["c0"] <= 12
    assert _names(mini_subset(dataset, per_class=4, seed=3)) == _names(mini)
    assert _names(mini_subset(dataset, per_class=4, seed=4)) != _names(mini)


def test_mini_subset_takes_all_images_of_a_rare_class() -> None:
    # given class c1 appears in only 2 images
    dataset = _dataset(n=6, classes=2)
    dataset.images[3].boxes[0] = Box(x1=0, y1=0, x2=5, y2=5, class_id=0)
    # when
    mini = mini_subset(dataset, per_class=5, seed=0)
    # then
    assert mini.image_counts()["c1"] == 2
