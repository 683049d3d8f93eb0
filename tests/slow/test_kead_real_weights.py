"""KeAD with real CLIP weights (only where they were placed in AGSSP_MODEL_DIR).

Real weights cannot be downloaded on the project's machines, so this skips there. With
ViT-B-16-plus-240 weights present it checks invariants rather than exact numbers: the map
has the architecture's grid, and a drawn scratch raises both the map inside it and the
image score (style guide §12: golden invariants for real weights).
"""

from __future__ import annotations

import os
from pathlib import Path

import cv2
import numpy as np
import pytest

from services.anomaly_map.ml.clip.backbone import ModelWeightsMissingError, load_clip
from services.anomaly_map.ml.clip.prompts import parse_category
from services.anomaly_map.ml.kead.scorer import KeadConfig, KeadModel

MODEL = "ViT-B-16-plus-240"
CATEGORY = {
    "des": {
        "good": ["{} without any scratch"],
        "defect": ["{} with scratch defect, it appears as a bright thin line"],
    },
    "map": "metal surface",
    "samples": [],
}


@pytest.fixture(scope="module")
def model() -> KeadModel:
    model_dir = Path(os.environ.get("AGSSP_MODEL_DIR", "var/agssp/models"))
    try:
        bundle = load_clip(MODEL, model_dir=model_dir, device="auto")
    except ModelWeightsMissingError as exc:
        pytest.skip(f"real {MODEL} weights are not present: {exc}")
    return KeadModel(bundle, KeadConfig())


def _surface(scratch: bool) -> np.ndarray:
    rng = np.random.default_rng(0)
    image = np.clip(rng.normal(120, 8, (240, 240, 3)), 0, 255).astype(np.uint8)
    if scratch:
        cv2.line(image, (40, 60), (200, 180), (235, 235, 235), 3)
    return image


def test_scratch_raises_the_map_and_the_score(model: KeadModel) -> None:
    # given
    text = model.text_features(parse_category("metal", CATEGORY))
    # when
    out = model.score(model.preprocess([_surface(False), _surface(True)]), text, None)
    # then
    maps = out.anomaly_map.cpu().numpy()
    assert maps.shape == (2, 15, 15)
    assert float(out.image_score[1]) > float(out.image_score[0])
    assert maps[1].max() > maps[0].max()
