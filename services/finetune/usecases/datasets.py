"""Dataset imports: VOC/COCO/YOLO folders or images + pixel masks into stored versions.

One import path for the CLI (a local folder) and the import job (a store prefix, downloaded
first): parse with ``ml``, decode every image once (size check and content hash), split
deterministically with duplicates kept together, publish a stored version.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, replace
from pathlib import Path, PurePosixPath
from typing import Any

from services.finetune.config import FinetuneSettings
from services.finetune.ml.coco import import_coco
from services.finetune.ml.dataset import DetectionDataset
from services.finetune.ml.dataset_summary import summarize
from services.finetune.ml.image_files import (
    IMAGE_SUFFIXES,
    Fingerprint,
    content_hash,
    duplicate_groups,
    fingerprint,
)
from services.finetune.ml.layout_detect import FoundLayout, SplitSource, detect_layout
from services.finetune.ml.splits import mini_subset, split_stratified, split_train_val
from services.finetune.ml.voc import import_voc
from services.finetune.ml.yolo_format import import_yolo, read_class_names
from services.finetune.params import DatasetFormat, DatasetImportParams, SplitMethod
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
    keys = jobs.store.list(params.prefix)
    if not keys:
        raise InvalidInputError(f"nothing is stored under {params.prefix!r}", code="source_empty")
    _check_given_folders(params, [key[len(params.prefix) :] for key in keys])
    task = TaskName.FINETUNE_IMPORT_DATASET
    return submit(sender, jobs, IMPORT_KIND, task, params.model_dump(mode="json"))


def _check_given_folders(params: DatasetImportParams, names: Sequence[str]) -> None:
    """Refuse, before the job queues, folders given explicitly that hold nothing.

    Raises:
        InvalidInputError: code images_missing or annotations_missing, naming the folder.
    """
    given = params.model_fields_set
    checks = [("images", params.images, "images_missing")] if "images" in given else []
    if params.annotations is not None:
        checks.append(("annotations", params.annotations, "annotations_missing"))
    for what, folder, code in checks:
        if folder == ".":
            continue
        inside = folder.rstrip("/") + "/"
        if not any(n == folder or n.startswith(inside) for n in names):
            raise InvalidInputError(
                f"the {what} {folder!r} holds nothing under {params.prefix!r}", code=code
            )


def run_import_job(ctx: JobContext, settings: FinetuneSettings) -> list[str]:
    """Download a labelled folder from the store and publish it as ``name:<job id>``."""
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
        layout=manifest.get("layout"),
        warnings=manifest.get("warnings", []),
        summary=manifest.get("summary"),
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


@dataclass(frozen=True)
class CheckedImages:
    """Content hashes and fingerprints of the decodable images; names of the others."""

    hashes: dict[str, str]
    prints: dict[str, Fingerprint]
    failed: list[str]


def check_images(
    dataset: DetectionDataset, sources: Mapping[str, Path], limits: ImageLimits
) -> CheckedImages:
    """Decode every image; undecodable ones are listed, not fatal.

    Raises:
        InvalidInputError: an image whose size differs from its labels (the labels would be
            wrong), or not one image decodes (code no_decodable_images).
    """
    hashes: dict[str, str] = {}
    prints: dict[str, Fingerprint] = {}
    failed = []
    for image in dataset.images:
        data = sources[image.file_name].read_bytes()
        try:
            decoded = decode_image(data, limits)
        except InvalidInputError as exc:
            log.warning("%s: %s", image.file_name, exc.message)
            failed.append(image.file_name)
            continue
        if (decoded.width, decoded.height) != (image.width, image.height):
            raise InvalidInputError(
                f"{image.file_name}: labels say {image.width}x{image.height}, the image is "
                f"{decoded.width}x{decoded.height}",
                code="image_size_mismatch",
            )
        hashes[image.file_name] = content_hash(data)
        prints[image.file_name] = fingerprint(decoded.array)
    if dataset.images and not hashes:
        raise InvalidInputError(
            f"none of the {len(dataset.images)} images could be decoded (e.g. {failed[:3]})",
            code="no_decodable_images",
        )
    return CheckedImages(hashes, prints, failed)


def build_splits(
    dataset: DetectionDataset,
    groups: dict[str, str],
    val_fraction: float,
    seed: int,
    mini: Iterable[int] = (),
    method: SplitMethod = "stratified",
) -> dict[str, list[str]]:
    """``train``/``val`` (each duplicate group on one side) and ``mini-N`` of train."""
    split = split_stratified if method == "stratified" else split_train_val
    train, val = split(dataset, val_fraction, seed, groups)
    splits = {"train": _names(train), "val": _names(val)}
    for n in mini:
        splits[f"mini-{n}"] = _names(mini_subset(train, n, seed))
    return splits


def own_splits(
    dataset: DetectionDataset,
    given: Mapping[str, list[str]],
    groups: dict[str, str],
    params: DatasetImportParams,
) -> dict[str, list[str]]:
    """The data set's own splits (less undecodable images); a set without a ``val`` split
    gets one drawn from ``train`` (or from everything) as :func:`build_splits` draws it, and
    ``mini-N`` subsets come from ``train``."""
    present = {im.file_name for im in dataset.images}
    splits = {name: [n for n in names if n in present] for name, names in given.items()}
    base = "train" if "train" in splits else None
    if "val" not in splits:
        pool = dataset.subset(splits.pop(base) if base else sorted(present))
        drawn = build_splits(
            pool, groups, params.val_fraction, params.seed, (), params.split_method
        )
        splits.update(drawn)
        base = "train"
    if base is None:
        return splits  # val and test only: nothing to train on is stored as given
    train = dataset.subset(splits[base])
    for n in params.mini:
        splits[f"mini-{n}"] = _names(mini_subset(train, n, params.seed))
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
    """Folder -> recognised, checked, split, summarised, stored version ``params.name:version``.

    Raises:
        InvalidInputError: no layout recognised (unknown_layout), annotations missing or
            matching no image (annotations_missing, annotations_unmatched), malformed
            annotations, or no decodable image.
    """
    layout = resolve_layout(root, params)
    parsed = parse_layout(root, layout, params.classes)
    warnings = coverage_warnings(parsed, params.min_labelled_share)
    checked = check_images(parsed.dataset, parsed.sources, limits)
    if checked.failed:
        warnings.append(f"{len(checked.failed)} images could not be decoded and were left out: "
                        f"{checked.failed[:10]}")  # fmt: skip
    dataset = parsed.dataset.subset(list(checked.hashes))
    # The shuffle split is the earlier one: byte-identical groups only, so its splits repeat.
    groups = (
        duplicate_groups(checked.hashes, checked.prints)
        if params.split_method == "stratified"
        else dict(checked.hashes)
    )
    if params.keep_splits and parsed.splits is not None:
        splits = own_splits(dataset, parsed.splits, groups, params)
    else:
        splits = build_splits(
            dataset, groups, params.val_fraction, params.seed, params.mini, params.split_method
        )
    summary = summarize(
        dataset, splits, params.summary_imgsz, labelled=parsed.labelled, groups=groups,
        failed=checked.failed,
    )  # fmt: skip
    info = {
        "format": layout.format,
        "layout": layout.description,
        "source": source,
        "seed": params.seed,
        "val_fraction": params.val_fraction,
        "split_method": params.split_method,
        "duplicates": len(checked.hashes) - len(set(checked.hashes.values())),
        "near_duplicate_groups": summary["duplicates"]["groups"],
        "warnings": warnings,
        "summary": summary,
    }
    for warning in warnings:
        log.warning("import %s: %s", params.name, warning)
    ref = DatasetRef(params.name, version)
    return ref, store_dataset(store, ref, dataset, parsed.sources, splits, info)


def resolve_layout(root: Path, params: DatasetImportParams) -> FoundLayout:
    """The layout to import: the named format with the given folders, or the one found
    (``format: auto``), where folders given explicitly still override what was found."""
    given = {k for k in ("images", "annotations") if getattr(params, k) is not None} & (
        params.model_fields_set
    )
    if params.format != "auto":
        annotations = params.annotations or DEFAULT_ANNOTATIONS[params.format]
        split = SplitSource("all", params.images, annotations)
        return FoundLayout(params.format, (split,), None, None, f"{params.format} (given)")
    found = detect_layout(root)
    if not given:
        return found
    first = found.splits[0]
    images = params.images if "images" in given else first.images
    annotations = params.annotations if params.annotations is not None else first.annotations
    split = SplitSource("all", images, annotations)
    return replace(found, splits=(split,), description=f"{found.description}, folders given")


@dataclass(frozen=True)
class ParsedLayout:
    """Every split of a layout parsed into one dataset.

    ``splits`` holds the data set's own splits (None when it defines none); ``labelled``
    the images whose annotation file exists (None where the format lists annotated images
    only).
    """

    dataset: DetectionDataset
    sources: dict[str, Path]
    splits: dict[str, list[str]] | None
    labelled: set[str] | None
    where: list[str]


def parse_layout(root: Path, layout: FoundLayout, classes: Sequence[str] | None) -> ParsedLayout:
    """Parse each split with the format's importer; names that collide across splits are
    prefixed with their split (``val__0001.jpg``)."""
    names = list(classes) if classes is not None else layout.classes
    parts = []
    for split in layout.splits:
        _require_annotations(root, layout.format, split)
        dataset, sources = import_folder(
            root, layout.format, split.images, split.annotations, names
        )
        names = names or list(dataset.classes)
        if list(dataset.classes) != names:
            raise InvalidInputError(
                f"split {split.name!r} has classes {dataset.classes}, another has {names}",
                code="invalid_dataset",
            )
        parts.append((split, dataset, sources))
    return _merge(root, layout, parts)


def _require_annotations(root: Path, fmt: str, split: SplitSource) -> None:
    target = root / split.annotations
    if fmt in ("yolo", "masks", "voc") and not target.is_dir():
        raise InvalidInputError(
            f"the annotations folder {split.annotations!r} does not exist under {root} "
            f"(images: {split.images!r}); pass --annotations",
            code="annotations_missing",
        )


def _merge(
    root: Path,
    layout: FoundLayout,
    parts: list[tuple[SplitSource, DetectionDataset, dict[str, Path]]],
) -> ParsedLayout:
    seen: dict[str, int] = {}
    for _, dataset, _ in parts:
        for image in dataset.images:
            seen[image.file_name] = seen.get(image.file_name, 0) + 1
    prefix = len(parts) > 1 and any(count > 1 for count in seen.values())
    images, sources, splits, labelled = [], {}, {}, set()
    unmatched = []
    for split, dataset, found in parts:
        marks = _annotated(root, layout.format, split, found)
        if marks is not None and dataset.images and not marks:
            unmatched.append((split, sorted(found)[:3]))
        names = []
        for image in dataset.images:
            name = f"{split.name}__{image.file_name}" if prefix else image.file_name
            images.append(image.model_copy(update={"file_name": name}))
            sources[name] = found[image.file_name]
            names.append(name)
            if marks is None or image.file_name in marks:
                labelled.add(name)
        splits[split.name] = names
    if unmatched:
        split, examples = unmatched[0]
        raise InvalidInputError(
            f"no image in {split.images!r} has an annotation in {split.annotations!r} "
            f"(images such as {examples}): the annotations folder matches none of them; "
            "check --images and --annotations",
            code="annotations_unmatched",
        )
    dataset = DetectionDataset(classes=parts[0][1].classes, images=images)
    own = splits if layout.named_splits else None
    # A YOLO image without a label file may be unlabelled; a masks image without a mask is
    # defect-free by the layout's own convention, like VOC's and COCO's listed images.
    marked = labelled if layout.format == "yolo" else None
    return ParsedLayout(dataset, sources, own, marked, [s.annotations for s, _, _ in parts])


def _annotated(
    root: Path, fmt: str, split: SplitSource, sources: Mapping[str, Path]
) -> set[str] | None:
    """Images (by file name) whose annotation file exists (a label file, a mask); None for
    VOC and COCO, which list annotated images only."""
    target = root / split.annotations
    if fmt == "yolo":
        return {n for n, path in sources.items() if (target / f"{path.stem}.txt").is_file()}
    if fmt == "masks":
        from services.finetune.ml.masks import find_mask

        images = root / split.images
        return {n for n, path in sources.items() if find_mask(path, images, target) is not None}
    return None


def coverage_warnings(parsed: ParsedLayout, min_share: float) -> list[str]:
    """A warning when fewer than ``min_share`` of the images carry an annotation."""
    if parsed.labelled is None or not parsed.dataset.images:
        return []
    total, have = len(parsed.dataset.images), len(parsed.labelled)
    if have >= min_share * total:
        return []
    return [
        f"only {have} of {total} images have an annotation in {parsed.where}; the other "
        f"{total - have} are imported as defect-free. If they are not, check --annotations"
    ]


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
