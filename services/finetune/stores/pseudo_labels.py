"""AGDP training data: images under a prefix paired with a pseudo-label job's YOLO labels.

The reader side of ``shared.schemas.pseudo_labels`` (the pretrain service writes it): a
prefix ``<out>/`` or ``<out>/labels/`` of a pseudo-label output, whose ``manifest.json`` maps
each stem to its image key. A folder of label files made by hand (no manifest) pairs its
labels with the images under the images prefix by file stem.
"""

from __future__ import annotations

import itertools
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path, PurePosixPath
from typing import Any

from services.finetune.ml.dataset import DetectionDataset, ImageRecord
from services.finetune.ml.image_files import IMAGE_SUFFIXES
from services.finetune.ml.yolo_format import parse_yolo_labels
from services.finetune.stores.datasets import download_all
from shared.errors import InvalidInputError
from shared.imaging.intake import ImageLimits, decode_object
from shared.schemas.pseudo_labels import (
    CLASS_NAMES,
    LABEL_SUFFIX,
    LABELS_DIR,
    PseudoLabelManifest,
    manifest_key,
    output_prefix,
)
from shared.storage.base import ObjectStore


@dataclass(frozen=True)
class PseudoLabelData:
    """One-class dataset, its local images, and where the labels came from (for lineage)."""

    dataset: DetectionDataset
    images_dir: Path
    source: dict[str, Any]


@dataclass(frozen=True)
class LabelPairing:
    """Which label file goes with which image key, by stem; found by listing, nothing read."""

    manifest: PseudoLabelManifest | None
    labels: dict[str, str]
    images: dict[str, str]
    stems: list[str]


def pair_pseudo_labels(store: ObjectStore, images_prefix: str, labels_prefix: str) -> LabelPairing:
    """The labelled images of a pseudo-label output: its label files paired with the images
    under ``images_prefix`` (by its manifest, or by file stem for hand-made labels).

    Raises:
        InvalidInputError: no labelled image, repeated stems or images outside
            ``images_prefix``.
    """
    manifest = _manifest(store, labels_prefix)
    labels_dir = _labels_dir(store, labels_prefix)
    labels = {
        PurePosixPath(key).stem: key
        for key in store.list(labels_dir)
        if key.endswith(LABEL_SUFFIX) and "/" not in key[len(labels_dir) :]
    }
    images = _image_keys(store, images_prefix, manifest)
    stems = sorted(set(labels) & set(images))
    if not stems:
        raise InvalidInputError(
            f"no image under {images_prefix} has a label file under {labels_dir}",
            code="no_labelled_images",
        )
    return LabelPairing(manifest, labels, images, stems)


def download_counter(
    progress: Callable[[int, int], None] | None, total: int
) -> Callable[[str], None] | None:
    """A ``download_all`` check that reports (downloads started, ``total``) to ``progress``;
    it runs on the download threads (``itertools.count`` hands out each number once)."""
    if progress is None:
        return None
    started = itertools.count(1)
    return lambda _key: progress(next(started), total)


def load_pseudo_labels(
    store: ObjectStore,
    images_prefix: str,
    labels_prefix: str,
    dest: Path,
    limits: ImageLimits,
    threads: int = 8,
    progress: Callable[[int, int], None] | None = None,
) -> PseudoLabelData:
    """Pair images with label files, download the images, read boxes in pixels.

    Images without a label file were not pseudo-labelled and are left out; an empty label
    file is a background image (agssp-spec §6.4 item 10: empty = background). ``progress``
    hears (downloads started, images) from the download threads.

    Raises:
        InvalidInputError: no labelled image, repeated stems, images outside
            ``images_prefix``, undecodable images or malformed label lines.
    """
    pairing = pair_pseudo_labels(store, images_prefix, labels_prefix)
    manifest, images, stems = pairing.manifest, pairing.images, pairing.stems
    images_dir = dest / "images"
    local = {stem: images_dir / PurePosixPath(images[stem]).name for stem in stems}
    pairs = [(images[s], local[s]) for s in stems]
    download_all(store, pairs, threads, download_counter(progress, len(pairs)))
    with ThreadPoolExecutor(max_workers=threads) as pool:
        records = list(
            pool.map(lambda s: _record(store, local[s], pairing.labels[s], limits), stems)
        )
    source = {
        "images_prefix": images_prefix,
        "labels_prefix": labels_prefix,
        "pseudo_label_job_id": manifest.job_id if manifest else None,
        "category": manifest.category if manifest else None,
        "images": len(records),
        "images_without_labels": len(images) - len(stems),
    }
    dataset = DetectionDataset(classes=list(CLASS_NAMES), images=records)
    return PseudoLabelData(dataset, images_dir, source)


def _manifest(store: ObjectStore, labels_prefix: str) -> PseudoLabelManifest | None:
    """The output's manifest, or None for a hand-made label folder (none written)."""
    key = manifest_key(output_prefix(labels_prefix))
    if not store.exists(key):
        return None
    return PseudoLabelManifest.from_bytes(store.get_bytes(key), key)


def _labels_dir(store: ObjectStore, labels_prefix: str) -> str:
    nested = output_prefix(labels_prefix) + LABELS_DIR
    return nested if store.list(nested) else labels_prefix


def _image_keys(
    store: ObjectStore, images_prefix: str, manifest: PseudoLabelManifest | None
) -> dict[str, str]:
    if manifest is not None:
        keys = dict(manifest.images)
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
    decoded = decode_object(image.read_bytes(), limits, image.name)
    text = store.get_bytes(label_key).decode("utf-8", errors="replace")
    boxes = parse_yolo_labels(
        text, decoded.width, decoded.height, len(CLASS_NAMES), source=label_key
    )
    return ImageRecord(
        file_name=image.name, width=decoded.width, height=decoded.height, boxes=boxes
    )
