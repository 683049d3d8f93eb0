"""When waiting for batch-mates pays: measure a detector's batch speed-up once, at load.

Waiting up to ``max_queue_delay_ms`` for more requests only helps when one call on B images
is clearly cheaper than B calls on one; on small CPUs it often is not (measured: 10.17 vs
10.24 req/s for YOLOv8n on 2 cores), and then the wait is pure latency. Requests that queue
while a batch runs are still batched together, without any wait.
"""

from __future__ import annotations

import time
from collections.abc import Callable

import numpy as np

from services.inference.ml.detections import Detector

MIN_GAIN = 1.1  # a batch must be >= 10 % cheaper per image for a wait to pay
PAD_VALUE = 114


def measure_batch_gain(
    detector: Detector, imgsz: tuple[int, int], batch: int, *, repeats: int = 2
) -> float:
    """Per-image speed of one ``batch``-image call over ``batch`` single calls (best of runs).

    Args:
        detector: A loaded detector (called from the thread that owns it).
        imgsz: Network input (height, width); grey frames of that size are timed.
        batch: Batch size compared with 1.
        repeats: Timed runs of each; the fastest counts (the least disturbed by neighbours).

    Returns:
        ``time(1) * batch / time(batch)``; 1.0 when ``batch`` is 1.
    """
    if batch <= 1:
        return 1.0
    image = np.full((*imgsz, 3), PAD_VALUE, np.uint8)
    single = _best(lambda: detector.detect([image]), repeats + 1)
    many = _best(lambda: detector.detect([image] * batch), repeats)
    return single * batch / max(many, 1e-9)


def _best(call: Callable[[], object], runs: int) -> float:
    best = float("inf")
    for _ in range(runs):
        started = time.perf_counter()
        call()
        best = min(best, time.perf_counter() - started)
    return best


def queue_delay_ms(configured_ms: float, gain: float | None) -> float:
    """The wait to use: the configured one when batching was measured to pay, else none."""
    if gain is None or gain >= MIN_GAIN:
        return configured_ms
    return 0.0
