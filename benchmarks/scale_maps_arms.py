"""The measured arms of ``benchmarks.scale_maps``, each run in a child process of its own.

The fork server imports this module once, so children start with the suite imported and no
child's timing pays for imports; each child reports its own peak RSS (``ru_maxrss``) at the
end. Jobs run through the suite's runner (``run_job``) with the handlers the Celery tasks
call, on a local-folder store; the bare arms call the same model and labeler with no store,
no records and no writes, except ``bare_extraction_io``, which adds the least file I/O and
outputs a labelling pass must do: each map read from its ``.npy`` file, each image's size from
its header, one label file per image, and the streamed COCO document and box statistics.
"""

from __future__ import annotations

import json
import logging
import os
import resource
import shutil
import time
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import torch
from numpy.typing import NDArray

from benchmarks.overhead_maps import TINY_CLIP_DIR
from benchmarks.scale_maps_pool import FIT_PREFIX, POOL_PREFIX, jpeg, steel_image
from services.anomaly_map.config import AnomalyMapSettings
from services.anomaly_map.runtime.engine import MapEngine, build_engine
from services.anomaly_map.stores.categories import CategorySpec
from services.anomaly_map.stores.tocoad_models import load_model
from services.anomaly_map.usecases.categories import prompt_tokenizer, put_category
from services.anomaly_map.usecases.dataset_maps import run_dataset_maps
from services.anomaly_map.usecases.tocoad_fits import run_tocoad_fit
from services.pretrain.config import PretrainSettings
from services.pretrain.ml.labeler import BoxLabeler
from services.pretrain.ml.pseudo_boxes import ImageBoxes
from services.pretrain.params import PseudoLabelParams, SourceSpec
from services.pretrain.stores.maps import Pair, collect_pairs, load_scores, score_of
from services.pretrain.stores.pairs import HEADER_PROBE_BYTES, image_size_from_header, load_map
from services.pretrain.usecases.label_outputs import AreaRatios, BoxTally, CocoStream
from services.pretrain.usecases.pseudo_label_jobs import (
    MAP_MEMORY,
    PSEUDO_LABELS_KIND,
    run_pseudo_label_job,
)
from shared.config import CommonSettings, PathSettings
from shared.imaging.intake import ImageLimits, decode_image, image_limits
from shared.jobs.context import JobContext
from shared.jobs.runner import RunnerOptions, run_job
from shared.jobs.store import JobStore
from shared.schemas.jobs import JobState
from shared.storage.filesystem import FileObjectStore

if TYPE_CHECKING:
    from benchmarks.scale_maps import Spec

CATEGORY = "bench"


def _rss_mb() -> float:
    """Peak resident memory of this process so far, MB (Linux reports KiB)."""
    return round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, 1)


def rate(wall: float, images: int) -> dict[str, Any]:
    return {"wall_s": round(wall, 3), "images": images, "images_per_s": round(images / wall, 2)}


def home(spec: Spec) -> CommonSettings:
    return CommonSettings(paths=PathSettings(home=spec.store.parent / f"{spec.store.name}-home"))


def _map_settings(spec: Spec) -> AnomalyMapSettings:
    return AnomalyMapSettings(
        common=home(spec), clip_model="tiny-vit", allow_random_weights=True, device="cpu",
        extra_model_config_dir=TINY_CLIP_DIR / "tiny-vit.json", max_batch_size=spec.map_batch,
    )  # fmt: skip


def _run(
    jobs: JobStore, kind: str, params: dict[str, Any], handler: Callable[[JobContext], Any]
) -> Any:
    """One job through the runner, as a worker runs it; the finished record."""
    record = jobs.create(kind=kind, task_name="bench", queue="bench", params=params)
    done = run_job(record.id, jobs, handler, RunnerOptions(worker="bench"))
    if done.state != JobState.SUCCEEDED:
        raise RuntimeError(f"{kind} job {done.id} ended {done.state}: {done.error}")
    return done


