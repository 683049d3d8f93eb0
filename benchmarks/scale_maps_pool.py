"""The generated image pool of ``benchmarks.scale_maps``: grey steel-like textures, one in ten
with a bright scratch or blob, each a function of (seed, index) only, so a pool of N is the
first N images of any larger one and a fresh store per size can link them instead of
writing them again."""

from __future__ import annotations

import io
import os
import shutil
import time
from pathlib import Path

import numpy as np
from numpy.typing import NDArray
from PIL import Image, ImageDraw

from shared.storage.filesystem import FileObjectStore

POOL_PREFIX = "data/pool/"
FIT_PREFIX = "normals/"
DEFECT_EVERY = 10
_FIT_STREAM = 1  # the fit's normals come from their own random stream


def steel_image(
    seed: int, index: int, side: int, defect: bool, stream: int = 0
) -> NDArray[np.uint8]:
    """A (side, side) uint8 grey texture: brushed rows, coarse mottling, grain, maybe a flaw."""
    rng = np.random.default_rng((seed, stream, index))
    cells = max(side // 16, 2)
    coarse = Image.fromarray(rng.normal(0, 9, (cells, cells)).astype(np.float32))
    mottling = np.asarray(coarse.resize((side, side), Image.Resampling.BICUBIC))
    rows = rng.normal(0, 5, (side, 1))  # rolling marks along the strip
    grain = rng.normal(0, 4, (side, side))
    level = 118 + rng.uniform(-12, 12)
    image = Image.fromarray((level + rows + mottling + grain).clip(0, 255).astype(np.uint8))
    if defect:
        _draw_flaw(ImageDraw.Draw(image), rng, side)
    return np.asarray(image)


def _draw_flaw(draw: ImageDraw.ImageDraw, rng: np.random.Generator, side: int) -> None:
    x, y = (int(v) for v in rng.integers(side // 8, side - side // 8, 2))
    if rng.random() < 0.5:  # a scratch: a thin bright line
        dx, dy = (int(v) for v in rng.integers(-side // 3, side // 3, 2))
        draw.line([(x, y), (x + dx, y + dy)], fill=int(rng.integers(200, 250)), width=2)
    else:  # a blob
        r = int(rng.integers(max(side // 32, 2), max(side // 12, 3)))
        draw.ellipse([x - r, y - r, x + r, y + r], fill=int(rng.integers(190, 240)))


def jpeg(image: NDArray[np.uint8]) -> bytes:
    out = io.BytesIO()
    Image.fromarray(image).save(out, format="JPEG", quality=90)
    return out.getvalue()


def pool_key(index: int) -> str:
    return f"{POOL_PREFIX}img{index:06d}.jpg"


def write_pool(root: Path, count: int, side: int, seed: int) -> float:
    """``count`` images through a ``FileObjectStore`` at ``root``; returns the seconds taken."""
    store, started = FileObjectStore(root), time.perf_counter()
    for index in range(count):
        image = steel_image(seed, index, side, defect=index % DEFECT_EVERY == DEFECT_EVERY - 1)
        store.put_bytes(pool_key(index), jpeg(image), "image/jpeg")
    return round(time.perf_counter() - started, 1)


def link_pool(pool: Path, store: Path, size: int) -> None:
    """A fresh store folder holding the pool's first ``size`` images (hard links, else copies)."""
    (store / POOL_PREFIX).mkdir(parents=True)
    for index in range(size):
        source, target = pool / pool_key(index), store / pool_key(index)
        try:
            os.link(source, target)
        except OSError:
            shutil.copyfile(source, target)


def write_fit_normals(root: Path, count: int, side: int, seed: int) -> None:
    """``count`` defect-free images of the same kind under ``normals/``, for the ToCoAD fit."""
    store = FileObjectStore(root)
    for index in range(count):
        image = steel_image(seed, index, side, defect=False, stream=_FIT_STREAM)
        store.put_bytes(f"{FIT_PREFIX}n{index:04d}.jpg", jpeg(image), "image/jpeg")
