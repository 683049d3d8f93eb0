"""Synthetic images with anomaly maps in the dataset-map output layout (smoke runs, tests).

Each image is textured noise; most carry one bright blob whose map cells are hot. Maps,
scores and manifest are written with the seam the anomaly_map service's dataset map job
writes with (``shared.schemas.dataset_maps``), so everything downstream runs as on real data.
"""

from __future__ import annotations

import io
from dataclasses import dataclass

import cv2
import numpy as np
from numpy.typing import NDArray

from shared.imaging.render import encode_png
from shared.schemas.dataset_maps import (
    DatasetMapManifest,
    ScoreRow,
    manifest_key,
    map_keys,
    scores_csv,
    scores_key,
)
from shared.storage.base import ObjectStore


@dataclass(frozen=True)
class SyntheticImage:
    """One written image: keys and the blob's box (x1, y1, x2, y2) in pixels, if any."""

    image_key: str
    map_key: str
    blob: tuple[int, int, int, int] | None


def synthetic_pair(
    rng: np.random.Generator, width: int, height: int, grid: int, with_blob: bool
) -> tuple[NDArray[np.uint8], NDArray[np.float32], tuple[int, int, int, int] | None]:
    """Image (H, W, 3) uint8 RGB, map (grid, grid) float32 and the blob box (or None)."""
    image = rng.normal(120, 12, (height, width, 3)).clip(0, 255).astype(np.uint8)
    amap = rng.uniform(0.2, 0.4, (grid, grid)).astype(np.float32)
    if not with_blob:
        return image, amap, None
    bw, bh = max(width // 6, 2), max(height // 6, 2)
    x1 = int(rng.integers(0, width - bw))
    y1 = int(rng.integers(0, height - bh))
    cv2.rectangle(image, (x1, y1), (x1 + bw - 1, y1 + bh - 1), (235, 235, 235), thickness=-1)
    cells_x = slice(x1 * grid // width, max((x1 + bw) * grid // width, x1 * grid // width + 1))
    cells_y = slice(y1 * grid // height, max((y1 + bh) * grid // height, y1 * grid // height + 1))
    amap[cells_y, cells_x] = 1.5
    return image, amap, (x1, y1, x1 + bw, y1 + bh)


def write_synthetic_source(
    store: ObjectStore,
    *,
    images_prefix: str,
    output_prefix: str,
    category: str,
    count: int,
    size: tuple[int, int] = (96, 96),
    grid: int = 6,
    seed: int = 0,
    job_id: str | None = None,
) -> list[SyntheticImage]:
    """Write ``count`` PNG images, their maps, the scores and the manifest.

    Every third image has no blob (a normal image). Prefixes end with '/'.
    """
    rng = np.random.default_rng(seed)
    stems = [f"{category}_{i:04d}" for i in range(count)]
    image_keys = [f"{images_prefix}{stem}.png" for stem in stems]
    targets = map_keys(image_keys, images_prefix, output_prefix)
    written = []
    for i, image_key in enumerate(image_keys):
        image, amap, blob = synthetic_pair(rng, size[0], size[1], grid, with_blob=i % 3 != 2)
        store.put_bytes(image_key, encode_png(image), content_type="image/png")
        buffer = io.BytesIO()
        np.save(buffer, amap, allow_pickle=False)
        store.put_bytes(targets[image_key], buffer.getvalue())
        written.append(SyntheticImage(image_key, targets[image_key], blob))
    _write_index(store, output_prefix, category, written, job_id, grid)
    return written


def _write_index(
    store: ObjectStore,
    output_prefix: str,
    category: str,
    written: list[SyntheticImage],
    job_id: str | None,
    grid: int,
) -> None:
    rows = [
        ScoreRow(item.image_key, score, score, 1.5 if item.blob else 0.4)
        for item in written
        for score in [0.9 if item.blob else 0.1]
    ]
    store.put_bytes(scores_key(output_prefix), scores_csv(rows))
    manifest = DatasetMapManifest(
        category=category,
        count=len(written),
        job_id=job_id,
        maps={item.image_key: item.map_key for item in written},
        grid=grid,
        scores=scores_key(output_prefix),
    )
    store.put_bytes(manifest_key(output_prefix), manifest.to_bytes())