def fit(spec: Spec) -> dict[str, Any]:
    """The category and its ToCoAD fit on the normals under ``normals/`` (the fit store)."""
    settings = _map_settings(spec)
    engine = build_engine(settings, FileObjectStore(spec.store))
    cat = CategorySpec(map="steel strip", good=["{} without defects"],
                       defect=["{} with a scratch"], method="tocoad")  # fmt: skip
    reference = [
        ("r.jpg", jpeg(steel_image(spec.seed, 0, spec.image_side, defect=False, stream=2)))
    ]
    put_category(engine.categories, CATEGORY, cat, reference,
                 tokenizer=prompt_tokenizer(settings), limits=engine.limits,
                 max_references=settings.max_references)  # fmt: skip
    params = {"category": CATEGORY, "normal_prefix": FIT_PREFIX, "preset": spec.preset,
              "config": spec.fit_config}  # fmt: skip
    started = time.perf_counter()
    done = _run(JobStore(engine.categories.store), "anomaly_map_tocoad_fit", params,
                lambda ctx: run_tocoad_fit(ctx, engine))  # fmt: skip
    return {"wall_s": round(time.perf_counter() - started, 1), "job": done.id}


def _first_batch(spec: Spec, engine: MapEngine) -> list[NDArray[np.uint8]]:
    files = sorted((spec.store / POOL_PREFIX).glob("*.jpg"))[: spec.map_batch]
    return [decode_image(f.read_bytes(), engine.limits).array for f in files]


def _warm(engine: MapEngine, spec: Spec) -> None:
    """Load the fitted model and score one batch, as a worker that served before would."""
    engine.score(_first_batch(spec, engine), engine.categories.get(CATEGORY), "tocoad")


def map_job(spec: Spec) -> dict[str, Any]:
    """The dataset-map job over the whole pool (reading, decoding, maps, checkpoints, CSV)."""
    settings = _map_settings(spec)
    engine = build_engine(settings, worker_store(spec))
    _warm(engine, spec)
    before = _rss_mb()
    started = time.perf_counter()
    done = _run(JobStore(engine.categories.store), "anomaly_map_dataset",
                {"category": CATEGORY, "prefix": POOL_PREFIX},
                lambda ctx: run_dataset_maps(ctx, engine, settings))  # fmt: skip
    wall = time.perf_counter() - started
    engine.close()
    count = int(done.outputs["count"])
    return rate(wall, count) | {
        "job": done.id, "output_prefix": done.outputs["output_prefix"],
        "skipped": done.outputs["skipped"], "peak_rss_before_job_mb": before,
    }  # fmt: skip


def worker_store(spec: Spec) -> FileObjectStore:
    """The store as a job worker builds it: writes synced at the job's durability points
    (before its record says SUCCEEDED, before each checkpoint), not one by one."""
    return FileObjectStore(spec.store, durable=False)


def _label_params(spec: Spec) -> dict[str, Any]:
    assert spec.maps_prefix is not None
    return {"category": CATEGORY, "images_prefix": POOL_PREFIX,
            "maps_prefix": spec.maps_prefix, "gate": spec.gate}  # fmt: skip


def label_job(spec: Spec) -> dict[str, Any]:
    """The pseudo-label job on the map job's output (pairing, boxes, files, overlays)."""
    settings = PretrainSettings(common=home(spec), device="cpu")
    jobs = JobStore(worker_store(spec))
    before = _rss_mb()
    started = time.perf_counter()
    done = _run(jobs, PSEUDO_LABELS_KIND, _label_params(spec),
                lambda ctx: run_pseudo_label_job(ctx, settings, BoxLabeler()))  # fmt: skip
    wall = time.perf_counter() - started
    out = done.outputs
    return rate(wall, int(out["images"])) | {
        "job": done.id, "share_with_boxes": out["share_with_boxes"],
        "boxes_per_image": out["boxes_per_image"], "gate": out.get("gate"),
        "gate_reason": out.get("gate_reason"), "peak_rss_before_job_mb": before,
    }  # fmt: skip


