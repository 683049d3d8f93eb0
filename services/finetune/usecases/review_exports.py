"""Export for review: pseudo boxes or a detector's predictions as a labelled set in a zip.

A person corrects the boxes in the labelling tool the plant runs (CVAT, Label Studio) and
brings the folder back with the dataset import (``agssp data import`` or
``POST /v1/datasets``), which recognises both layouts by itself:

* ``coco``: ``annotations.json`` (COCO detection; predictions carry their ``score``) and
  ``images/``;
* ``yolo``: ``images/``, ``labels/<stem>.txt`` and ``classes.txt``.

The boxes come back as exported: COCO exactly, YOLO within its 6 decimals (pseudo boxes,
already YOLO with 6 decimals, exactly). Pseudo boxes are the pseudo-label output's YOLO
files, the boxes AGDP trains on; predictions are those a saved evaluation holds at its
``conf`` (``usecases.evaluations``). The GET routes pack small sets inside the request; a
job (``usecases.review_export_jobs``) packs large ones with the same functions.
"""

from __future__ import annotations

import json
import logging
import shutil
import uuid
import zipfile
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

from services.finetune.config import FinetuneSettings
from services.finetune.ml.coco import export_coco
from services.finetune.ml.dataset import Box, DetectionDataset, ImageRecord
from services.finetune.ml.error_analysis import ErrorAnalysis
from services.finetune.ml.yolo_format import export_yolo
from services.finetune.params import ExportFormat
from services.finetune.stores.datasets import DatasetCatalog, download_all
from services.finetune.stores.models import ModelRegistry
from services.finetune.stores.pseudo_labels import download_counter, load_pseudo_labels
from services.finetune.usecases.evaluation_views import error_analysis, find_evaluation
from shared.errors import InvalidInputError
from shared.imaging.intake import ImageLimits, image_limits
from shared.schemas.artifacts import ArtifactRef
from shared.schemas.pseudo_labels import CLASSES_FILE as YOLO_CLASSES_FILE
from shared.schemas.pseudo_labels import PseudoLabelManifest, manifest_key, output_prefix
from shared.storage.base import ObjectStore

log = logging.getLogger(__name__)
COCO_FILE = "annotations.json"
# a YOLO folder's class list, named as the pseudo-label output (a YOLO folder too) names it
CLASSES_FILE = YOLO_CLASSES_FILE
# Reports (stage, done, total): stage "download" (images started, from the download threads,
# so it must be thread-safe) or "pack" (files written into the zip).
Progress = Callable[[str, int, int], None]


@dataclass(frozen=True)
class ExportedZip:
    """A finished export: the archive, the scratch folder to remove once it is sent, the
    name to download it as, and the images and boxes it holds."""

    path: Path
    folder: Path
    name: str
    images: int = 0
    boxes: int = 0


def job_scratch(settings: FinetuneSettings, job_id: str) -> Path:
    """The scratch folder of export job ``job_id`` under the work dir: named by the job, so
    the delivery after a killed worker finds (and clears) what the killed one left."""
    return settings.resolved_work_dir() / f"export-{job_id}"


@contextmanager
def _scratch(settings: FinetuneSettings, folder: Path | None) -> Iterator[Path]:
    """``folder`` emptied, or a fresh one under the work dir; removed here only when the
    export fails (the caller removes it once the zip is sent or stored)."""
    if folder is None:
        folder = settings.resolved_work_dir() / f"export-{uuid.uuid4().hex}"
    elif folder.exists():
        # a worker killed mid-export left it: half-downloaded images, a partial zip
        log.info("removing %s, left by an earlier delivery", folder)
        shutil.rmtree(folder)
    folder.mkdir(parents=True)
    try:
        yield folder
    except BaseException:
        shutil.rmtree(folder, ignore_errors=True)
        raise


def predictions_zip(
    registry: ModelRegistry,
    catalog: DatasetCatalog,
    ref: ArtifactRef,
    where: tuple[str | None, str],
    fmt: ExportFormat,
    settings: FinetuneSettings,
    progress: Progress | None = None,
    scratch: Path | None = None,
) -> ExportedZip:
    """The detections of ``ref``'s saved evaluation on ``where`` = (dataset, split), built in
    ``scratch`` (emptied first; default a fresh folder).

    Raises:
        NotFoundError: no such evaluation (code evaluation_not_found).
        InvalidInputError: it predates per-image records (code evaluation_without_errors).
    """
    document = find_evaluation(registry, catalog, ref, *where)
    errors = error_analysis(document)
    with _scratch(settings, scratch) as work:
        path, labelled = export_predictions(
            registry.store, document["dataset"], errors, fmt, work, progress
        )
    source = f"{ref.name}-{ref.version}-{document['split']}"
    return _exported(path, work, archive_name(source, fmt), labelled)


def pseudo_labels_zip(
    store: ObjectStore,
    labels_prefix: str,
    images_prefix: str | None,
    fmt: ExportFormat,
    settings: FinetuneSettings,
    progress: Progress | None = None,
    scratch: Path | None = None,
) -> ExportedZip:
    """A pseudo-label output with its images (see :func:`export_pseudo_labels`), built in
    ``scratch`` as :func:`predictions_zip` builds."""
    limits = image_limits(settings)
    with _scratch(settings, scratch) as work:
        path, labelled = export_pseudo_labels(
            store, labels_prefix, images_prefix, fmt, work, limits, progress
        )
    source = "pseudo-" + output_prefix(labels_prefix).rstrip("/").rsplit("/", 1)[-1]
    return _exported(path, work, archive_name(source, fmt), labelled)


