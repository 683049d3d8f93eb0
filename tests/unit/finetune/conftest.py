"""Fixtures for the finetune ML tests: offline ultralytics and tiny synthetic datasets."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import cv2
import numpy as np
import pytest

from services.finetune.ml.dataset import Box, DetectionDataset, ImageRecord
from services.finetune.ml.yolo_format import yolo_label_text
from services.finetune.ml.yolov8.offline import configure_ultralytics_offline
from shared.storage.base import ObjectStore

MakeDataset = Callable[..., tuple[DetectionDataset, Path]]


@pytest.fixture(scope="session", autouse=True)
def ultralytics_offline(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """ultralytics configured to never touch the network (before any test imports it)."""
    return configure_ultralytics_offline(tmp_path_factory.mktemp("yolo-config"))


def _draw_dataset(
    folder: Path, n: int, classes: tuple[str, ...], size: int, seed: int
) -> tuple[DetectionDataset, Path]:
    # One bright filled rectangle per image on a dark noisy background; class = shade.
    rng = np.random.default_rng(seed)
    folder.mkdir(parents=True, exist_ok=True)
    images = []
    for i in range(n):
        image = rng.integers(20, 60, (size, size, 3), dtype=np.uint8)
        class_id = i % len(classes)
        w, h = (int(v) for v in rng.integers(size // 4, size // 2, 2))
        x, y = (int(v) for v in rng.integers(0, size - max(w, h), 2))
        shade = 255 - 80 * class_id
        cv2.rectangle(image, (x, y), (x + w - 1, y + h - 1), (shade, shade, shade), -1)
        name = f"img_{i:03d}.png"
        cv2.imwrite(str(folder / name), image)
        box = Box(x1=x, y1=y, x2=x + w, y2=y + h, class_id=class_id)
        images.append(ImageRecord(file_name=name, width=size, height=size, boxes=[box]))
    return DetectionDataset(classes=list(classes), images=images), folder


@pytest.fixture(scope="session")
def make_dataset(tmp_path_factory: pytest.TempPathFactory) -> MakeDataset:
    """``make(n=8, classes=("rect",), size=64, seed=0) -> (dataset, images_dir)``."""

    def make(
        n: int = 8, classes: tuple[str, ...] = ("rect",), size: int = 64, seed: int = 0
    ) -> tuple[DetectionDataset, Path]:
        return _draw_dataset(tmp_path_factory.mktemp("images"), n, classes, size, seed)

    return make


def stage_pseudo_labelled(store: ObjectStore, make_dataset: MakeDataset) -> None:
    """Eight one-class images under ``uploads/rect/`` and their pseudo boxes under
    ``pseudo/rect/pl-1/`` (YOLO labels and classes.txt), as an AGDP job reads them."""
    dataset, images = make_dataset(n=8, classes=("anomaly",), size=64, seed=1)
    for image in dataset.images:
        store.put_file(f"uploads/rect/{image.file_name}", images / image.file_name)
        label = yolo_label_text(image).encode()
        store.put_bytes(f"pseudo/rect/pl-1/labels/{image.stem}.txt", label)
    store.put_bytes("pseudo/rect/pl-1/classes.txt", b"anomaly\n")
