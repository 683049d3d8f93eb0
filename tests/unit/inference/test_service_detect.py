"""The detect use case: model targets, class filters, timings and the annotated image."""

from __future__ import annotations

import asyncio
import io
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from PIL import Image

from services.inference.runtime.build import build_runtime
from services.inference.stores.models import ModelTarget
from services.inference.usecases.detect import (
    DetectOptions,
    DetectResult,
    class_filter,
    detect,
    target_for,
)
from shared.errors import InvalidInputError
from shared.storage.filesystem import FileObjectStore
from tests.unit.inference.serving import MODEL, FakeDetector, encode, publish, settings_for

NAMES = {0: "scratch", 1: "dent", 2: "inclusion"}


def test_class_filters_accept_names_and_ids() -> None:
    assert class_filter(["dent", "2", "dent"], NAMES) == (1, 2)
    assert class_filter(None, NAMES) is None
    assert class_filter([], NAMES) is None


@pytest.mark.parametrize("token", ["rust", "7", "-1"])
def test_unknown_classes_are_refused(token: str) -> None:
    with pytest.raises(InvalidInputError) as info:
        class_filter([token], NAMES)
    assert info.value.code == "unknown_class"


@pytest.mark.parametrize(
    ("chosen", "expected"),
    [
        ({}, None),
        ({"model": "other"}, ModelTarget("other", stage="production", fallback=True)),
        ({"version": "v7"}, ModelTarget(MODEL, version="v7")),
        ({"stage": "staging"}, ModelTarget(MODEL, stage="staging")),
    ],
)
def test_requests_name_the_default_model_unless_told_otherwise(
    tmp_path: Path, chosen: dict[str, Any], expected: ModelTarget | None
) -> None:
    options = DetectOptions(conf=0.25, iou=0.7, max_det=300, **chosen)
    assert target_for(options, settings_for(tmp_path)) == expected


def test_a_version_without_any_model_name_is_refused(tmp_path: Path) -> None:
    options = DetectOptions(conf=0.25, iou=0.7, max_det=300, version="v1")
    with pytest.raises(InvalidInputError) as info:
        target_for(options, settings_for(tmp_path, model_name=""))
    assert info.value.code == "model_name_required"


def test_detect_reports_boxes_model_and_timings_and_draws_the_png(tmp_path: Path) -> None:
    # given a served fake model and a 64x48 image
    store = FileObjectStore(tmp_path / "store")
    publish(store, "v1", b"1")
    settings = settings_for(tmp_path)
    image = np.full((48, 64, 3), 40, np.uint8)

    async def scenario() -> DetectResult:
        runtime = build_runtime(settings, store, factory=lambda _: FakeDetector())
        await runtime.refresh()
        options = DetectOptions(conf=0.25, iou=0.7, max_det=300, annotate=True)
        result = await detect(runtime, encode(image), options, settings=settings)
        await runtime.close()
        return result

    # when
    result = asyncio.run(scenario())

    # then
    (found,) = result.detections
    assert found.box_xyxy == (0.0, 0.0, 64.0, 48.0)
    assert found.box_norm == (0.0, 0.0, 1.0, 1.0)
    assert (found.class_id, found.class_name) == (1, "class1")
    assert (result.width, result.height, result.model.version) == (64, 48, "v1")
    t = result.timings
    assert min(t.decode_ms, t.queue_wait_ms, t.inference_ms) >= 0
    assert t.total_ms >= t.decode_ms + t.inference_ms
    assert result.png is not None
    drawn = np.asarray(Image.open(io.BytesIO(result.png)))
    assert drawn.shape == image.shape
    assert not np.array_equal(drawn, image)  # the box and label were drawn
