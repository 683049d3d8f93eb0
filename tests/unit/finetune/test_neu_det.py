"""NEU-DET's real VOC files import with the counts that data/neu-det/SOURCE.md states."""

from __future__ import annotations

import time
from pathlib import Path

import pytest

from services.finetune.ml.dataset import DetectionDataset
from services.finetune.ml.image_files import content_hash
from services.finetune.ml.splits import split_train_val
from services.finetune.ml.voc import import_voc

NEU_CLASSES = [
    "crazing",
    "inclusion",
    "patches",
    "pitted_surface",
    "rolled-in_scale",
    "scratches",
]


@pytest.fixture(scope="module")
def neu_root(shared_data: Path) -> Path:
    root = shared_data / "neu-det"
    if not (root / "annotations").is_dir():
        pytest.skip(f"{root} has no annotations folder")
    return root


@pytest.fixture(scope="module")
def neu(neu_root: Path) -> DetectionDataset:
    return import_voc(neu_root / "annotations", neu_root / "images", classes=NEU_CLASSES)


def test_all_1800_annotations_parse_quickly(neu_root: Path) -> None:
    # when
    start = time.perf_counter()
    dataset = import_voc(neu_root / "annotations", neu_root / "images")
    elapsed = time.perf_counter() - start
    # then classes come out in SOURCE.md's order, and parsing stays interactive
    assert len(dataset.images) == 1800
    assert dataset.classes == NEU_CLASSES
    assert elapsed < 10.0


def test_box_counts_match_source_md(neu: DetectionDataset) -> None:
    # then
    assert neu.num_boxes == 4189
    assert neu.box_counts() == {
        "crazing": 689,
        "inclusion": 1011,
        "patches": 881,
        "pitted_surface": 432,
        "rolled-in_scale": 628,
        "scratches": 548,
    }
    assert neu.image_counts() == {
        "crazing": 300,
        "inclusion": 382,
        "patches": 342,
        "pitted_surface": 301,
        "rolled-in_scale": 300,
        "scratches": 300,
    }
    assert sum(b.difficult for im in neu.images for b in im.boxes) == 81


def test_quirks_are_handled(neu: DetectionDataset) -> None:
    # given files named in SOURCE.md
    by_name = {im.file_name: im for im in neu.images}
    # then <filename> without extension still pairs with the .jpg (quirk 1) and labels
    # come from <name>, not the file name (quirk 3)
    assert "patches_104.jpg" in by_name
    assert any(NEU_CLASSES[b.class_id] == "patches" for b in by_name["crazing_104.jpg"].boxes)
    # and every 1-based box lies inside the 200 x 200 image
    assert all(
        0 <= b.x1 < b.x2 <= im.width and 0 <= b.y1 < b.y2 <= im.height
        for im in neu.images
        for b in im.boxes
    )


def test_byte_identical_duplicates_share_a_split(neu: DetectionDataset, neu_root: Path) -> None:
    # given content hashes of the images (patches_101 and patches_105 are identical)
    hashes = {
        im.file_name: content_hash((neu_root / "images" / im.file_name).read_bytes())
        for im in neu.images
    }
    assert hashes["patches_101.jpg"] == hashes["patches_105.jpg"]
    # when splitting with several seeds
    for seed in range(5):
        train, val = split_train_val(neu, 0.2, seed=seed, groups=hashes)
        train_names = {im.file_name for im in train.images}
        # then the pair never straddles the split
        assert ("patches_101.jpg" in train_names) == ("patches_105.jpg" in train_names)
        assert len(train.images) + len(val.images) == 1800
