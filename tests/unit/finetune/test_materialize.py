"""The ultralytics folder layout, and the offline configuration of ultralytics."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import pytest
import yaml

from services.finetune.ml.dataset import Box, DetectionDataset, ImageRecord
from services.finetune.ml.materialize import materialize_yolo
from services.finetune.ml.yolov8.offline import configure_ultralytics_offline
from shared.errors import InvalidInputError


def test_materialize_writes_images_labels_and_data_yaml(make_dataset: Any, tmp_path: Path) -> None:
    # given
    dataset, images = make_dataset(n=4, classes=("a", "b"), size=64)
    train, val = (
        dataset.subset(["img_000.png", "img_001.png", "img_002.png"]),
        dataset.subset(["img_003.png"]),
    )
    # when
    folder = materialize_yolo(train, val, images, tmp_path / "work")
    # then
    data = yaml.safe_load(folder.data_yaml.read_text())
    assert data["names"] == {0: "a", 1: "b"}
    assert (folder.root / data["train"]).is_dir()
    assert (folder.root / data["val"]).is_dir()
    assert sorted(p.name for p in (folder.root / "images" / "train").iterdir()) == [
        "img_000.png",
        "img_001.png",
        "img_002.png",
    ]
    label = (folder.root / "labels" / "val" / "img_003.txt").read_text().split()
    box = val.images[0].boxes[0]
    assert int(label[0]) == box.class_id
    assert float(label[1]) == pytest.approx((box.x1 + box.x2) / 2 / 64)
    assert (folder.num_train, folder.num_val) == (3, 1)


def test_materialize_clips_boxes_to_the_image(make_dataset: Any, tmp_path: Path) -> None:
    # given a box hanging over the right edge and one fully outside
    dataset, images = make_dataset(n=2, size=64)
    overhang = Box(x1=40, y1=0, x2=80, y2=10, class_id=0)
    outside = Box(x1=70, y1=0, x2=90, y2=10, class_id=0)
    first = dataset.images[0].model_copy(update={"boxes": [overhang, outside]})
    train = DetectionDataset(classes=dataset.classes, images=[first])
    # when
    folder = materialize_yolo(train, dataset.subset(["img_001.png"]), images, tmp_path)
    # then only the clipped overhang remains: x from 40 to 64
    lines = (folder.root / "labels" / "train" / "img_000.txt").read_text().splitlines()
    assert len(lines) == 1
    _, cx, _, w, _ = (float(v) for v in lines[0].split())
    assert cx == pytest.approx(52 / 64)
    assert w == pytest.approx(24 / 64)


def test_materialize_refuses_overlap_empty_val_and_missing_images(
    make_dataset: Any, tmp_path: Path
) -> None:
    # given
    dataset, images = make_dataset(n=2, size=64)
    ghost = ImageRecord(file_name="ghost.png", width=8, height=8)
    with_ghost = DetectionDataset(classes=dataset.classes, images=[ghost])
    empty = DetectionDataset(classes=dataset.classes)
    # when / then
    with pytest.raises(InvalidInputError, match="both train and val"):
        materialize_yolo(dataset, dataset, images, tmp_path)
    with pytest.raises(InvalidInputError, match="at least one image"):
        materialize_yolo(dataset, empty, images, tmp_path)
    with pytest.raises(InvalidInputError, match="missing"):
        materialize_yolo(dataset, with_ghost, images, tmp_path)


def test_offline_configuration_seeds_fonts_and_disables_sync(ultralytics_offline: Path) -> None:
    # when configured (by the session fixture) and configured again
    again = configure_ultralytics_offline(ultralytics_offline.parent)
    # then
    from ultralytics.utils import SETTINGS, checks

    assert again == ultralytics_offline
    assert (again / "Arial.ttf").stat().st_size > 0
    assert (again / "Arial.Unicode.ttf").is_file()
    assert checks.check_font("Arial.ttf") == again / "Arial.ttf"  # found locally, no download
    assert SETTINGS["sync"] is False
    assert SETTINGS["mlflow"] is False
    assert os.environ["YOLO_OFFLINE"] == "1"
