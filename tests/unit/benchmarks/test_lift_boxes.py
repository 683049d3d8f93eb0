"""The lift benchmark scores pseudo boxes against the pool's truth: IoU, one-to-one matching,
box precision and recall, and the image-level shares, on hand-made boxes."""

from __future__ import annotations

from pathlib import Path

import pytest

from benchmarks.lift_maps import (
    box_iou,
    box_quality,
    labels_quality,
    matched_boxes,
    pool_truth,
    yolo_box,
)
from shared.schemas.detection_dataset import (
    DATASET_FILE,
    Box,
    DetectionDataset,
    ImageRecord,
    version_prefix,
)
from shared.schemas.pseudo_labels import label_key
from shared.storage.filesystem import FileObjectStore

pytestmark = pytest.mark.unit

A = (0.5, 0.5, 0.2, 0.2)
A_HALF = (0.6, 0.5, 0.2, 0.2)  # shifted by half its width: IoU 0.1 * 0.2 / 0.06 = 1/3
FAR = (0.1, 0.1, 0.1, 0.1)


def test_iou_of_yolo_boxes() -> None:
    assert box_iou(A, A) == pytest.approx(1.0)
    assert box_iou(A, A_HALF) == pytest.approx(1 / 3)
    assert box_iou(A, FAR) == 0.0


def test_yolo_box_is_relative_to_the_image() -> None:
    assert yolo_box(10, 20, 30, 60, 100, 200) == pytest.approx((0.2, 0.2, 0.2, 0.2))


def test_a_true_box_is_matched_once_however_many_pseudo_boxes_cover_it() -> None:
    assert matched_boxes([A, A], [A], 0.5) == 1
    assert matched_boxes([A, A], [A, A_HALF], 0.3) == 2
    assert matched_boxes([A_HALF], [A], 0.5) == 0
    assert matched_boxes([], [A], 0.3) == 0


def test_box_quality_counts_precision_recall_and_the_image_shares() -> None:
    # given four images: a near hit and a miss; a box on a normal image; a defect missed;
    # one of two defects found exactly
    e, f = (0.3, 0.7, 0.1, 0.1), (0.8, 0.2, 0.1, 0.2)
    pseudo = [[A_HALF, FAR], [A], [], [e]]
    truth = [[A], [], [A], [e, f]]
    # when
    quality = box_quality(pseudo, truth)
    # then at IoU 0.3 the near hit counts, at 0.5 it does not
    assert (quality["pseudo_boxes"], quality["true_boxes"]) == (4, 4)
    assert quality["iou30"] == {"matched": 2, "precision": 0.5, "recall": 0.5}
    assert quality["iou50"] == {"matched": 1, "precision": 0.25, "recall": 0.25}
    # images 1, 2 and 4 got boxes, 1 and 4 hold defects; of 1, 3 and 4 (defects) 1 and 4 boxed
    assert quality["boxed_images"] == 3
    assert quality["boxed_images_with_defects"] == pytest.approx(2 / 3, abs=1e-4)
    assert quality["defect_images_boxed"] == pytest.approx(2 / 3, abs=1e-4)


def test_no_boxes_at_all_gives_no_ratio_rather_than_zero() -> None:
    quality = box_quality([[], []], [[], []])
    assert quality["iou30"]["precision"] is None
    assert quality["iou50"]["recall"] is None
    assert quality["boxed_images_with_defects"] is None


def test_labels_in_the_store_are_scored_against_the_stored_datasets_boxes(
    tmp_path: Path,
) -> None:
    # given a stored data set whose pool image has one box, and a pseudo label on it
    store = FileObjectStore(tmp_path / "store")
    image = ImageRecord(
        file_name="p0.jpg",
        width=100,
        height=50,
        boxes=[Box(x1=10, y1=10, x2=30, y2=20, class_id=0)],
    )
    dataset = DetectionDataset(classes=["crack"], images=[image])
    store.put_bytes(
        version_prefix("steel", "v1") + DATASET_FILE, dataset.model_dump_json().encode()
    )
    store.put_bytes(label_key("pseudo/j1/", "p0"), b"0 0.200000 0.300000 0.200000 0.200000\n")
    pool = ["bench/pool/p0.jpg"]
    # when
    truth = pool_truth(store, "steel:v1", pool)
    quality = labels_quality(store, "pseudo/j1/", pool, truth)
    # then
    assert truth == [[pytest.approx((0.2, 0.3, 0.2, 0.2))]]
    assert quality["iou50"]["precision"] == quality["iou50"]["recall"] == 1.0
