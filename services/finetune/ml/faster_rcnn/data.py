"""Samples a Faster R-CNN trains on: images with xyxy boxes, read from a YOLO split."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np

from services.finetune.ml.image_files import read_bgr


@dataclass(frozen=True)
class Sample:
    """One training image: uint8 RGB (H, W, 3), boxes xyxy in its pixels, 0-based classes."""

    image: np.ndarray
    boxes: np.ndarray  # float32 (N, 4)
    labels: np.ndarray  # int64 (N,)


def read_yolo_split(root: Path, split: str) -> list[Sample]:
    """Training samples of a materialised YOLO folder's ``images/<split>`` (RGB) with the
    boxes of ``labels/<split>/<stem>.txt`` (``class cx cy w h``, normalised)."""
    images, labels = root / "images" / split, root / "labels" / split
    samples = []
    for path in sorted(p for p in images.rglob("*") if p.is_file() or p.is_symlink()):
        image = read_rgb(path)
        h, w = image.shape[:2]
        label = labels / path.relative_to(images).with_suffix(".txt")
        rows = _label_rows(label)
        boxes = np.array(
            [[(cx - bw / 2) * w, (cy - bh / 2) * h, (cx + bw / 2) * w, (cy + bh / 2) * h]
             for _, cx, cy, bw, bh in rows], np.float32,
        ).reshape(-1, 4)  # fmt: skip
        classes = np.array([int(r[0]) for r in rows], np.int64)
        samples.append(Sample(image, boxes, classes))
    return samples


def _label_rows(path: Path) -> list[tuple[float, ...]]:
    if not path.is_file():
        return []
    rows = []
    for line in path.read_text(encoding="utf-8").splitlines():
        values = line.split()
        if len(values) == 5:  # a box; segment polygons are boxed by materialize_yolo already
            rows.append(tuple(float(v) for v in values))
    return rows


def read_rgb(path: Path) -> np.ndarray:
    """Decode an image file to RGB uint8 (H, W, 3); grey images are expanded.

    Raises:
        InvalidInputError: missing or not a decodable image.
    """
    return np.ascontiguousarray(read_bgr(path)[..., ::-1])
