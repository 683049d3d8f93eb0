"""Lay a dataset out as an ultralytics YOLO folder (images/, labels/, data.yaml) in a work dir."""

from __future__ import annotations

import os
import shutil
from dataclasses import dataclass
from pathlib import Path

import yaml

from services.finetune.ml.dataset import DetectionDataset
from services.finetune.ml.yolo_format import yolo_label_text
from shared.errors import InvalidInputError

_SPLITS = ("train", "val")


@dataclass(frozen=True)
class YoloDataFolder:
    """A materialised dataset: the ``data.yaml`` to hand to ultralytics and its classes."""

    root: Path
    data_yaml: Path
    classes: tuple[str, ...]
    num_train: int
    num_val: int


def materialize_yolo(
    train: DetectionDataset,
    val: DetectionDataset,
    images_dir: Path,
    work_dir: Path,
    link: bool = True,
) -> YoloDataFolder:
    """Write ``work_dir/{images,labels}/{train,val}`` and ``work_dir/data.yaml``.

    Boxes are clipped to their image (ultralytics drops a whole image whose labels leave
    ``[0, 1]``) and written unrounded; ``difficult`` boxes are trained on like any other,
    since YOLO labels cannot mark them.

    Args:
        train: training images; must share ``classes`` with ``val``.
        val: validation images (ultralytics needs at least one).
        images_dir: folder holding every image file named in both datasets.
        work_dir: output folder; existing ``images/`` and ``labels/`` in it are replaced.
        link: symlink images instead of copying them (falls back to copying).

    Raises:
        InvalidInputError: class lists differ, val is empty, an image is in both splits
            or missing from ``images_dir``.
    """
    _check_splits(train, val, images_dir)
    work_dir.mkdir(parents=True, exist_ok=True)
    for split, dataset in zip(_SPLITS, (train, val), strict=True):
        _write_split(dataset, images_dir, work_dir, split, link)
    for cache in (work_dir / "labels").glob("*.cache"):
        cache.unlink()  # ultralytics' label cache would describe the previous contents
    data_yaml = work_dir / "data.yaml"
    content = {
        "path": str(work_dir.resolve()),
        "train": "images/train",
        "val": "images/val",
        "names": dict(enumerate(train.classes)),
    }
    data_yaml.write_text(yaml.safe_dump(content, sort_keys=False), encoding="utf-8")
    return YoloDataFolder(
        work_dir, data_yaml, tuple(train.classes), len(train.images), len(val.images)
    )


def _write_split(
    dataset: DetectionDataset, images_dir: Path, work_dir: Path, split: str, link: bool
) -> None:
    image_out, label_out = work_dir / "images" / split, work_dir / "labels" / split
    for folder in (image_out, label_out):
        shutil.rmtree(folder, ignore_errors=True)
        folder.mkdir(parents=True)
    for image in dataset.images:
        _place(images_dir / image.file_name, image_out / image.file_name, link)
        label = yolo_label_text(image, decimals=9, clip=True)
        (label_out / f"{image.stem}.txt").write_text(label, encoding="utf-8")


def _check_splits(train: DetectionDataset, val: DetectionDataset, images_dir: Path) -> None:
    if train.classes != val.classes:
        raise InvalidInputError(f"train classes {train.classes} != val classes {val.classes}")
    if not val.images or not train.images:
        raise InvalidInputError("both train and val need at least one image")
    both = {im.file_name for im in train.images} & {im.file_name for im in val.images}
    if both:
        raise InvalidInputError(f"images in both train and val: {sorted(both)[:5]}")
    missing = [
        im.file_name
        for im in (*train.images, *val.images)
        if not (images_dir / im.file_name).is_file()
    ]
    if missing:
        raise InvalidInputError(f"{len(missing)} images missing from {images_dir}: {missing[:5]}")


def _place(source: Path, target: Path, link: bool) -> None:
    if link:
        try:
            os.symlink(source.resolve(), target)
            return
        except OSError:
            pass  # e.g. a filesystem without symlinks: copy instead
    shutil.copy2(source, target)
