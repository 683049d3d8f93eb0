"""Dynamic batching for asyncio servers: gather concurrent requests into one model call.

Triton-style semantics: a batch closes when it holds ``max_batch_size`` items or when its
oldest item has waited ``max_queue_delay_ms``; the model runs in one dedicated worker thread.

A batch waits for batch-mates only while some are on their way: with an ``Arrivals`` gauge,
the oldest item waits its delay only when another request is being read or decoded; a lone
camera's request runs at once instead of paying the whole delay (measured: 5.2 ms of a
58 ms request at concurrency 1 when the delay was in use).

The worker thread forms its batches itself, from a queue shared with the event loop under a
lock: when a batch ends it takes the next one at once. Issue 25's profile (py-spy under
``wrk``) found the model thread idle 5-8 % of the time when the event loop chose the batches,
waiting for a loop busy with HTTP, decoding and JSON to wake up and hand it the next batch.
The loop now only queues items and resolves callers.
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import logging
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from typing import Any, Generic, TypeVar

from shared.errors import OverloadedError, UnavailableError

T = TypeVar("T")
R = TypeVar("R")
V = TypeVar("V")

# Returns one result per item, in order; an Exception in a slot fails only that item.
BatchFn = Callable[[Sequence[T]], Sequence[R | Exception]]

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class BatcherStats:
    """A snapshot of the counters, for metrics.

    Attributes:
        batches_run: Batch calls made (fallback single-item retries not counted).
        items_run: Items that went through a batch call.
        items_failed: Items resolved with an exception raised by the model.
        items_rejected: Submits refused because the queue was full.
        queue_depth: Items waiting now (not counting the batch in flight).
        in_flight: Items in the batch running now.
        batch_sizes: Batch size -> number of batches of that size (a histogram).
    """

    batches_run: int
    items_run: int
    items_failed: int
    items_rejected: int
    queue_depth: int
    in_flight: int
    batch_sizes: dict[int, int]


class Arrivals:
    """How many requests are on their way to a batcher (read, being decoded), not yet queued.

    The event loop counts them with ``arriving``; batchers read ``count`` from their worker
    threads (one int read, safe without the lock). One gauge may serve several batchers:
    a request for another model makes a batch wait as it would without the gauge.
    """

    def __init__(self) -> None:
        self._count = 0

    @property
    def count(self) -> int:
        """Requests on their way now."""
        return self._count

    @contextlib.contextmanager
    def arriving(self) -> Iterator[None]:
        """Count one request while its block runs (leave it before the request is queued)."""
        self._count += 1
        try:
            yield
        finally:
            self._count -= 1


@dataclass
class _Pending(Generic[T, R]):
    item: T
    future: asyncio.Future[R]
    loop: asyncio.AbstractEventLoop
    enqueued_at: float  # time.monotonic()


@dataclass
class _Call:
    fn: Callable[[], Any]
    future: asyncio.Future[Any]
    loop: asyncio.AbstractEventLoop


@dataclass
class _Counters:
    batches_run: int = 0
    items_run: int = 0
    items_failed: int = 0
    items_rejected: int = 0
    in_flight: int = 0
    batch_sizes: collections.Counter[int] = field(default_factory=collections.Counter)


class DynamicBatcher(Generic[T, R]):
    """Queue items, run them in batches on one worker thread, resolve each caller.

    The runner is only ever called from the batcher's own thread, so a model that is not
    thread-safe (ultralytics) is safe behind it. Use it from one event loop.

    Args:
        runner: Maps a batch of items to one result (or Exception) per item. If it raises,
            each item of the batch is retried alone so one bad item fails only itself.
        max_batch_size: Most items per call.
        max_queue_delay_ms: Longest time the oldest queued item waits for batch-mates.
        max_queue_size: Most items waiting; beyond it ``submit`` raises ``OverloadedError``.
        name: Names the worker thread and log lines.
        arrivals: When given, a batch waits for batch-mates only while it counts some on
            their way; without it, every batch may wait its delay.
    """

    def __init__(
        self,
        runner: BatchFn[T, R],
        *,
        max_batch_size: int = 8,
        max_queue_delay_ms: float = 5.0,
        max_queue_size: int = 256,
        name: str = "batcher",
        arrivals: Arrivals | None = None,
    ) -> None:
        if max_batch_size < 1 or max_queue_size < 1 or max_queue_delay_ms < 0:
            raise ValueError(
                "need max_batch_size >= 1, max_queue_size >= 1, max_queue_delay_ms >= 0; got "
                f"{max_batch_size}, {max_queue_size}, {max_queue_delay_ms}"
            )
        self._runner = runner
        self._max_batch = max_batch_size
        self._max_delay_s = max_queue_delay_ms / 1000.0
        self._max_queue = max_queue_size
        self._name = name
        self._arrivals = arrivals
        # One lock for everything the two threads share: the queue, the calls, the counters.
        self._cond = threading.Condition()
        self._queue: collections.deque[_Pending[T, R]] = collections.deque()
        self._calls: collections.deque[_Call] = collections.deque()
        self._counters = _Counters()
        self._thread: threading.Thread | None = None
        self._stopped: asyncio.Future[None] | None = None
        self._closing = False

    async def submit(self, item: T) -> R:
        """Queue one item and wait for its result.

        Raises:
            OverloadedError: The queue is full (HTTP 429; retry after a second).
            UnavailableError: The batcher is shutting down.
            Exception: Whatever the runner reported for this item.
        """
        loop = asyncio.get_running_loop()
        future: asyncio.Future[R] = loop.create_future()
        with self._cond:
            if self._closing:
                raise UnavailableError(f"{self._name} is shutting down", retry_after_s=1)
            if len(self._queue) >= self._max_queue:
                self._counters.items_rejected += 1
                raise OverloadedError(
                    f"{self._name} queue is full ({self._max_queue} waiting)", retry_after_s=1
                )
            self._ensure_started(loop)
            self._queue.append(_Pending(item, future, loop, time.monotonic()))
            self._cond.notify()
        return await future

    def swap(self, runner: BatchFn[T, R]) -> BatchFn[T, R]:
        """Use ``runner`` from the next batch on; queued and in-flight items are kept.

        Returns:
            The previous runner. It may still be finishing the batch in flight; to release
            it safely, do so through ``call_in_worker`` (which runs after that batch).
        """
        with self._cond:
            previous, self._runner = self._runner, runner
        return previous

    @property
    def max_queue_delay_ms(self) -> float:
        """Longest wait of the oldest queued item for batch-mates; settable (next batch on)."""
        return self._max_delay_s * 1000.0

    @max_queue_delay_ms.setter
    def max_queue_delay_ms(self, value: float) -> None:
        if value < 0:
            raise ValueError(f"max_queue_delay_ms must be >= 0, got {value}")
        with self._cond:
            self._max_delay_s = value / 1000.0
            self._cond.notify()

    async def call_in_worker(self, fn: Callable[[], V]) -> V:
        """Run ``fn`` on the worker thread, after the batch in flight (warm-up, close)."""
        loop = asyncio.get_running_loop()
        future: asyncio.Future[V] = loop.create_future()
        with self._cond:
            if self._closing:
                raise UnavailableError(f"{self._name} is shutting down", retry_after_s=1)
            self._ensure_started(loop)
            self._calls.append(_Call(fn, future, loop))
            self._cond.notify()
        return await future

    def stats(self) -> BatcherStats:
        """Current counters."""
        with self._cond:
            c = self._counters
            return BatcherStats(
                batches_run=c.batches_run,
                items_run=c.items_run,
                items_failed=c.items_failed,
                items_rejected=c.items_rejected,
                queue_depth=len(self._queue),
                in_flight=c.in_flight,
                batch_sizes=dict(c.batch_sizes),
            )

    async def stop(self, *, drain: bool = True) -> None:
        """Stop accepting items and shut the worker down.

        Args:
            drain: Run every queued item first; otherwise fail them with
                ``UnavailableError``. The batch in flight always finishes.
        """
        with self._cond:
            self._closing = True
            dropped = [] if drain else list(self._queue)
            if not drain:
                self._queue.clear()
            stopped = self._stopped
            self._cond.notify()
        for pending in dropped:
            if not pending.future.done():
                pending.future.set_exception(
                    UnavailableError(f"{self._name} shut down", retry_after_s=1)
                )
        if stopped is not None:
            await stopped  # resolved after the worker's last answers were handed over

    def _ensure_started(self, loop: asyncio.AbstractEventLoop) -> None:
        """Start the worker thread (caller holds the lock)."""
        if self._thread is None:
            self._stopped = loop.create_future()
            self._thread = threading.Thread(
                target=self._work, args=(loop, self._stopped), name=self._name, daemon=True
            )
            self._thread.start()

    # -- the worker thread ---------------------------------------------------------------
    def _work(self, loop: asyncio.AbstractEventLoop, stopped: asyncio.Future[None]) -> None:
        try:
            while True:
                job = self._next_job()
                if job is None:
                    return
                if isinstance(job, _Call):
                    _run_call(job)
                else:
                    self._run_batch(*job)
        finally:
            _hand_over(loop, _settle, stopped, None)

    def _next_job(self) -> _Call | tuple[BatchFn[T, R], list[_Pending[T, R]]] | None:
        """The next call, or the next batch once it is full or its oldest item waited
        long enough; None once closing with nothing left."""
        with self._cond:
            while True:
                if self._calls:
                    return self._calls.popleft()
                if not self._queue:
                    if self._closing:
                        return None
                    self._cond.wait()
                    continue
                # The deadline counts from the oldest item's arrival: items that queued
                # while the previous batch ran have already waited and go at once.
                remaining = self._queue[0].enqueued_at + self._max_delay_s - time.monotonic()
                if (
                    len(self._queue) < self._max_batch
                    and remaining > 0
                    and not self._closing
                    and self._mates_coming()
                ):
                    self._cond.wait(remaining)
                    continue
                batch = self._take_batch()
                if batch:
                    self._counters.in_flight = len(batch)
                    return self._runner, batch

    def _mates_coming(self) -> bool:
        """Whether waiting can fill the batch: always without a gauge, else while it counts
        requests on their way."""
        return self._arrivals is None or self._arrivals.count > 0

    def _take_batch(self) -> list[_Pending[T, R]]:
        batch: list[_Pending[T, R]] = []
        while self._queue and len(batch) < self._max_batch:
            pending = self._queue.popleft()
            if not pending.future.cancelled():  # the caller went away: skip the work
                batch.append(pending)
        return batch

    def _run_batch(self, runner: BatchFn[T, R], batch: list[_Pending[T, R]]) -> None:
        try:
            results: list[R | Exception] = _run_isolated(runner, [p.item for p in batch])
        except Exception as exc:  # never leave callers hanging
            logger.exception("%s: batch of %d failed outside the runner", self._name, len(batch))
            results = [exc] * len(batch)
        with self._cond:
            c = self._counters
            c.in_flight = 0
            c.batches_run += 1
            c.items_run += len(batch)
            c.batch_sizes[len(batch)] += 1
            c.items_failed += sum(isinstance(r, Exception) for r in results)
        by_loop: dict[asyncio.AbstractEventLoop, list[tuple[asyncio.Future[Any], Any]]] = {}
        for pending, result in zip(batch, results, strict=True):
            by_loop.setdefault(pending.loop, []).append((pending.future, result))
        for loop, answers in by_loop.items():  # one wake-up of the loop per batch
            _hand_over(loop, _settle_all, answers)


def _run_call(call: _Call) -> None:
    try:
        result: Any = call.fn()
    except Exception as exc:
        result = exc
    _hand_over(call.loop, _settle, call.future, result)


def _hand_over(loop: asyncio.AbstractEventLoop, fn: Callable[..., None], *args: Any) -> None:
    try:
        loop.call_soon_threadsafe(fn, *args)
    except RuntimeError:  # the loop is closed: nobody is waiting any more
        logger.debug("event loop closed before a batcher answer was handed over")


def _settle(future: asyncio.Future[Any], result: Any) -> None:
    """Resolve one caller (on its loop); a caller that went away is skipped."""
    if future.done():
        return
    if isinstance(result, Exception):
        future.set_exception(result)
    else:
        future.set_result(result)


def _settle_all(answers: list[tuple[asyncio.Future[Any], Any]]) -> None:
    for future, result in answers:
        _settle(future, result)


def _run_isolated(runner: BatchFn[T, R], items: list[T]) -> list[R | Exception]:
    """Run a batch; if the runner raises, retry each item alone to isolate the bad one."""
    try:
        results = list(runner(items))
        if len(results) != len(items):
            raise RuntimeError(f"runner returned {len(results)} results for {len(items)} items")
        return results
    except Exception as exc:
        if len(items) == 1:
            return [exc]
    return [_run_isolated(runner, [item])[0] for item in items]
