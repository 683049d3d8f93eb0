"""Dynamic batching for asyncio servers: gather concurrent requests into one model call.

Triton-style semantics: a batch closes when it holds ``max_batch_size`` items or when its
oldest item has waited ``max_queue_delay_ms``; the model runs in one dedicated worker thread.
"""

from __future__ import annotations

import asyncio
import collections
import logging
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Generic, TypeVar

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


@dataclass
class _Pending(Generic[T, R]):
    item: T
    future: asyncio.Future[R]
    enqueued_at: float


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
    """

    def __init__(
        self,
        runner: BatchFn[T, R],
        *,
        max_batch_size: int = 8,
        max_queue_delay_ms: float = 5.0,
        max_queue_size: int = 256,
        name: str = "batcher",
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
        self._queue: collections.deque[_Pending[T, R]] = collections.deque()
        self._counters = _Counters()
        self._executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix=name)
        self._wakeup: asyncio.Event | None = None
        self._task: asyncio.Task[None] | None = None
        self._closing = False

    async def submit(self, item: T) -> R:
        """Queue one item and wait for its result.

        Raises:
            OverloadedError: The queue is full (HTTP 429; retry after a second).
            UnavailableError: The batcher is shutting down.
            Exception: Whatever the runner reported for this item.
        """
        if self._closing:
            raise UnavailableError(f"{self._name} is shutting down", retry_after_s=1)
        if len(self._queue) >= self._max_queue:
            self._counters.items_rejected += 1
            raise OverloadedError(
                f"{self._name} queue is full ({self._max_queue} waiting)", retry_after_s=1
            )
        loop = asyncio.get_running_loop()
        self._ensure_started()
        future: asyncio.Future[R] = loop.create_future()
        self._queue.append(_Pending(item, future, loop.time()))
        assert self._wakeup is not None
        self._wakeup.set()
        return await future

    def swap(self, runner: BatchFn[T, R]) -> BatchFn[T, R]:
        """Use ``runner`` from the next batch on; queued and in-flight items are kept.

        Returns:
            The previous runner. It may still be finishing the batch in flight; to release
            it safely, do so through ``call_in_worker`` (which runs after that batch).
        """
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
        self._max_delay_s = value / 1000.0

    async def call_in_worker(self, fn: Callable[[], V]) -> V:
        """Run ``fn`` on the worker thread, after the batch in flight (warm-up, close)."""
        return await asyncio.get_running_loop().run_in_executor(self._executor, fn)

    def stats(self) -> BatcherStats:
        """Current counters."""
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
        self._closing = True
        if not drain:
            while self._queue:
                pending = self._queue.popleft()
                if not pending.future.done():
                    pending.future.set_exception(
                        UnavailableError(f"{self._name} shut down", retry_after_s=1)
                    )
        if self._task is not None and self._wakeup is not None:
            self._wakeup.set()
            await self._task
        self._executor.shutdown(wait=True)

    def _ensure_started(self) -> None:
        if self._task is None:
            self._wakeup = asyncio.Event()
            self._task = asyncio.get_running_loop().create_task(self._collect_forever())

    async def _collect_forever(self) -> None:
        assert self._wakeup is not None
        while True:
            if not self._queue:
                if self._closing:
                    return
                self._wakeup.clear()
                await self._wakeup.wait()
                continue
            await self._wait_for_batch_mates()
            batch = self._take_batch()
            if batch:
                await self._run_batch(batch)

    async def _wait_for_batch_mates(self) -> None:
        assert self._wakeup is not None
        loop = asyncio.get_running_loop()
        # The deadline counts from the oldest item's arrival: items that queued while the
        # previous batch ran have already waited and go at once.
        deadline = self._queue[0].enqueued_at + self._max_delay_s
        while len(self._queue) < self._max_batch and not self._closing:
            remaining = deadline - loop.time()
            if remaining <= 0:
                return
            self._wakeup.clear()
            try:
                await asyncio.wait_for(self._wakeup.wait(), remaining)
            except TimeoutError:
                return

    def _take_batch(self) -> list[_Pending[T, R]]:
        batch: list[_Pending[T, R]] = []
        while self._queue and len(batch) < self._max_batch:
            pending = self._queue.popleft()
            if not pending.future.cancelled():  # the caller went away: skip the work
                batch.append(pending)
        return batch

    async def _run_batch(self, batch: list[_Pending[T, R]]) -> None:
        runner = self._runner  # read once: a swap during this batch applies to the next
        items = [p.item for p in batch]
        self._counters.in_flight = len(batch)
        try:
            results = await asyncio.get_running_loop().run_in_executor(
                self._executor, lambda: _run_isolated(runner, items)
            )
        except Exception as exc:  # the executor itself failed: never leave callers hanging
            logger.exception("%s: batch of %d failed outside the runner", self._name, len(batch))
            results = [exc] * len(batch)
        finally:
            self._counters.in_flight = 0
        c = self._counters
        c.batches_run += 1
        c.items_run += len(batch)
        c.batch_sizes[len(batch)] += 1
        for pending, result in zip(batch, results, strict=True):
            if pending.future.done():
                continue
            if isinstance(result, Exception):
                c.items_failed += 1
                pending.future.set_exception(result)
            else:
                pending.future.set_result(result)


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
