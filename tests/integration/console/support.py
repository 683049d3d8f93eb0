"""Constants, data and types shared by the console's browser fixtures and tests."""

from __future__ import annotations

import io
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image

from shared.storage.base import ObjectStore
from tests.integration.suite import ROOT, Proc, SuiteEnv

CHROMIUM = os.environ.get("AGSSP_TEST_CHROMIUM", "/usr/bin/chromium")
SCREENSHOTS = Path(os.environ.get("AGSSP_SCREENSHOT_DIR", ROOT / "var" / "screenshots" / "console"))
VIEWPORT = {"width": 1280, "height": 800}
MODEL = "console-det"
DATASET = "console-labelled"
JOB_IMAGES = 40  # one per batch (ANOMALY_MAP_MAX_BATCH_SIZE=1): the job lasts several polls
SIZE = 96
LOOPBACK = {"127.0.0.1", "localhost", "::1", "[::1]"}
CATEGORY = {
    "map": "steel surface",
    "good": ["{} without any defect"],
    "defect": ["{} with a scratch, a bright thin line"],
}


def steel_png(seed: int, size: int = SIZE) -> bytes:
    """A grey noisy plate with one bright rectangle (a synthetic defect)."""
    rng = np.random.default_rng(seed)
    image = np.repeat(rng.integers(20, 70, (size, size, 1), dtype=np.uint8), 3, axis=2)
    x, y = (int(v) for v in rng.integers(4, size // 2, 2))
    image[y : y + size // 4, x : x + size // 6] = 230
    buffer = io.BytesIO()
    Image.fromarray(image).save(buffer, "PNG")
    return buffer.getvalue()


@dataclass
class Suite:
    urls: dict[str, str]
    store: ObjectStore
    procs: dict[str, Proc]
    senv: SuiteEnv
    tmp: Path

    @property
    def console(self) -> str:
        return self.urls["console"]

    def tails(self) -> str:
        return "\n".join(f"--- {name}\n{proc.tail(15)}" for name, proc in self.procs.items())


@dataclass
class Offline:
    """Requests the page tried to send off loopback (each was aborted)."""

    blocked: list[str] = field(default_factory=list)


def screenshot(page: Any, name: str) -> Path:
    """Save a 1280x800 screenshot under SCREENSHOTS (listed in the test report)."""
    SCREENSHOTS.mkdir(parents=True, exist_ok=True)
    path = SCREENSHOTS / f"{name}.png"
    page.screenshot(path=str(path))
    return path
