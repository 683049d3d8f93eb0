"""DynamicBatcher: gathering, delay, back-pressure, error isolation, swap, shutdown."""

from __future__ import annotations

import asyncio
import threading
from collections.abc import Awaitable, Callable, Sequence
from typing import Any

import numpy as np
import pytest

from services.inference.ml.batcher import Arrivals, DynamicBatcher
from services.inference.ml.detections import DetectionRequest, DetectParams, batch_runner
from services.inference.ml.onnx_detector import OnnxDetector
from shared.errors import OverloadedError, UnavailableError

GUARD_S = 10.0  # only stops a hung test; no assertion depends on speed
BAD_ITEM = 1000  # the runner reports an error in this item's slot


class RecordingRunner:
    """Doubles its inputs, tagging results; records batches and the threads it ran on."""

    def __init__(self, tag: str = "a", gate: threading.Event | None = None) -> None:
        self.tag = tag
        self.gate = gate
        self.batches: list[list[int]] = []
        self.threads: set[int] = set()

    def __call__(self, items: Sequence[int]) -> list[tuple[str, int] | Exception]:
        if self.gate is not None:
            self.gate.wait(GUARD_S)
        self.threads.add(threading.get_ident())
        self.batches.append(list(items))
        if any(i < 0 for i in items):
            raise ValueError(f"negative item in {items}")
        return [ValueError("bad item") if i == BAD_ITEM else (self.tag, 2 * i) for i in items]


def run(scenario: Callable[[], Awaitable[Any]]) -> Any:
    async def guarded() -> Any:
        return await asyncio.wait_for(scenario(), GUARD_S)

    return asyncio.run(guarded())


def test_concurrent_submits_are_gathered_into_one_batch() -> None:
    # given
    runner = RecordingRunner()
    batcher: DynamicBatcher[int, Any] = DynamicBatcher(
        runner, max_batch_size=8, max_queue_delay_ms=1000
    )

    # when 8 callers submit at once
    async def scenario() -> list[Any]:
        results = await asyncio.gather(*(batcher.submit(i) for i in range(8)))
        await batcher.stop()
        return results

    results = run(scenario)

    # then one full batch ran (the 1 s window never had to expire), each caller got its own
    assert results[:3] == [("a", 0), ("a", 2), ("a", 4)]
    assert runner.batches == [list(range(8))]
    stats = batcher.stats()
    assert (stats.batches_run, stats.items_run, stats.batch_sizes) == (1, 8, {8: 1})


def test_with_no_request_on_its_way_a_lone_item_does_not_wait_its_delay() -> None:
    # given a delay far past the test's guard, and a gauge that counts no request coming
    runner = RecordingRunner()
    arrivals = Arrivals()
    batcher: DynamicBatcher[int, Any] = DynamicBatcher(
        runner, max_batch_size=8, max_queue_delay_ms=60_000, arrivals=arrivals
    )

    # when one camera's request is queued
    async def scenario() -> Any:
        result = await batcher.submit(3)
        await batcher.stop()
        return result

    # then it ran alone at once (waiting its delay would trip the guard)
    assert run(scenario) == ("a", 6)
    assert runner.batches == [[3]]


def test_a_queued_item_waits_for_a_request_still_on_its_way() -> None:
    # given a gauge counting one request being decoded
    runner = RecordingRunner()
    arrivals = Arrivals()
    batcher: DynamicBatcher[int, Any] = DynamicBatcher(
        runner, max_batch_size=2, max_queue_delay_ms=60_000, arrivals=arrivals
    )

    async def late_mate() -> Any:
        with arrivals.arriving():
            await asyncio.sleep(0.05)  # decoding
        return await batcher.submit(2)

    # when the first item queues while that request is still coming, then the request follows
    async def scenario() -> list[Any]:
        mate = asyncio.ensure_future(late_mate())
        await asyncio.sleep(0)  # the mate is counted before the first item queues
        assert arrivals.count == 1
        results = await asyncio.gather(batcher.submit(1), mate)
        await batcher.stop()
        return results

    # then both ran in one batch
    assert run(scenario) == [("a", 2), ("a", 4)]
    assert runner.batches == [[1, 2]]
    assert arrivals.count == 0