def _bare_maps(spec: Spec) -> dict[str, Any]:
    """``TocoadModel.score`` on the pool read from its local files, batch by batch.

    The model runs on one dedicated thread, as the engine runs every model call, so both arms
    have the same thread layout (on a loaded machine, libgomp's spin-waiting made the same
    calls up to 3x slower on the main thread than on a second one).
    """
    engine = build_engine(_map_settings(spec), FileObjectStore(spec.store))
    model = load_model(engine.categories, engine.categories.get(CATEGORY), engine.device)
    files = sorted((spec.store / POOL_PREFIX).glob("*.jpg"))
    with ThreadPoolExecutor(max_workers=1, thread_name_prefix="bare-model") as thread:
        thread.submit(model.score, _first_batch(spec, engine)).result()  # warm, as the job's
        started = time.perf_counter()
        for start in range(0, len(files), spec.map_batch):
            chunk = files[start : start + spec.map_batch]
            arrays = [decode_image(f.read_bytes(), engine.limits).array for f in chunk]
            maps, _ = thread.submit(model.score, arrays).result()
            if len(maps) != len(chunk):
                raise RuntimeError("the bare model returned the wrong number of maps")
        wall = time.perf_counter() - started
    engine.close()
    return rate(wall, len(files))


@dataclass(frozen=True)
class _BareInput:
    """What both bare pseudo-label arms read before their clock starts."""

    params: PseudoLabelParams
    pairs: Sequence[Pair]
    scores: list[float | None]
    source: str


def _bare_input(spec: Spec) -> _BareInput:
    store = FileObjectStore(spec.store)
    params = PseudoLabelParams.model_validate(_label_params(spec))
    pairing = collect_pairs(store, [SourceSpec(category=CATEGORY, images_prefix=POOL_PREFIX,
                                               maps_prefix=params.maps_prefix)])  # fmt: skip
    scores = load_scores(store, params.maps_prefix) or {}
    pairs = pairing.pairs
    image_scores = [None if params.gate == "off" else score_of(scores, p.image_key) for p in pairs]
    source = "none" if params.gate == "off" else "scores"  # as the job's, every score is there
    return _BareInput(params, pairs, image_scores, source)


def _bare_labels(spec: Spec) -> dict[str, Any]:
    """Threshold, gate and boxes of the job's maps held in memory (no store, no files)."""
    store = FileObjectStore(spec.store)
    bare = _bare_input(spec)
    params, pairs = bare.params, bare.pairs
    maps = [load_map(store.get_bytes(p.map_key), p.map_key) for p in pairs]
    size, labeler = (spec.image_side, spec.image_side), BoxLabeler()
    started = time.perf_counter()
    threshold = labeler.threshold([float(np.max(m)) for m in maps], params.c)
    gate = labeler.gate(bare.scores, bare.source, params)
    for pair, amap, score in zip(pairs, maps, bare.scores, strict=True):
        name = pair.image_key[len(POOL_PREFIX) :]
        labeler.label(amap, size, threshold, params, score, name, gate.threshold)
    return rate(time.perf_counter() - started, len(pairs))


def _read_npy(path: Path) -> NDArray[np.float32]:
    amap: NDArray[np.float32] = np.load(path, allow_pickle=False).astype(np.float32, copy=False)
    return amap


def _maxima_pass(paths: list[Path]) -> tuple[list[float], list[NDArray[np.float32] | None]]:
    """Each map's maximum, and the maps the job's ``MAP_MEMORY`` would keep for pass two."""
    maxima: list[float] = []
    kept: list[NDArray[np.float32] | None] = []
    room = MAP_MEMORY
    for path in paths:
        amap = _read_npy(path)
        maxima.append(float(np.max(amap)))
        keep = amap.nbytes <= room
        kept.append(amap if keep else None)
        room -= amap.nbytes if keep else 0
    return maxima, kept


def _image_size(path: Path, limits: ImageLimits) -> tuple[int, int]:
    """(width, height) from the image file's header, as the job reads it from the store."""
    with path.open("rb") as handle:
        size = image_size_from_header(handle.read(HEADER_PROBE_BYTES), limits)
    size = size or image_size_from_header(path.read_bytes(), limits)
    if size is None:
        raise RuntimeError(f"{path} is not a readable image")
    return size


