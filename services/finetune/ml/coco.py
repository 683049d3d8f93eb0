"""COCO JSON import/export to and from :class:`DetectionDataset`.

COCO ``bbox = [x, y, w, h]`` uses the same continuous pixel coordinates as our format, so
no offset is applied. Export renumbers ids (categories 1..K in class order, images 1..N,
annotations 1..M); our-format -> COCO -> our-format is exact (widths are recomputed as
``x2 - x1``, exact for the integer and half-pixel values datasets use).
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from pathlib import Path, PurePosixPath
from typing import Any

from services.finetune.ml.dataset import Box, DetectionDataset, ImageRecord, dataset_error


def import_coco(document: bytes | Mapping[str, Any], source: str = "<coco>") -> DetectionDataset:
    """Read a COCO detection document (file bytes or the parsed dict).

    Classes are the categories sorted by id. ``file_name`` keeps only its last path part
    (``train/a.jpg`` -> ``a.jpg``); two images that then collide are rejected. A box is
    ``difficult`` when its annotation says ``"difficult": 1`` or ``"iscrowd": 1``.
    Images without annotations stay in the dataset as background images.

    Raises:
        InvalidInputError: malformed JSON, missing keys, unknown ids or degenerate boxes.
    """
    doc = _load(document, source)
    try:
        categories = sorted(doc["categories"], key=lambda c: int(c["id"]))
        class_of = {int(c["id"]): i for i, c in enumerate(categories)}
        images = {int(im["id"]): _image_record(im) for im in doc["images"]}
        for ann in doc.get("annotations", []):
            image = images.get(int(ann["image_id"]))
            if image is None:
                raise dataset_error(source, f"annotation {ann.get('id')} has unknown image_id")
            image.boxes.append(_box(ann, class_of, source))
        return DetectionDataset(
            classes=[str(c["name"]) for c in categories], images=list(images.values())
        )
    except (KeyError, TypeError, ValueError) as exc:
        raise dataset_error(source, f"not a COCO detection document ({exc})") from exc


def export_coco(dataset: DetectionDataset) -> dict[str, Any]:
    """The dataset as a COCO detection dict (``json.dumps``-ready)."""
    images: list[dict[str, Any]] = []
    annotations: list[dict[str, Any]] = []
    for image_id, image in enumerate(dataset.images, start=1):
        images.append(
            {
                "id": image_id,
                "file_name": image.file_name,
                "width": image.width,
                "height": image.height,
            }
        )
        for box in image.boxes:
            width, height = box.x2 - box.x1, box.y2 - box.y1
            annotations.append(
                {
                    "id": len(annotations) + 1,
                    "image_id": image_id,
                    "category_id": box.class_id + 1,
                    "bbox": [box.x1, box.y1, width, height],
                    "area": width * height,
                    "iscrowd": 0,
                    "difficult": int(box.difficult),
                }
            )
    categories = [{"id": i + 1, "name": name} for i, name in enumerate(dataset.classes)]
    return {"images": images, "annotations": annotations, "categories": categories}


def write_coco(dataset: DetectionDataset, path: Path) -> Path:
    """Write :func:`export_coco` as JSON to ``path`` (parent created); returns ``path``."""
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(export_coco(dataset)), encoding="utf-8")
    return path


def _load(document: bytes | Mapping[str, Any], source: str) -> Mapping[str, Any]:
    if not isinstance(document, bytes | bytearray):
        return document
    try:
        loaded = json.loads(document)
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise dataset_error(source, f"malformed JSON ({exc})") from exc
    if not isinstance(loaded, dict):
        raise dataset_error(source, "top level is not a JSON object")
    return loaded


def _image_record(entry: Mapping[str, Any]) -> ImageRecord:
    name = PurePosixPath(str(entry["file_name"]).replace("\\", "/")).name
    return ImageRecord(file_name=name, width=int(entry["width"]), height=int(entry["height"]))


def _box(ann: Mapping[str, Any], class_of: Mapping[int, int], source: str) -> Box:
    category = int(ann["category_id"])
    if category not in class_of:
        raise dataset_error(source, f"annotation {ann.get('id')}: unknown category {category}")
    x, y, w, h = (float(v) for v in ann["bbox"])
    difficult = bool(ann.get("difficult", 0)) or bool(ann.get("iscrowd", 0))
    return Box(x1=x, y1=y, x2=x + w, y2=y + h, class_id=class_of[category], difficult=difficult)
