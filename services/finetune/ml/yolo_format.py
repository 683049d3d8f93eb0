"""YOLO txt import/export: one ``<stem>.txt`` per image, lines ``class cx cy w h`` (0..1).

Import also reads segmentation lines (``class x1 y1 ... xn yn``) as their polygon's extent.

The format has no ``difficult`` flag (export drops it, import sets False) and stores
normalised floats: export writes ``decimals`` places (6 by default, as ultralytics does), so
a pixel box comes back within ``0.5e-6 x`` the image size; YOLO -> ours -> YOLO is exact.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path

import yaml

from services.finetune.ml.dataset import Box, DetectionDataset, ImageRecord, dataset_error
from services.finetune.ml.image_files import IMAGE_SUFFIXES, read_image_size, require_dir
from shared.schemas.pseudo_labels import CLASSES_FILE as YOLO_CLASSES_FILE


def import_yolo(
    images_dir: Path,
    labels_dir: Path,
    classes: Sequence[str],
    image_sizes: Mapping[str, tuple[int, int]] | None = None,
) -> DetectionDataset:
    """Read the images in ``images_dir`` and their label files in ``labels_dir``.

    An image without a label file (or with an empty one) is a background image.

    Args:
        images_dir: folder of images (not searched recursively).
        labels_dir: folder of ``<stem>.txt`` label files.
        classes: class names in id order (see :func:`read_class_names`).
        image_sizes: ``file name -> (width, height)``; images not listed are decoded to
            learn their size.

    Raises:
        InvalidInputError: a malformed line, a class id out of range, an unreadable image.
    """
    sizes = image_sizes or {}
    records = []
    image_paths = require_dir(images_dir, "images").iterdir()
    for path in sorted(p for p in image_paths if p.suffix.lower() in IMAGE_SUFFIXES):
        width, height = sizes.get(path.name) or read_image_size(path)
        label_path = labels_dir / f"{path.stem}.txt"
        text = label_path.read_text(encoding="utf-8") if label_path.exists() else ""
        boxes = parse_yolo_labels(text, width, height, len(classes), source=str(label_path))
        records.append(ImageRecord(file_name=path.name, width=width, height=height, boxes=boxes))
    return DetectionDataset(classes=list(classes), images=records)


def parse_yolo_labels(
    text: str, width: int, height: int, num_classes: int, source: str = "<labels>"
) -> list[Box]:
    """Boxes of one label file, converted to pixel corners of a ``width x height`` image."""
    boxes = []
    for line_no, line in enumerate(text.splitlines(), start=1):
        fields = line.split()
        if not fields:
            continue
        where = f"{source}:{line_no}"
        cx, cy, w, h = _box_fields(fields, where)
        try:
            class_id = int(fields[0])
        except ValueError as exc:
            raise dataset_error(where, f"class id is not an integer: {fields[0]!r}") from exc
        if not 0 <= class_id < num_classes:
            raise dataset_error(where, f"class id {class_id} outside 0..{num_classes - 1}")
        try:
            boxes.append(
                Box(
                    x1=(cx - w / 2) * width,
                    y1=(cy - h / 2) * height,
                    x2=(cx + w / 2) * width,
                    y2=(cy + h / 2) * height,
                    class_id=class_id,
                )
            )
        except ValueError as exc:
            raise dataset_error(where, f"bad box: {exc}") from exc
    return boxes


def _box_fields(fields: list[str], where: str) -> tuple[float, float, float, float]:
    """``cx cy w h`` of a detection line, or of a segmentation line's polygon extent.

    A segmentation line is ``class x1 y1 x2 y2 ... xn yn`` (n >= 3 points, normalised); its
    box is the polygon's bounding box, as ultralytics derives boxes from segments.
    """
    count = len(fields) - 1
    if count != 4 and (count < 6 or count % 2):
        raise dataset_error(
            where,
            f"expected 'class cx cy w h' or 'class x1 y1 ... xn yn' (n >= 3), got {len(fields)} "
            "fields",
        )
    try:
        values = [float(v) for v in fields[1:]]
    except ValueError as exc:
        raise dataset_error(where, f"not numbers: {' '.join(fields)!r}") from exc
    if count == 4:
        return values[0], values[1], values[2], values[3]
    xs, ys = values[0::2], values[1::2]
    return (min(xs) + max(xs)) / 2, (min(ys) + max(ys)) / 2, max(xs) - min(xs), max(ys) - min(ys)


def yolo_label_text(image: ImageRecord, decimals: int = 6, clip: bool = False) -> str:
    """One image's label file content; ``clip`` first limits boxes to the image.

    With ``clip``, boxes left without area are dropped (ultralytics rejects a whole image
    whose labels leave ``[0, 1]``).
    """
    lines = []
    for box in image.boxes:
        x1, y1, x2, y2 = box.x1, box.y1, box.x2, box.y2
        if clip:
            x1, x2 = max(x1, 0.0), min(x2, float(image.width))
            y1, y2 = max(y1, 0.0), min(y2, float(image.height))
            if x2 <= x1 or y2 <= y1:
                continue
        values = (
            (x1 + x2) / 2 / image.width,
            (y1 + y2) / 2 / image.height,
            (x2 - x1) / image.width,
            (y2 - y1) / image.height,
        )
        lines.append(" ".join([str(box.class_id), *(f"{v:.{decimals}f}" for v in values)]))
    return "".join(f"{line}\n" for line in lines)


def export_yolo(dataset: DetectionDataset, labels_dir: Path, decimals: int = 6) -> list[Path]:
    """Write ``<stem>.txt`` for every image (empty for background) and ``classes.txt``."""
    labels_dir.mkdir(parents=True, exist_ok=True)
    written = []
    for image in dataset.images:
        path = labels_dir / f"{image.stem}.txt"
        path.write_text(yolo_label_text(image, decimals), encoding="utf-8")
        written.append(path)
    (labels_dir / YOLO_CLASSES_FILE).write_text("".join(f"{c}\n" for c in dataset.classes), "utf-8")
    return written


def read_class_names(path: Path) -> list[str]:
    """Class names from a ``classes.txt`` (one per line) or an ultralytics ``data.yaml``.

    Raises:
        InvalidInputError: the YAML has no usable ``names``.
    """
    if path.suffix.lower() not in {".yaml", ".yml"}:
        return [line.strip() for line in path.read_text("utf-8").splitlines() if line.strip()]
    names = (yaml.safe_load(path.read_text("utf-8")) or {}).get("names")
    if isinstance(names, list):
        return [str(n) for n in names]
    if isinstance(names, dict):
        return [str(names[k]) for k in sorted(names, key=int)]
    raise dataset_error(str(path), "no 'names' list or mapping")
