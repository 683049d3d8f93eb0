"""Use cases of the anomaly_map service (framework-free): set-up and single-image maps, plus
the entry points of ``category_admin``, ``submissions``, ``dataset_maps``, ``evaluation`` and
``tocoad_fit`` that the API, the worker and the CLI call.
"""

from __future__ import annotations

import logging
import math
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

import numpy as np
import torch

from services.anomaly_map import dataset_maps, evaluation, tocoad_fit
from services.anomaly_map.categories import CategoryRecord, CategoryStore
from services.anomaly_map.category_admin import (
    ImportResult,
    check_prompts,
    import_descriptions,
    put_category,
)
from services.anomaly_map.config import AnomalyMapSettings
from services.anomaly_map.engine import MapEngine, Mode, resolve_mode
from services.anomaly_map.ml.preprocess import upsample_maps
from services.anomaly_map.ml.prompts import Tokenizer
from services.anomaly_map.ml.tiling import plan_tiles
from services.anomaly_map.scorers import LazyScorers, load_scorers, text_tokenizer
from services.anomaly_map.submissions import (
    submit_dataset_maps,
    submit_evaluation,
    submit_tocoad_fit,
)
from services.anomaly_map.tocoad_fit import TocoadFitParams
from shared.errors import InvalidInputError, SuiteError
from shared.imaging.intake import ImageLimits, decode_image
from shared.imaging.render import render_heatmap_overlay
from shared.jobs.context import JobContext
from shared.ml.device import resolve_device
from shared.storage.base import ObjectStore

__all__ = [
    "ImportResult",
    "MapRequest",
    "MapResult",
    "TocoadFitParams",
    "build_engine",
    "check_prompts",
    "evaluate_local_folder",
    "generate_map",
    "image_limits",
    "import_descriptions",
    "prompt_tokenizer",
    "put_category",
    "run_dataset_maps",
    "run_evaluation",
    "run_tocoad_fit",
    "submit_dataset_maps",
    "submit_evaluation",
    "submit_tocoad_fit",
    "warm_text_features",
]

log = logging.getLogger(__name__)

Resolution = Literal["patch", "image"]


# -- set-up ----------------------------------------------------------------------------------
def image_limits(settings: AnomalyMapSettings) -> ImageLimits:
    """What the service accepts as an image (bytes and pixel caps from the settings)."""
    return ImageLimits(
        max_bytes=int(settings.max_image_mb * 2**20),
        max_pixels=settings.common.http.max_image_pixels,
    )


def build_engine(settings: AnomalyMapSettings, store: ObjectStore) -> MapEngine:
    """The engine with caches and the model thread; CLIP loads on the first KeAD/WinCLIP call.

    Nothing here needs weights: ToCoAD serves from a plant with no CLIP file anywhere, and a
    KeAD request without weights gets 503 ``model_weights_missing`` from ``engine.scorers``.
    """
    return MapEngine(
        LazyScorers(lambda: load_scorers(settings)),
        CategoryStore(store),
        limits=image_limits(settings),
        device=resolve_device(settings.device),
        text_cache_size=settings.text_cache_size,
        bank_cache_size=settings.bank_cache_size,
        max_pending=settings.max_pending,
    )


def prompt_tokenizer(settings: AnomalyMapSettings) -> Tokenizer:
    """The tokenizer used to check prompt lengths; needs no weights."""
    return text_tokenizer(settings)


def warm_text_features(engine: MapEngine, records: Sequence[CategoryRecord]) -> int:
    """Encode and store the text features of new category versions when CLIP is loaded.

    Never loads CLIP and never fails: without weights (or for ToCoAD categories) the features
    are computed on first use instead. Returns how many were computed or found stored.
    """
    if not engine.clip.is_loaded:
        return 0
    done = 0
    for record in records:
        if record.method == "tocoad":
            continue
        try:
            engine.text_features(record, record.method)
            done += 1
        except SuiteError as exc:
            log.warning("text features of %s/%s: %s", record.name, record.version, exc.message)
    return done


# -- single-image maps -------------------------------------------------------------------
@dataclass(frozen=True)
class MapRequest:
    """Parameters of one anomaly-map request."""

    category: str
    mode: Mode | None = None
    resolution: Resolution = "patch"
    overlay: bool = False
    tile: int | None = None


@dataclass(frozen=True)
class MapResult:
    """One image's map and scores.

    Attributes:
        anomaly_map: float32 (G, G) raw fused map, (H, W) at image resolution, or the
            stitched tile map.
        zero_shot_score: s0; None for tiled requests (scored per tile).
    """

    record: CategoryRecord
    model: str
    mode: str
    anomaly_map: np.ndarray
    image_score: float
    zero_shot_score: float | None
    image_size: tuple[int, int]
    tiles: int
    overlay_png: bytes | None
    timings_ms: dict[str, float]


