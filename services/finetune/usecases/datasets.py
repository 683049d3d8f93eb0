"""Dataset imports: VOC/COCO/YOLO folders or images + pixel masks into stored versions.

One import path for the CLI (a local folder) and the import job (a store prefix, downloaded
first): parse with ``ml``, decode every image once (size check and content hash), split
deterministically with duplicates kept together, publish a stored version.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path, PurePosixPath
from typing import Any

from services.finetune.config import FinetuneSettings
from services.finetune.ml.coco import import_coco
from services.finetune.ml.dataset import DetectionDataset
from services.finetune.ml.image_files import IMAGE_SUFFIXES, content_hash
from services.finetune.ml.splits import mini_subset, split_train_val
from services.finetune.ml.voc import import_voc
from services.finetune.ml.yolo_format import import_yolo, read_class_names
from services.finetune.params import DatasetFormat, DatasetImportParams
from services.finetune.stores.datasets import DatasetCatalog, DatasetRef, download_all
from services.finetune.usecases.common import submit, workspace
from shared.errors import InvalidInputError
from shared.imaging.intake import ImageLimits, decode_image, image_limits
from shared.jobs.context import JobContext
from shared.jobs.producer import TaskSender
from shared.jobs.store import JobStore
from shared.schemas.detection_dataset import DATASET_FILE, IMAGES_DIR, MANIFEST_FILE, SPLITS_FILE
from shared.schemas.jobs import JobRecord, TaskName
from shared.schemas.pseudo_labels import CLASSES_FILE as YOLO_CLASSES_FILE
from shared.storage.base import ObjectStore, validate_key

log = logging.getLogger(__name__)

IMPORT_KIND = "dataset-import"

DEFAULT_ANNOTATIONS: dict[DatasetFormat, str] = {
    "voc": "annotations",
    "coco": "annotations.json",
    "yolo": "labels",
    "masks": "masks",
}
# A YOLO folder's class names: its list file (the pseudo-label output is such a folder and
# names it the same), or an ultralytics data file.
_CLASS_FILES = (YOLO_CLASSES_FILE, "data.yaml", "data.yml")


def submit_import(sender: TaskSender, jobs: JobStore, params: DatasetImportParams) -> JobRecord:
    """Queue a dataset import; the prefix must hold something.

    Raises:
        InvalidInputError: nothing under ``prefix`` (code source_empty).
    """
    if not jobs.store.list(params.prefix):
        raise InvalidInputError(f"nothing is stored under {params.prefix!r}", code="source_empty")
    task = TaskName.FINETUNE_IMPORT_DATASET
    return submit(sender, jobs, IMPORT_KIND, task, params.model_dump(mode="json"))


def run_import_job(ctx: JobContext, settings: FinetuneSettings) -> list[str]:
    """Download a VOC/COCO/YOLO folder from the store and publish it as ``name:<job id>``."""
    params = DatasetImportParams.model_validate(ctx.params)
    ref = DatasetRef(params.name, ctx.job_id)
    if not ctx.store.exists(ref.key(MANIFEST_FILE)):
        with workspace(settings, ctx.job_id) as work:
            ctx.progress(5, f"downloading {params.prefix}", force=True)
            source = work / "source"
            max_bytes = int(settings.max_image_mb * 2**20)
            download_prefix(ctx.store, params.prefix, source, max_bytes, settings.download_threads)
            ctx.check_cancel()
            ctx.progress(50, "parsing annotations, checking images", force=True)
            import_dataset(
                ctx.store, source, params, ctx.job_id, image_limits(settings), params.prefix
            )
    manifest = DatasetCatalog(ctx.store).manifest(ref)
    ctx.set_outputs(
        dataset=str(ref),
        classes=manifest["classes"],
        images=manifest["images"],
        boxes=manifest["boxes"],
        splits=manifest["splits"],
    )
    return [ref.key(MANIFEST_FILE)]


def import_local_dataset(
    store: ObjectStore,
    root: Path,
    params: DatasetImportParams,
    version: str,
    settings: FinetuneSettings,
) -> tuple[DatasetRef, dict[str, Any]]:
    """The CLI's import: a local folder straight into a stored version."""
    return import_dataset(store, root, params, version, image_limits(settings), str(root))


def import_folder(
    root: Path,
    fmt: DatasetFormat,
    images: str = "images",
    annotations: str | None = None,
    classes: Sequence[str] | None = None,
) -> tuple[DetectionDataset, dict[str, Path]]:
    """Parse a dataset folder; returns the dataset and ``file name -> image file``.

    Raises:
        InvalidInputError: missing folders/files, malformed annotations, unknown classes,
            images named in the annotations but absent.
    """
    images_dir = root / images
    target = root / (annotations or DEFAULT_ANNOTATIONS[fmt])
    if fmt == "masks":
        # cv2 loads here, in the worker or the CLI: the API imports this module to submit.
        from services.finetune.ml.masks import import_masks

        # Masks may sit in nested class folders, so the files are named one by one.
        return import_masks(images_dir, target, classes)
    if fmt == "voc":
        dataset = import_voc(target, images_dir, classes)
    elif fmt == "coco":
        if not target.is_file():
            raise InvalidInputError(f"COCO file {target} does not exist", code="invalid_dataset")
        dataset = import_coco(target.read_bytes(), source=str(target))
        if classes is not None and list(classes) != dataset.classes:
            raise InvalidInputError(
                f"classes {list(classes)} differ from the COCO categories {dataset.classes}",
                code="invalid_dataset",
            )
    else:
        names = list(classes) if classes is not None else _yolo_classes(root, target)
        dataset = import_yolo(images_dir, target, names)
    missing = [im.file_name for im in dataset.images if not (images_dir / im.file_name).is_file()]
    if missing:
        raise InvalidInputError(
            f"{len(missing)} images missing from {images_dir}: {missing[:5]}",
            code="invalid_dataset",
        )
    if not dataset.images:
        raise InvalidInputError(f"no images found under {root}", code="invalid_dataset")
    return dataset, {im.file_name: images_dir / im.file_name for im in dataset.images}