class _Outputs:
    """What a labelling pass writes per image: its label file, COCO entries, statistics."""

    def __init__(self, folder: Path, labeler: BoxLabeler) -> None:
        self.folder, self.labeler = folder, labeler
        (folder / "labels").mkdir(parents=True, exist_ok=True)
        self.coco = CocoStream(folder, labeler.coco_categories())
        self.ratios = AreaRatios(folder / "ratios.f64")
        self.tally = BoxTally(self.ratios)

    def add(self, pair: Pair, item: ImageBoxes, text: str) -> None:
        (self.folder / "labels" / f"{Path(item.file_name).stem}.txt").write_text(text)
        image_id = self.tally.images + 1
        image, boxes = self.labeler.coco_entries(item, image_id, self.coco.annotations + 1)
        self.coco.add(image | {"image_key": pair.image_key}, boxes)
        self.tally.add(self.labeler.area_ratios(item))

    def finish(self) -> None:
        self.tally.summary()
        self.coco.finish()
        self.ratios.close()


def _bare_extraction_io(spec: Spec) -> dict[str, Any]:
    """The bare extraction with a labelling pass's least file I/O and outputs, in a plain loop.

    Maps are read from their ``.npy`` files in the store's folder (pass one for the maxima,
    keeping as many as the job's ``MAP_MEMORY``; pass two reads the others again), each
    image's size from the first bytes of its file (the job must: boxes are in image pixels),
    and per image a YOLO label file, the COCO entries and box statistics are written to a
    local folder, as the job's ``label_outputs`` stream them. No store, records or threads.
    """
    bare = _bare_input(spec)
    params, pairs = bare.params, bare.pairs
    paths = [spec.store / p.map_key for p in pairs]
    limits = image_limits(PretrainSettings(common=home(spec), device="cpu"))
    out = spec.work / f"bare-labels-{spec.store.name}"
    labeler = BoxLabeler()
    started = time.perf_counter()
    maxima, kept = _maxima_pass(paths)
    threshold = labeler.threshold(maxima, params.c)
    gate = labeler.gate(bare.scores, bare.source, params)
    outputs = _Outputs(out, labeler)
    for pair, path, amap, score in zip(pairs, paths, kept, bare.scores, strict=True):
        name = pair.image_key[len(POOL_PREFIX) :]
        grid = amap if amap is not None else _read_npy(path)
        size = _image_size(spec.store / pair.image_key, limits)
        item, text = labeler.label(grid, size, threshold, params, score, name, gate.threshold)
        outputs.add(pair, item, text)
    outputs.finish()
    wall = time.perf_counter() - started
    shutil.rmtree(out)
    return rate(wall, len(pairs))


def bare(spec: Spec) -> dict[str, Any]:
    """The bare arms in one child: maps from files, boxes from maps in memory, then boxes
    with the minimal file I/O (``bare_extraction_io``)."""
    return {
        "maps": _bare_maps(spec),
        "labels": _bare_labels(spec),
        "labels_io": _bare_extraction_io(spec),
    }


ARMS: dict[str, Callable[[Spec], dict[str, Any]]] = {
    "fit": fit, "map_job": map_job, "label_job": label_job, "bare": bare,
}  # fmt: skip


def _arm(name: str) -> Callable[[Spec], dict[str, Any]]:
    if name == "agbp":  # part (c) lives in its own module, built on this one's helpers
        from benchmarks.scale_maps_agbp import agbp

        return agbp
    return ARMS[name]


def run_arm(arm: str, spec: Spec, result: Path) -> None:
    """The child's body: run ``arm`` and write its result with this process's peak RSS."""
    os.environ.setdefault("YOLO_OFFLINE", "1")  # ultralytics stays offline, quiet, out of $HOME
    os.environ.setdefault("YOLO_VERBOSE", "False")
    os.environ.setdefault("YOLO_CONFIG_DIR", str(spec.work / "yolo-config"))
    logging.basicConfig(level=logging.WARNING)
    if spec.threads:
        torch.set_num_threads(spec.threads)
    out = _arm(arm)(spec) | {"peak_rss_mb": _rss_mb(), "torch_threads": torch.get_num_threads()}
    result.write_text(json.dumps(out))
