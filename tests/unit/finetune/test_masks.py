"""Boxes from pixel masks: components, thresholds, layouts and their errors."""

from __future__ import annotations

from pathlib import Path

import cv2
import numpy as np
import pytest

from services.finetune.ml.masks import boxes_from_mask, import_masks
from shared.errors import InvalidInputError


def _write(path: Path, array: np.ndarray) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    assert cv2.imwrite(str(path), array)
    return path


def test_each_component_becomes_one_box_in_coco_convention() -> None:
    # given two blobs, one a diagonal line (8-connected) and one square
    mask = np.zeros((20, 30), np.uint8)
    mask[2:5, 3:8] = 255
    for i in range(6):
        mask[10 + i, 20 + i] = 255
    # when
    boxes = boxes_from_mask(mask, class_id=2)
    # then largest first, corners exclusive on the far side
    assert [(b.x1, b.y1, b.x2, b.y2) for b in boxes] == [(3, 2, 8, 5), (20, 10, 26, 16)]
    assert {b.class_id for b in boxes} == {2}


def test_threshold_follows_the_mask_range_and_drops_specks() -> None:
    # given a 0/1 mask with a one-pixel speck, and a 16-bit mask
    small = np.zeros((10, 10), np.uint8)
    small[1:4, 1:4] = 1
    small[8, 8] = 1
    wide = np.zeros((10, 10), np.uint16)
    wide[5:9, 5:9] = 65535
    wide[0, 0] = 1000  # below half of the maximum: not defect
    # when / then
    assert [(b.x1, b.x2) for b in boxes_from_mask(small, 0, min_area=2)] == [(1, 4)]
    assert [(b.x1, b.y1) for b in boxes_from_mask(wide, 0)] == [(5, 5)]
    assert boxes_from_mask(np.zeros((4, 4), np.uint8), 0) == []


def test_magnetic_tile_layout_classes_from_folders(tmp_path: Path) -> None:
    # given class folders with a jpg and its png mask side by side, one defect-free class
    image = np.full((16, 24, 3), 120, np.uint8)
    defect = np.zeros((16, 24), np.uint8)
    defect[4:8, 10:14] = 255
    for cls, mask in (("MT_Crack", defect), ("MT_Free", np.zeros_like(defect))):
        _write(tmp_path / cls / "Imgs" / f"{cls}_1.jpg", image)
        _write(tmp_path / cls / "Imgs" / f"{cls}_1.png", mask)
    # when
    dataset, sources = import_masks(tmp_path, tmp_path)
    # then masks are not images; the free class is background and not a class
    assert dataset.classes == ["MT_Crack"]
    by_name = {im.file_name: im for im in dataset.images}
    assert set(by_name) == {"MT_Crack_1.jpg", "MT_Free_1.jpg"}
    crack = by_name["MT_Crack_1.jpg"]
    assert (crack.width, crack.height) == (24, 16)
    assert [(b.x1, b.y1, b.x2, b.y2) for b in crack.boxes] == [(10, 4, 14, 8)]
    assert by_name["MT_Free_1.jpg"].boxes == []
    assert sources["MT_Crack_1.jpg"] == tmp_path / "MT_Crack" / "Imgs" / "MT_Crack_1.jpg"


def test_separate_masks_folder_and_colliding_names(tmp_path: Path) -> None:
    # given images/a/x.png and images/b/x.png with masks in masks/<rel>/x_mask.png
    image = np.zeros((8, 8), np.uint8)
    mask = np.zeros((8, 8), np.uint8)
    mask[0:2, 0:2] = 255
    for sub in ("a", "b"):
        _write(tmp_path / "images" / sub / "x.png", image)
        _write(tmp_path / "masks" / sub / "x_mask.png", mask)
    # when
    dataset, sources = import_masks(tmp_path / "images", tmp_path / "masks", classes=["a", "b"])
    # then names hold no folders and stay unique
    names = sorted(im.file_name for im in dataset.images)
    assert names == ["a__x.png", "b__x.png"]
    assert [im.boxes[0].class_id for im in sorted(dataset.images, key=lambda i: i.file_name)] == [
        0,
        1,
    ]
    assert sources["b__x.png"].parent.name == "b"


def test_mask_of_another_size_or_unknown_class_is_refused(tmp_path: Path) -> None:
    # given a mask smaller than its image
    _write(tmp_path / "images" / "x.jpg", np.zeros((10, 10, 3), np.uint8))
    _write(tmp_path / "masks" / "x.png", np.full((5, 5), 255, np.uint8))
    # when / then
    with pytest.raises(InvalidInputError, match="mask is 5x5, image is 10x10"):
        import_masks(tmp_path / "images", tmp_path / "masks")
    with pytest.raises(InvalidInputError, match="not one of"):
        import_masks(tmp_path / "images", tmp_path / "masks", classes=["crack"])


def test_no_defect_anywhere_is_refused(tmp_path: Path) -> None:
    # given only empty masks
    _write(tmp_path / "x.jpg", np.zeros((4, 4, 3), np.uint8))
    _write(tmp_path / "x.png", np.zeros((4, 4), np.uint8))
    # when / then
    with pytest.raises(InvalidInputError, match="no mask holds a defect"):
        import_masks(tmp_path, tmp_path)