def _yolo_classes(root: Path, labels_dir: Path) -> list[str]:
    for folder in (root, labels_dir):
        for name in _CLASS_FILES:
            if (folder / name).is_file():
                return read_class_names(folder / name)
    raise InvalidInputError(
        f"YOLO import needs class names: {YOLO_CLASSES_FILE} or data.yaml in {root} or "
        f"{labels_dir}, "
        "or the 'classes' parameter",
        code="invalid_dataset",
    )


def check_images(
    dataset: DetectionDataset, sources: Mapping[str, Path], limits: ImageLimits
) -> dict[str, str]:
    """Decode every image (format, byte and pixel caps), compare its size with the labels.

    Returns:
        file name -> SHA-256 of the file, the duplicate groups for :func:`build_splits`.

    Raises:
        InvalidInputError: an undecodable image or one whose size differs from the labels.
    """
    hashes = {}
    for image in dataset.images:
        data = sources[image.file_name].read_bytes()
        try:
            decoded = decode_image(data, limits)
        except InvalidInputError as exc:
            raise InvalidInputError(f"{image.file_name}: {exc.message}", code=exc.code) from exc
        if (decoded.width, decoded.height) != (image.width, image.height):
            raise InvalidInputError(
                f"{image.file_name}: labels say {image.width}x{image.height}, the image is "
                f"{decoded.width}x{decoded.height}",
                code="image_size_mismatch",
            )
        hashes[image.file_name] = content_hash(data)
    return hashes


def build_splits(
    dataset: DetectionDataset,
    hashes: dict[str, str],
    val_fraction: float,
    seed: int,
    mini: Iterable[int] = (),
) -> dict[str, list[str]]:
    """``train``/``val`` (byte-identical images stay on one side) and ``mini-N`` of train."""
    train, val = split_train_val(dataset, val_fraction, seed, groups=hashes)
    splits = {"train": _names(train), "val": _names(val)}
    for n in mini:
        splits[f"mini-{n}"] = _names(mini_subset(train, n, seed))
    return splits


def _names(dataset: DetectionDataset) -> list[str]:
    return [im.file_name for im in dataset.images]


def store_dataset(
    store: ObjectStore,
    ref: DatasetRef,
    dataset: DetectionDataset,
    sources: Mapping[str, Path],
    splits: dict[str, list[str]],
    info: dict[str, Any],
) -> dict[str, Any]:
    """Publish a version (images, dataset.json, splits.json, then manifest); returns it."""
    files: dict[str, bytes | Path] = {}
    for image in dataset.images:
        validate_key(ref.image_key(image.file_name))
        files[IMAGES_DIR + image.file_name] = sources[image.file_name]
    files[DATASET_FILE] = dataset.model_dump_json().encode()
    split_doc = {"seed": info.get("seed"), "val_fraction": info.get("val_fraction")}
    files[SPLITS_FILE] = json.dumps({**split_doc, "splits": splits}).encode()
    manifest = {
        "name": ref.name,
        "version": ref.version,
        "classes": dataset.classes,
        "images": len(dataset.images),
        "boxes": dataset.num_boxes,
        "box_counts": dataset.box_counts(),
        "splits": {name: len(names) for name, names in splits.items()},
        **info,
    }
    DatasetCatalog(store).publish(ref, files, manifest)
    return manifest


def import_dataset(
    store: ObjectStore,
    root: Path,
    params: DatasetImportParams,
    version: str,
    limits: ImageLimits,
    source: str,
) -> tuple[DatasetRef, dict[str, Any]]:
    """Folder -> checked, split, stored version ``params.name:version``."""
    dataset, sources = import_folder(
        root, params.format, params.images, params.annotations, params.classes
    )
    hashes = check_images(dataset, sources, limits)
    splits = build_splits(dataset, hashes, params.val_fraction, params.seed, params.mini)
    info = {
        "format": params.format,
        "source": source,
        "seed": params.seed,
        "val_fraction": params.val_fraction,
        "duplicates": len(hashes) - len(set(hashes.values())),
    }
    ref = DatasetRef(params.name, version)
    return ref, store_dataset(store, ref, dataset, sources, splits, info)


def download_prefix(
    store: ObjectStore, prefix: str, dest: Path, max_bytes: int, threads: int
) -> Path:
    """Mirror every object under ``prefix`` into ``dest`` (keys become relative paths).

    Raises:
        InvalidInputError: nothing under the prefix (code source_empty) or a file over the cap.
    """
    keys = store.list(prefix)
    if not keys:
        raise InvalidInputError(f"nothing is stored under {prefix!r}", code="source_empty")

    def check(key: str) -> None:
        if PurePosixPath(key).suffix.lower() in IMAGE_SUFFIXES and store.size(key) > max_bytes:
            raise InvalidInputError(f"{key} is larger than {max_bytes} bytes", code="too_large")

    download_all(store, [(key, dest / key[len(prefix) :]) for key in keys], threads, check)
    return dest