def test_more_items_than_max_batch_are_split() -> None:
    runner = RecordingRunner()
    batcher: DynamicBatcher[int, Any] = DynamicBatcher(
        runner, max_batch_size=4, max_queue_delay_ms=50
    )

    async def scenario() -> None:
        await asyncio.gather(*(batcher.submit(i) for i in range(10)))
        await batcher.stop()

    run(scenario)
    assert [len(b) for b in runner.batches] == [4, 4, 2]
    assert batcher.stats().batch_sizes == {4: 2, 2: 1}


def test_a_lone_item_waits_for_the_delay_then_runs_alone() -> None:
    # given a long window
    runner = RecordingRunner()
    batcher: DynamicBatcher[int, Any] = DynamicBatcher(
        runner, max_batch_size=8, max_queue_delay_ms=1000
    )

    async def scenario() -> tuple[bool, Any]:
        task = asyncio.ensure_future(batcher.submit(1))
        await asyncio.sleep(0.2)
        waiting_early = not task.done()  # well inside the 1 s window: still gathering
        result = await task
        await batcher.stop()
        return waiting_early, result

    waiting_early, result = run(scenario)

    # then it was held back for batch-mates, then ran as a batch of one
    assert waiting_early
    assert result == ("a", 2)
    assert runner.batches == [[1]]


def test_items_that_arrive_after_a_batch_closed_form_a_new_batch() -> None:
    runner = RecordingRunner()
    batcher: DynamicBatcher[int, Any] = DynamicBatcher(
        runner, max_batch_size=8, max_queue_delay_ms=1
    )

    async def scenario() -> None:
        await batcher.submit(1)
        await batcher.submit(2)
        await batcher.stop()

    run(scenario)
    assert runner.batches == [[1], [2]]


def test_a_full_queue_is_refused_with_overloaded_error() -> None:
    # given a runner held shut, one item in flight and two queued (the queue's size)
    gate = threading.Event()
    runner = RecordingRunner(gate=gate)
    batcher: DynamicBatcher[int, Any] = DynamicBatcher(
        runner, max_batch_size=1, max_queue_delay_ms=0, max_queue_size=2
    )

    async def scenario() -> tuple[OverloadedError, list[Any]]:
        accepted = [asyncio.ensure_future(batcher.submit(0))]
        while batcher.stats().in_flight == 0:
            await asyncio.sleep(0.01)
        accepted += [asyncio.ensure_future(batcher.submit(i)) for i in (1, 2)]
        await asyncio.sleep(0)
        assert batcher.stats().queue_depth == 2

        # when one more arrives
        with pytest.raises(OverloadedError) as info:
            await batcher.submit(99)
        gate.set()
        results = await asyncio.gather(*accepted)
        await batcher.stop()
        return info.value, results

    error, results = run(scenario)

    # then it is refused as 429 with a retry hint, and the accepted ones still complete
    assert error.http_status == 429
    assert error.retry_after_s == 1
    assert results == [("a", 0), ("a", 2), ("a", 4)]
    assert batcher.stats().items_rejected == 1


def test_one_failing_item_does_not_fail_its_batch_mates() -> None:
    # given a runner that raises for a whole batch containing -1 and flags BAD_ITEM per item
    runner = RecordingRunner()
    batcher: DynamicBatcher[int, Any] = DynamicBatcher(
        runner, max_batch_size=4, max_queue_delay_ms=1000
    )

    async def scenario() -> list[Any]:
        results = await asyncio.gather(
            *(batcher.submit(i) for i in [1, -1, 2, BAD_ITEM]), return_exceptions=True
        )
        await batcher.stop()
        return results

    results = run(scenario)

    # then only the two bad items fail
    assert results[0] == ("a", 2)
    assert isinstance(results[1], ValueError)
    assert "negative" in str(results[1])
    assert results[2] == ("a", 4)
    assert isinstance(results[3], ValueError)
    assert str(results[3]) == "bad item"
    assert batcher.stats().items_failed == 2


