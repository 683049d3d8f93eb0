"""The synchronous map use case (``POST /v1/maps``, ``agssp maps score``): one image's map,
whole or tiled, with its scores and an optional overlay.
"""

from __future__ import annotations

import math
import time
from dataclasses import dataclass
from typing import Literal

import numpy as np
import torch

from services.anomaly_map.config import AnomalyMapSettings
from services.anomaly_map.ml.clip.preprocess import upsample_maps
from services.anomaly_map.ml.clip.tiling import plan_tiles
from services.anomaly_map.params import Method
from services.anomaly_map.runtime.engine import MapEngine, resolve_mode
from services.anomaly_map.runtime.methods import method_for, names_with
from services.anomaly_map.stores.categories import CategoryRecord
from shared.errors import InvalidInputError
from shared.imaging.intake import decode_image
from shared.imaging.render import render_heatmap_overlay

Resolution = Literal["patch", "image"]


# -- single-image maps -------------------------------------------------------------------
@dataclass(frozen=True)
class MapRequest:
    """Parameters of one anomaly-map request."""

    category: str
    mode: Method | None = None
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
    mode: Method,
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
    mode: Method,
    resolution: Resolution,
    tile: int,
    settings: AnomalyMapSettings,
) -> tuple[np.ndarray, float, float | None, int]:
    if not method_for(mode).needs.tiling:
        tiling = " and ".join(names_with(lambda needs: needs.tiling))
        raise InvalidInputError(f"tiling is available for {tiling}", code="mode_unavailable")
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
