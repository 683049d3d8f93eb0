"""AGDP training data: images under a prefix paired with a pseudo-label job's YOLO labels.

The pretrain service's pseudo-label job writes ``labels/<image stem>.txt`` (``0 xc yc w h``,
normalised by the upright image size), ``classes.txt`` and a ``manifest.json`` whose
``images`` maps each stem to its image key (agssp-spec §3, §5.2: one class "anomaly").
"""

from __future__ import annotations

import json
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path, PurePosixPath
from typing import Any

from services.finetune.dataset_io import download_all
from services.finetune.ml.dataset import DetectionDataset, ImageRecord
from services.finetune.ml.image_files import IMAGE_SUFFIXES
from services.finetune.ml.yolo_format import parse_yolo_labels
from shared.errors import InvalidInputError
from shared.imaging.intake import ImageLimits, decode_image
from shared.storage.base import ObjectNotFoundError, ObjectStore

CLASS_NAME = "anomaly"


@dataclass(frozen=True)
class PseudoLabelData:
    """One-class dataset, its local images, and where the labels came from (for lineage)."""

    dataset: DetectionDataset
    images_dir: Path
    source: dict[str, Any]


def load_pseudo_labels(
    store: ObjectStore,
    images_prefix: str,
    labels_prefix: str,
    dest: Path,
    limits: ImageLimits,
    threads: int = 8,
) -> PseudoLabelData:
    """Pair images with label files, download the images, read boxes in pixels.

    Images without a label file were not pseudo-labelled and are left out; an empty label
    file is a background image (agssp-spec §6.4 item 10: empty = background).

    Raises:
        InvalidInputError: no labelled image, repeated stems, images outside
            ``images_prefix``, undecodable images or malformed label lines.
    """
    manifest = _json_or_none(store, labels_prefix + "manifest.json")
    labels_dir = _labels_dir(store, labels_prefix)
    labels = {
        PurePosixPath(key).stem: key
        for key in store.list(labels_dir)
        if key.endswith(".txt") and "/" not in key[len(labels_dir) :]
    }
    images = _image_keys(store, images_prefix, manifest)
    stems = sorted(set(labels) & set(images))
    if not stems:
        raise InvalidInputError(
            f"no image under {images_prefix} has a label file under {labels_dir}",
            code="no_labelled_images",
        )
    images_dir = dest / "images"
    local = {stem: images_dir / PurePosixPath(images[stem]).name for stem in stems}
    download_all(store, [(images[s], local[s]) for s in stems], threads)
    with ThreadPoolExecutor(max_workers=threads) as pool:
        records = list(pool.map(lambda s: _record(store, local[s], labels[s], limits), stems))
    source = {
        "images_prefix": images_prefix,
        "labels_prefix": labels_prefix,
        "pseudo_label_job_id": (manifest or {}).get("job_id"),
        "category": (manifest or {}).get("category"),
        "images": len(records),
        "images_without_labels": len(images) - len(stems),
    }
    dataset = DetectionDataset(classes=[CLASS_NAME], images=records)
    return PseudoLabelData(dataset, images_dir, source)


def _labels_dir(store: ObjectStore, labels_prefix: str) -> str:
    nested = labels_prefix + "labels/"
    return nested if store.list(nested) else labels_prefix


def _image_keys(
    store: ObjectStore, images_prefix: str, manifest: dict[str, Any] | None
) -> dict[str, str]:
    if manifest is not None and isinstance(manifest.get("images"), dict):
        keys: dict[str, str] = dict(manifest["images"])
        outside = [k for k in keys.values() if not k.startswith(images_prefix)]
        if outside:
            raise InvalidInputError(
                f"the labels describe images outside {images_prefix}, e.g. {outside[0]}",
                code="labels_images_mismatch",
            )
        return keys
    found: dict[str, str] = {}
    for key in store.list(images_prefix):
        path = PurePosixPath(key)
        if path.suffix.lower() not in IMAGE_SUFFIXES:
            continue
        if path.stem in found:
            raise InvalidInputError(
                f"label files are named by image stem; {found[path.stem]} and {key} collide",
                code="duplicate_stems",
            )
        found[path.stem] = key
    return found


def _record(store: ObjectStore, image: Path, label_key: str, limits: ImageLimits) -> ImageRecord:
    try:
        decoded = decode_image(image.read_bytes(), limits)
    except InvalidInputError as exc:
        raise InvalidInputError(f"{image.name}: {exc.message}", code=exc.code) from exc
    text = store.get_bytes(label_key).decode("utf-8", errors="replace")
    boxes = parse_yolo_labels(text, decoded.width, decoded.height, 1, source=label_key)
    return ImageRecord(
        file_name=image.name, width=decoded.width, height=decoded.height, boxes=boxes
    )


def _json_or_none(store: ObjectStore, key: str) -> dict[str, Any] | None:
    try:
        value = json.loads(store.get_bytes(key))
    except (ObjectNotFoundError, ValueError):
        return None
    return value if isinstance(value, dict) else None