def _whole_image(
    engine: MapEngine,
    image: np.ndarray,
    record: CategoryRecord,
    mode: Mode,
    resolution: Resolution,
) -> tuple[np.ndarray, float, float | None, int]:
    scores = engine.score([image], record, mode)
    grid = scores.maps[0]
    if resolution == "image":
        grid = upsample_maps(torch.from_numpy(scores.maps), image.shape[:2])[0].numpy()
    zero = None if scores.zero_shot_scores is None else float(scores.zero_shot_scores[0])
    return grid, float(scores.image_scores[0]), zero, 1


def _tiled(
    engine: MapEngine,
    image: np.ndarray,
    record: CategoryRecord,
    mode: Mode,
    resolution: Resolution,
    tile: int,
    settings: AnomalyMapSettings,
) -> tuple[np.ndarray, float, float | None, int]:
    if mode == "tocoad":
        raise InvalidInputError("tiling is available for kead and winclip", code="mode_unavailable")
    height, width = image.shape[:2]
    side = min(tile, height, width)
    overlap = min(int(side * settings.tile_overlap), side - 1)
    count = len(plan_tiles(height, width, tile, overlap))
    if count > settings.max_tiles:
        raise InvalidInputError(
            f"tile {tile} cuts this {width}x{height} image into {count} tiles; the limit is "
            f"{settings.max_tiles}: use a larger tile",
            code="too_many_tiles",
        )
    g = engine.grid_size
    size = (height, width)
    if resolution == "patch":
        size = (math.ceil(height * g / side), math.ceil(width * g / side))
    result = engine.score_tiled(
        image,
        record,
        mode,
        tile=tile,
        overlap=overlap,
        output_size=size,
        batch_size=settings.max_batch_size,
    )
    return result.anomaly_map, result.image_score, None, result.tiles


def generate_map(
    engine: MapEngine, data: bytes, request: MapRequest, settings: AnomalyMapSettings
) -> MapResult:
    """Decode one image and compute its anomaly map (agssp-spec §1.2-1.9, tiled if asked)."""
    started = time.perf_counter()
    record = engine.categories.get(request.category)
    mode = resolve_mode(request.mode, record)
    tile = settings.tile_size if request.tile is None else request.tile
    with engine.admitted():
        image = decode_image(data, engine.limits).array
        decoded = time.perf_counter()
        if tile > 0:
            amap, score, zero, tiles = _tiled(
                engine, image, record, mode, request.resolution, tile, settings
            )
        else:
            amap, score, zero, tiles = _whole_image(engine, image, record, mode, request.resolution)
    scored = time.perf_counter()
    overlay = (
        render_heatmap_overlay(image, amap, settings.overlay_alpha) if request.overlay else None
    )
    done = time.perf_counter()
    return MapResult(
        record=record,
        model=engine.model_for(record, mode),
        mode=mode,
        anomaly_map=amap.astype(np.float32, copy=False),
        image_score=score,
        zero_shot_score=zero,
        image_size=(int(image.shape[0]), int(image.shape[1])),
        tiles=tiles,
        overlay_png=overlay,
        timings_ms={
            "decode": 1000 * (decoded - started),
            "score": 1000 * (scored - decoded),
            "render": 1000 * (done - scored),
            "total": 1000 * (done - started),
        },
    )


# -- jobs ----------------------------------------------------------------------------------
def run_dataset_maps(ctx: JobContext, engine: MapEngine, settings: AnomalyMapSettings) -> list[str]:
    """Worker entry point of ``anomaly_map.dataset_maps`` (see ``dataset_maps``)."""
    return dataset_maps.run(ctx, engine, batch_size=settings.max_batch_size)


def evaluate_local_folder(
    engine: MapEngine,
    record: CategoryRecord,
    root: Path,
    *,
    normal_dirs: Sequence[str],
    mode: str | None,
    max_images: int | None,
    batch_size: int,
    on_batch: Callable[[int, int], None] | None = None,
) -> evaluation.EvaluationResult:
    """Evaluate a local dataset folder (e.g. magnetic-tile: ``<class>/Imgs/<stem>.jpg|.png``)."""
    plans = evaluation.subsample(evaluation.plan_local_folder(root, normal_dirs), max_images)
    if len(plans) < 2:
        raise InvalidInputError(f"fewer than 2 images under {root}", code="no_images")
    return evaluation.evaluate(
        engine,
        record,
        resolve_mode(mode, record),
        plans,
        lambda key: (root / key).read_bytes(),
        batch_size=batch_size,
        on_batch=on_batch,
    )


def run_tocoad_fit(ctx: JobContext, engine: MapEngine) -> list[str]:
    """Worker entry point of ToCoAD fit jobs (see ``tocoad_fit``)."""
    return tocoad_fit.run(ctx, engine.categories, limits=engine.limits, device=engine.device)


def run_evaluation(ctx: JobContext, engine: MapEngine, settings: AnomalyMapSettings) -> list[str]:
    """Worker entry point of ``anomaly_map.evaluate`` (see ``evaluation``)."""
    return evaluation.run_job(
        ctx, engine, batch_size=settings.max_batch_size, max_images=settings.evaluation_max_images
    )
