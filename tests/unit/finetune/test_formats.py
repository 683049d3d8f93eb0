"""VOC, COCO and YOLO txt import/export round trips and their documented conventions."""

from __future__ import annotations

import json
from pathlib import Path

import cv2
import numpy as np
import pytest

from services.finetune.ml.coco import export_coco, import_coco, write_coco
from services.finetune.ml.dataset import Box, DetectionDataset, ImageRecord, to_single_class
from services.finetune.ml.voc import export_voc, import_voc, parse_voc_xml
from services.finetune.ml.yolo_format import (
    export_yolo,
    import_yolo,
    parse_yolo_labels,
    read_class_names,
)
from shared.errors import InvalidInputError

NEU_STYLE_XML = b"""<annotation>
  <folder>pa</folder><filename>patches_104</filename>
  <size><width>200</width><height>200</height><depth>1</depth></size>
  <object><name>inclusion</name><truncated>1</truncated><difficult>1</difficult>
    <bndbox><xmin>1</xmin><ymin>5</ymin><xmax>200</xmax><ymax>60</ymax></bndbox></object>
  <object><name>patches</name><difficult>0</difficult>
    <bndbox><xmin>10</xmin><ymin>20</ymin><xmax>30</xmax><ymax>40</ymax></bndbox></object>
</annotation>"""


def _dataset() -> DetectionDataset:
    return DetectionDataset(
        classes=["crazing", "patches"],
        images=[
            ImageRecord(
                file_name="a.jpg",
                width=200,
                height=100,
                boxes=[
                    Box(x1=0, y1=4, x2=110, y2=100, class_id=1, difficult=True),
                    Box(x1=141, y1=9, x2=197, y2=56, class_id=0),
                ],
            ),
            ImageRecord(file_name="b.png", width=50, height=40, boxes=[]),
        ],
    )


def _touch_images(folder: Path, dataset: DetectionDataset) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    for image in dataset.images:
        pixels = np.zeros((image.height, image.width, 3), np.uint8)
        cv2.imwrite(str(folder / image.file_name), pixels)
    return folder


def test_voc_xml_uses_one_based_inclusive_pixels_and_keeps_difficult() -> None:
    # given a NEU-DET style annotation (file name without extension, mixed classes)
    # when
    width, height, boxes = parse_voc_xml(NEU_STYLE_XML)
    # then xmin=1..xmax=200 covers the whole 200 px row: x1 = 0, x2 = 200
    assert (width, height) == (200, 200)
    assert boxes == [
        ("inclusion", 0.0, 4.0, 200.0, 60.0, True),
        ("patches", 9.0, 19.0, 30.0, 40.0, False),
    ]


def test_voc_import_takes_image_from_xml_stem_and_label_from_name(tmp_path: Path) -> None:
    # given an XML whose <filename> lacks the extension and whose boxes are another class
    (tmp_path / "ann").mkdir()
    (tmp_path / "ann" / "patches_104.xml").write_bytes(NEU_STYLE_XML)
    images = tmp_path / "img"
    images.mkdir()
    cv2.imwrite(str(images / "patches_104.jpg"), np.zeros((200, 200, 3), np.uint8))
    # when
    dataset = import_voc(tmp_path / "ann", images)
    # then
    assert dataset.classes == ["inclusion", "patches"]
    assert dataset.images[0].file_name == "patches_104.jpg"
    assert [b.class_id for b in dataset.images[0].boxes] == [0, 1]


def test_voc_round_trip_is_exact_for_whole_pixel_boxes(tmp_path: Path) -> None:
    # given
    original = _dataset()
    images = _touch_images(tmp_path / "img", original)
    # when
    export_voc(original, tmp_path / "ann")
    again = import_voc(tmp_path / "ann", images, classes=original.classes)
    # then
    assert again == original


def test_voc_import_rejects_missing_image_and_unknown_class(tmp_path: Path) -> None:
    # given
    (tmp_path / "ann").mkdir()
    (tmp_path / "img").mkdir()
    (tmp_path / "ann" / "x.xml").write_bytes(NEU_STYLE_XML)
    # when / then
    with pytest.raises(InvalidInputError, match="no image named x"):
        import_voc(tmp_path / "ann", tmp_path / "img")
    cv2.imwrite(str(tmp_path / "img" / "x.png"), np.zeros((8, 8, 3), np.uint8))
    with pytest.raises(InvalidInputError, match="'inclusion' is not in"):
        import_voc(tmp_path / "ann", tmp_path / "img", classes=["patches"])


def test_coco_round_trip_is_exact(tmp_path: Path) -> None:
    # given
    original = _dataset()
    # when
    again = import_coco(write_coco(original, tmp_path / "ann.json").read_bytes())
    # then
    assert again == original


def test_coco_import_orders_classes_by_id_and_keeps_background_images() -> None:
    # given categories with sparse ids listed out of order, and one unannotated image
    document = {
        "categories": [{"id": 7, "name": "scratch"}, {"id": 3, "name": "crack"}],
        "images": [
            {"id": 10, "file_name": "sub/one.jpg", "width": 20, "height": 10},
            {"id": 11, "file_name": "two.jpg", "width": 20, "height": 10},
        ],
        "annotations": [
            {"id": 1, "image_id": 10, "category_id": 7, "bbox": [1.5, 2, 3, 4], "iscrowd": 1}
        ],
    }
    # when
    dataset = import_coco(json.dumps(document).encode())
    # then
    assert dataset.classes == ["crack", "scratch"]
    assert dataset.images[0].file_name == "one.jpg"
    assert dataset.images[0].boxes == [Box(x1=1.5, y1=2, x2=4.5, y2=6, class_id=1, difficult=True)]
    assert dataset.images[1].boxes == []
    assert export_coco(dataset)["categories"] == [
        {"id": 1, "name": "crack"},
        {"id": 2, "name": "scratch"},
    ]


