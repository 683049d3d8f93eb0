"""Shared helpers of the anomaly_map service and API tests (no tests here).

The tiny CLIP (tests/fixtures/tiny-vit.json, random weights) is loaded once per process and
shared by every engine; each test gets its own store and therefore its own caches.
"""

from __future__ import annotations

import io
from functools import cache
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image

from services.anomaly_map.config import AnomalyMapSettings
from services.anomaly_map.runtime.clip import ScorerSet, load_scorers
from services.anomaly_map.runtime.engine import MapEngine
from services.anomaly_map.stores.categories import CategorySpec, CategoryStore
from shared.config import CommonSettings, PathSettings
from shared.imaging.intake import image_limits
from shared.storage.base import ObjectStore

FIXTURES = Path(__file__).resolve().parents[2] / "fixtures"
TINY = "tiny-vit"


def make_settings(tmp: Path, **overrides: Any) -> AnomalyMapSettings:
    """Settings for the tiny random-weight model, all state under ``tmp``."""
    common = overrides.pop("common", None) or CommonSettings(paths=PathSettings(home=tmp / "home"))
    values: dict[str, Any] = {
        "common": common,
        "clip_model": TINY,
        "allow_random_weights": True,
        "device": "cpu",
        "extra_model_config_dir": FIXTURES / "tiny-vit.json",
        "max_batch_size": 4,
    }
    values.update(overrides)
    return AnomalyMapSettings(**values)


@cache
def tiny_scorers() -> ScorerSet:
    import torch

    torch.set_num_threads(1)
    return load_scorers(make_settings(Path("/nonexistent-home")))


def make_engine(settings: AnomalyMapSettings, store: ObjectStore) -> MapEngine:
    """An engine on the shared tiny scorers (same signature as ``build_engine``)."""
    return MapEngine(
        tiny_scorers(),
        CategoryStore(store),
        limits=image_limits(settings),
        max_pending=settings.max_pending,
    )


def image_bytes(height: int = 48, width: int = 64, seed: int = 0, fmt: str = "PNG") -> bytes:
    pixels = np.random.default_rng(seed).integers(0, 256, (height, width, 3), dtype=np.uint8)
    buffer = io.BytesIO()
    Image.fromarray(pixels).save(buffer, fmt)
    return buffer.getvalue()


def mask_bytes(height: int, width: int, box: tuple[int, int, int, int] | None) -> bytes:
    mask = np.zeros((height, width), dtype=np.uint8)
    if box is not None:
        y0, x0, y1, x1 = box
        mask[y0:y1, x0:x1] = 255
    buffer = io.BytesIO()
    Image.fromarray(mask).save(buffer, "PNG")
    return buffer.getvalue()


def small_spec(**overrides: Any) -> CategorySpec:
    """A category with one extra normal and one extra anomalous state (few prompts, fast)."""
    values: dict[str, Any] = {
        "map": "metal surface",
        "good": ["{} without holes"],
        "defect": ["{} with a crack defect, it appears as a thin dark line"],
    }
    values.update(overrides)
    return CategorySpec(**values)
