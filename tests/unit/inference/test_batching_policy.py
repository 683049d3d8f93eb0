"""The batching policy: wait for batch-mates only where a batch was measured to be cheaper."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Mapping, Sequence
from pathlib import Path

import numpy as np
import pytest

from services.inference.ml.batching_policy import MIN_GAIN, measure_batch_gain, queue_delay_ms
from services.inference.ml.detections import Detections, DetectParams
from services.inference.runtime.build import build_runtime
from shared.storage.filesystem import FileObjectStore
from tests.unit.inference.serving import publish, settings_for


class CostModel:
    """A detector that sleeps ``fixed + per_image * B`` seconds per call."""

    imgsz = (32, 32)

    def __init__(self, fixed: float, per_image: float) -> None:
        self.fixed, self.per_image = fixed, per_image

    @property
    def names(self) -> Mapping[int, str]:
        return {0: "x"}

    def detect(
        self, images: Sequence[np.ndarray], params: DetectParams | Sequence[DetectParams] = ()
    ) -> list[Detections]:
        time.sleep(self.fixed + self.per_image * len(images))
        return [Detections.empty(im.shape[:2]) for im in images]


@pytest.mark.parametrize(
    ("fixed", "per_image", "pays"),
    [(0.02, 0.002, True), (0.0, 0.01, False)],  # overhead dominated vs compute bound
)
def test_the_measured_gain_says_whether_a_batch_is_cheaper(
    fixed: float, per_image: float, pays: bool
) -> None:
    gain = measure_batch_gain(CostModel(fixed, per_image), (32, 32), 4)
    assert (gain >= MIN_GAIN) is pays, gain


def test_the_configured_delay_applies_only_when_batching_pays() -> None:
    assert queue_delay_ms(5.0, 2.0) == 5.0
    assert queue_delay_ms(5.0, 1.02) == 0.0
    assert queue_delay_ms(5.0, None) == 5.0  # not measured (adaptive off): as configured


def test_a_slot_of_a_compute_bound_model_does_not_wait(tmp_path: Path) -> None:
    store = FileObjectStore(tmp_path / "store")
    publish(store, "v1", b"1")
    settings = settings_for(tmp_path, max_queue_delay_ms=50.0)

    async def scenario() -> tuple[float, float | None]:
        runtime = build_runtime(settings, store, factory=lambda _: CostModel(0.0, 0.01))
        await runtime.refresh()
        (model,) = runtime.resident()
        await runtime.close()
        return model.queue_delay_ms, model.batch_gain

    delay, gain = asyncio.run(scenario())
    assert gain is not None
    assert gain < MIN_GAIN
    assert delay == 0.0