def test_swap_under_load_loses_nothing_and_applies_to_later_batches() -> None:
    # given 50 submits trickling in while the runner is swapped part-way through
    old, new = RecordingRunner("old"), RecordingRunner("new")
    batcher: DynamicBatcher[int, Any] = DynamicBatcher(
        old, max_batch_size=4, max_queue_delay_ms=2, max_queue_size=64
    )

    async def scenario() -> tuple[list[Any], Any]:
        tasks = []
        previous = None
        for i in range(50):
            tasks.append(asyncio.ensure_future(batcher.submit(i)))
            if i == 25:
                previous = batcher.swap(new)
            if i % 5 == 0:
                await asyncio.sleep(0.003)
        results = await asyncio.gather(*tasks)
        await batcher.stop()
        return results, previous

    results, previous = run(scenario)

    # then every item resolved exactly once, with its own value, by one of the two runners
    assert previous is old
    assert [value for _, value in results] == [2 * i for i in range(50)]
    served = sorted(i for b in old.batches + new.batches for i in b)
    assert served == list(range(50))
    assert old.batches
    assert new.batches
    first_new = min(i for b in new.batches for i in b)
    assert all(i < first_new for b in old.batches for i in b)


def test_runner_only_ever_runs_on_one_worker_thread() -> None:
    runner = RecordingRunner()
    batcher: DynamicBatcher[int, Any] = DynamicBatcher(
        runner, max_batch_size=2, max_queue_delay_ms=1
    )

    async def scenario() -> None:
        await asyncio.gather(*(batcher.submit(i) for i in range(9)))
        await batcher.stop()

    run(scenario)
    assert len(runner.batches) >= 5
    assert len(runner.threads) == 1
    assert threading.get_ident() not in runner.threads


def test_stop_without_drain_fails_queued_items_but_finishes_the_one_in_flight() -> None:
    # given one item running (held) and two queued
    gate = threading.Event()
    runner = RecordingRunner(gate=gate)
    batcher: DynamicBatcher[int, Any] = DynamicBatcher(
        runner, max_batch_size=1, max_queue_delay_ms=0
    )

    async def scenario() -> tuple[list[Any], BaseException | None]:
        tasks = [asyncio.ensure_future(batcher.submit(i)) for i in range(3)]
        while batcher.stats().in_flight == 0:
            await asyncio.sleep(0.01)

        # when
        stopping = asyncio.ensure_future(batcher.stop(drain=False))
        await asyncio.sleep(0.01)
        gate.set()
        await stopping
        results = await asyncio.gather(*tasks, return_exceptions=True)
        late: BaseException | None = None
        try:
            await batcher.submit(5)
        except UnavailableError as exc:
            late = exc
        return results, late

    results, late = run(scenario)

    # then
    assert results[0] == ("a", 0)
    assert all(isinstance(r, UnavailableError) for r in results[1:])
    assert isinstance(late, UnavailableError)
    assert late.http_status == 503


def test_stop_with_drain_runs_everything_queued() -> None:
    runner = RecordingRunner()
    batcher: DynamicBatcher[int, Any] = DynamicBatcher(
        runner, max_batch_size=2, max_queue_delay_ms=1000
    )

    async def scenario() -> list[Any]:
        tasks = [asyncio.ensure_future(batcher.submit(i)) for i in range(5)]
        await asyncio.sleep(0)  # let them enqueue
        await batcher.stop(drain=True)
        return list(await asyncio.gather(*tasks))

    results = run(scenario)
    assert [v for _, v in results] == [0, 2, 4, 6, 8]
    assert batcher.stats().queue_depth == 0


def test_a_cancelled_caller_is_skipped() -> None:
    gate = threading.Event()
    runner = RecordingRunner(gate=gate)
    batcher: DynamicBatcher[int, Any] = DynamicBatcher(
        runner, max_batch_size=1, max_queue_delay_ms=0
    )

    async def scenario() -> None:
        first = asyncio.ensure_future(batcher.submit(1))
        gone = asyncio.ensure_future(batcher.submit(2))
        while batcher.stats().in_flight == 0:
            await asyncio.sleep(0.01)
        gone.cancel()
        gate.set()
        await first
        await batcher.stop()

    run(scenario)
    assert runner.batches == [[1]]