def test_coco_import_rejects_unknown_category() -> None:
    # given
    document = {
        "categories": [{"id": 1, "name": "a"}],
        "images": [{"id": 1, "file_name": "a.jpg", "width": 5, "height": 5}],
        "annotations": [{"id": 1, "image_id": 1, "category_id": 2, "bbox": [0, 0, 1, 1]}],
    }
    # when / then
    with pytest.raises(InvalidInputError, match="unknown category 2"):
        import_coco(document)


def test_yolo_round_trip_within_documented_rounding(tmp_path: Path) -> None:
    # given boxes with fractional corners (exact YOLO text needs 6 decimals)
    original = _dataset()
    images = _touch_images(tmp_path / "img", original)
    # when
    export_yolo(original, tmp_path / "labels")
    classes = read_class_names(tmp_path / "labels" / "classes.txt")
    again = import_yolo(images, tmp_path / "labels", classes)
    # then difficult is dropped by the format, coordinates agree to 0.5e-6 x image size
    assert again.classes == original.classes
    for before, after in zip(original.images, again.images, strict=True):
        assert after.file_name == before.file_name
        assert (after.width, after.height) == (before.width, before.height)
        for b, a in zip(before.boxes, after.boxes, strict=True):
            assert a.class_id == b.class_id
            assert not a.difficult
            assert a.x1 == pytest.approx(b.x1, abs=1e-6 * before.width)
            assert a.y2 == pytest.approx(b.y2, abs=1e-6 * before.height)


def test_yolo_text_to_ours_to_text_is_exact(tmp_path: Path) -> None:
    # given a label file as another tool wrote it
    text = "0 0.512345 0.250000 0.300001 0.123457\n1 0.100000 0.900000 0.200000 0.100000\n"
    images = tmp_path / "img"
    images.mkdir()
    cv2.imwrite(str(images / "x.png"), np.zeros((37, 53, 3), np.uint8))
    (tmp_path / "in").mkdir()
    (tmp_path / "in" / "x.txt").write_text(text)
    # when
    dataset = import_yolo(images, tmp_path / "in", ["a", "b"])
    export_yolo(dataset, tmp_path / "out")
    # then
    assert (tmp_path / "out" / "x.txt").read_text() == text


def test_yolo_labels_reject_bad_lines() -> None:
    # when / then
    with pytest.raises(InvalidInputError, match="class id 3 outside"):
        parse_yolo_labels("3 0.5 0.5 0.1 0.1", 10, 10, num_classes=2)
    with pytest.raises(InvalidInputError, match="expected 'class cx cy w h'"):
        parse_yolo_labels("0 0.5 0.5 0.1 0.1 0.3", 10, 10, num_classes=2)
    with pytest.raises(InvalidInputError, match="n >= 3"):
        parse_yolo_labels("0 0.5 0.5 0.1 0.1 0.3 0.3 0.2", 10, 10, num_classes=2)


def test_yolo_segmentation_line_becomes_the_polygon_extent() -> None:
    # given a triangle over x 0.1..0.5 and y 0.2..0.8 of a 100 x 50 image
    text = "1 0.1 0.2 0.5 0.2 0.3 0.8\n0 0.5 0.5 0.2 0.2\n"
    # when
    boxes = parse_yolo_labels(text, 100, 50, num_classes=2)
    # then the polygon gives its bounding box; the detection line is read as before
    first = boxes[0]
    assert (first.class_id, first.x1, first.x2) == (1, pytest.approx(10), pytest.approx(50))
    assert (first.y1, first.y2) == (pytest.approx(10), pytest.approx(40))
    assert (boxes[1].x1, boxes[1].y2) == (pytest.approx(40), pytest.approx(30))


def test_read_class_names_from_data_yaml(tmp_path: Path) -> None:
    # given
    (tmp_path / "data.yaml").write_text("names:\n  1: b\n  0: a\n")
    # when / then
    assert read_class_names(tmp_path / "data.yaml") == ["a", "b"]


def test_dataset_rejects_path_names_and_out_of_range_classes() -> None:
    # when / then
    with pytest.raises(ValueError, match="plain file name"):
        ImageRecord(file_name="../etc/passwd", width=1, height=1)
    with pytest.raises(ValueError, match="class ids"):
        DetectionDataset(
            classes=["a"],
            images=[
                ImageRecord(
                    file_name="a.jpg",
                    width=9,
                    height=9,
                    boxes=[Box(x1=0, y1=0, x2=1, y2=1, class_id=1)],
                )
            ],
        )


def test_to_single_class_maps_every_box_to_anomaly() -> None:
    # when
    single = to_single_class(_dataset())
    # then
    assert single.classes == ["anomaly"]
    assert [b.class_id for b in single.images[0].boxes] == [0, 0]
    assert single.num_boxes == _dataset().num_boxes