def _exported(path: Path, work: Path, name: str, labelled: DetectionDataset) -> ExportedZip:
    boxes = sum(len(image.boxes) for image in labelled.images)
    return ExportedZip(path, work, name, len(labelled.images), boxes)


def predictions_dataset(errors: ErrorAnalysis) -> tuple[DetectionDataset, list[list[float]]]:
    """A saved evaluation's detections as a labelled set, and each image's scores."""
    images, scores = [], []
    for image in errors.images:
        # boxes are stored to 2 decimals: one thinner than that has no area left to label
        dets = [d for d in image.dets if d.box[2] > d.box[0] and d.box[3] > d.box[1]]
        boxes = [
            Box(x1=d.box[0], y1=d.box[1], x2=d.box[2], y2=d.box[3], class_id=d.class_id)
            for d in dets
        ]
        images.append(
            ImageRecord(
                file_name=image.file_name, width=image.width, height=image.height, boxes=boxes
            )
        )
        scores.append([d.score for d in dets])
    return DetectionDataset(classes=list(errors.classes), images=images), scores


def export_predictions(
    store: ObjectStore,
    dataset: str,
    errors: ErrorAnalysis,
    fmt: ExportFormat,
    work: Path,
    progress: Progress | None = None,
) -> tuple[Path, DetectionDataset]:
    """The detections of a saved evaluation on ``dataset`` ('name:version') as a zip, and
    the set it holds."""
    labelled, scores = predictions_dataset(errors)
    ref = DatasetCatalog(store).resolve(dataset)
    images = work / "images"
    pairs = [(ref.image_key(im.file_name), images / im.file_name) for im in labelled.images]
    download_all(store, pairs, threads=8, check=download_counter(_downloads(progress), len(pairs)))
    path = write_zip(labelled, images, fmt, work / "export", scores, progress)
    return path, labelled


def export_pseudo_labels(
    store: ObjectStore,
    labels_prefix: str,
    images_prefix: str | None,
    fmt: ExportFormat,
    work: Path,
    limits: ImageLimits,
    progress: Progress | None = None,
) -> tuple[Path, DetectionDataset]:
    """A pseudo-label output (``<out>/`` or ``<out>/labels/``) with its images as a zip, and
    the set it holds.

    Raises:
        InvalidInputError: no manifest there and no ``images_prefix`` given
            (code images_prefix_required), or what ``load_pseudo_labels`` refuses.
    """
    images_prefix = pseudo_images_prefix(store, labels_prefix, images_prefix)
    data = load_pseudo_labels(
        store, images_prefix, labels_prefix, work / "pseudo", limits, progress=_downloads(progress)
    )
    path = write_zip(data.dataset, data.images_dir, fmt, work / "export", None, progress)
    return path, data.dataset


def _downloads(progress: Progress | None) -> Callable[[int, int], None] | None:
    """``progress`` as the downloads report it: (started, total) of stage "download"."""
    if progress is None:
        return None
    return lambda done, total: progress("download", done, total)


def pseudo_images_prefix(store: ObjectStore, labels_prefix: str, given: str | None) -> str:
    """The images a pseudo-label output describes: ``given``, else its manifest's prefix.

    Raises:
        InvalidInputError: neither is there (code images_prefix_required).
    """
    if given is not None:
        return given
    key = manifest_key(output_prefix(labels_prefix))
    if not store.exists(key):
        raise InvalidInputError(
            f"no pseudo-label manifest at {key}: name the images with images_prefix",
            code="images_prefix_required",
        )
    return PseudoLabelManifest.from_bytes(store.get_bytes(key), key).images_prefix


def write_zip(
    dataset: DetectionDataset,
    images_dir: Path,
    fmt: ExportFormat,
    folder: Path,
    scores: list[list[float]] | None = None,
    progress: Progress | None = None,
) -> Path:
    """Lay the set out in ``folder`` as the import reads it, and zip it beside the folder;
    ``progress`` hears each file written into the zip."""
    writers: dict[str, Callable[[], None]] = {
        "coco": lambda: _write_coco(dataset, folder, scores),
        "yolo": lambda: _write_yolo(dataset, folder),
    }
    (folder / "images").mkdir(parents=True, exist_ok=True)
    writers[fmt]()
    for image in dataset.images:
        shutil.copyfile(images_dir / image.file_name, folder / "images" / image.file_name)
    archive = folder.with_suffix(".zip")
    files = sorted(p for p in folder.rglob("*") if p.is_file())
    with zipfile.ZipFile(archive, "w", zipfile.ZIP_DEFLATED) as out:
        for done, path in enumerate(files, 1):
            out.write(path, path.relative_to(folder).as_posix())
            if progress is not None:
                progress("pack", done, len(files))
    return archive


def _write_coco(dataset: DetectionDataset, folder: Path, scores: list[list[float]] | None) -> None:
    document = export_coco(dataset)
    if scores is not None:
        flat = [s for image in scores for s in image]
        for annotation, score in zip(document["annotations"], flat, strict=True):
            annotation["score"] = score
    (folder / COCO_FILE).write_text(json.dumps(document), encoding="utf-8")


def _write_yolo(dataset: DetectionDataset, folder: Path) -> None:
    export_yolo(dataset, folder / "labels")
    # the import looks for the names beside labels/ as well as in it; tools expect them here
    shutil.move(folder / "labels" / CLASSES_FILE, folder / CLASSES_FILE)


def archive_name(source: str, fmt: ExportFormat) -> str:
    """A download name from what was exported: ``<source>-<fmt>.zip``, safe characters."""
    safe = "".join(c if c.isalnum() or c in "-_." else "-" for c in source).strip("-")
    return f"{safe or 'export'}-{fmt}.zip"