def test_call_in_worker_runs_after_the_batch_in_flight() -> None:
    # given a held batch
    gate = threading.Event()
    runner = RecordingRunner(gate=gate)
    batcher: DynamicBatcher[int, Any] = DynamicBatcher(
        runner, max_batch_size=1, max_queue_delay_ms=0
    )
    order: list[str] = []

    async def scenario() -> None:
        task = asyncio.ensure_future(batcher.submit(1))
        while batcher.stats().in_flight == 0:
            await asyncio.sleep(0.01)
        closing = asyncio.ensure_future(batcher.call_in_worker(lambda: order.append("close")))
        await asyncio.sleep(0.01)
        order.append("batch released")
        gate.set()
        await asyncio.gather(task, closing)
        await batcher.stop()

    run(scenario)
    assert order == ["batch released", "close"]


def test_the_worker_takes_the_next_batch_while_the_event_loop_is_busy() -> None:
    # given one batch held in the runner and two more items queued behind it
    gate = threading.Event()
    third_ran = threading.Event()

    class Runner(RecordingRunner):
        def __call__(self, items: Sequence[int]) -> list[tuple[str, int] | Exception]:
            if items == [0]:
                gate.wait(GUARD_S)
            if items == [2]:
                third_ran.set()
            return super().__call__(items)

    runner = Runner()
    batcher: DynamicBatcher[int, Any] = DynamicBatcher(
        runner, max_batch_size=1, max_queue_delay_ms=0
    )

    async def scenario() -> tuple[bool, list[Any]]:
        tasks = [asyncio.ensure_future(batcher.submit(i)) for i in range(3)]
        while batcher.stats().in_flight == 0:
            await asyncio.sleep(0.01)

        # when the first batch ends while the loop is blocked (busy with other requests)
        gate.set()
        ran_without_loop = third_ran.wait(GUARD_S)  # blocks the loop thread on purpose
        results = await asyncio.gather(*tasks)
        await batcher.stop()
        return ran_without_loop, results

    ran_without_loop, results = run(scenario)

    # then the worker went on to the queued batches by itself; every caller got its answer
    assert ran_without_loop
    assert runner.batches == [[0], [1], [2]]
    assert results == [("a", 0), ("a", 2), ("a", 4)]


def test_call_in_worker_after_stop_is_refused() -> None:
    batcher: DynamicBatcher[int, Any] = DynamicBatcher(RecordingRunner())

    async def scenario() -> None:
        await batcher.submit(1)
        await batcher.stop()
        with pytest.raises(UnavailableError):
            await batcher.call_in_worker(lambda: None)

    run(scenario)


def test_invalid_settings_are_refused() -> None:
    with pytest.raises(ValueError, match="max_batch_size"):
        DynamicBatcher(RecordingRunner(), max_batch_size=0)


def test_batcher_serves_an_onnx_detector(yolo_files: Any, parity_images: list[np.ndarray]) -> None:
    # given the real detector behind the batcher, plus one bad request among good ones
    detector = OnnxDetector(yolo_files.dynamic_onnx, intra_op_threads=1)
    batcher: DynamicBatcher[DetectionRequest, Any] = DynamicBatcher(
        batch_runner(detector), max_batch_size=4, max_queue_delay_ms=1000
    )
    params = DetectParams(conf=0.1)
    requests = [DetectionRequest(im, params) for im in parity_images[:3]]
    bad = DetectionRequest(np.zeros((5, 5, 3), np.float32), params)  # type: ignore[arg-type]

    async def scenario() -> list[Any]:
        results = await asyncio.gather(
            *(batcher.submit(r) for r in [*requests, bad]), return_exceptions=True
        )
        await batcher.stop()
        return results

    results = run(scenario)

    # then the good ones equal a direct call; the bad one alone fails
    direct = detector.detect([r.image for r in requests], params)
    for got, want in zip(results[:3], direct, strict=True):
        np.testing.assert_allclose(got.boxes, want.boxes, atol=1e-3)
        np.testing.assert_array_equal(got.class_ids, want.class_ids)
    assert type(results[3]).__name__ == "InvalidInputError"
