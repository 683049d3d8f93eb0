"""Process-wide decode bounds for API processes: a pixel cap and an in-flight pixel budget.

A 47 KB PNG can declare 7000x7000 pixels; eight decoded at once took an inference process
from 224 MB to 1.7 GB. The byte cap cannot see that, so an API process bounds decoding by
pixels: each decode reserves width x height from a shared budget (read from the header,
before any pixel is decoded) and a request that finds the budget full is answered 503 with
``Retry-After`` instead of waiting in memory. When the last decode of a burst finishes, the
C allocator is asked to hand freed pages back to the system (glibc ``malloc_trim``).

Bounds apply inside :func:`active` (the API middleware wraps every request in it); worker
processes decode training data one at a time and keep only the per-call ``ImageLimits``.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import logging
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from contextvars import ContextVar
from dataclasses import dataclass

from shared.errors import UnavailableError

log = logging.getLogger(__name__)

TRIM_AFTER_PIXELS = 4_000_000  # bursts smaller than this are not worth a trim


@dataclass(frozen=True)
class DecodeBounds:
    """``max_pixels``: largest image this process decodes; ``budget_pixels``: in flight."""

    max_pixels: int
    budget_pixels: int
    retry_after_s: int = 1

    def __post_init__(self) -> None:
        if self.max_pixels <= 0 or self.budget_pixels <= 0:
            raise ValueError("max_pixels and budget_pixels must be positive")


class PixelBudget:
    """Reserve pixels for one decode; refuse at once (503) when the budget is full."""

    def __init__(self, bounds: DecodeBounds) -> None:
        # One image of the full cap must always fit, or it could never be decoded.
        self.bounds = bounds
        self.total = max(bounds.budget_pixels, bounds.max_pixels)
        self.in_flight = 0
        self._burst = 0
        self._lock = threading.Lock()

    @contextmanager
    def reserve(self, pixels: int) -> Iterator[None]:
        """Hold ``pixels`` of the budget while the block runs.

        Raises:
            UnavailableError: ``decode_budget_full`` (503 + Retry-After) when they do not fit.
        """
        with self._lock:
            if self.in_flight + pixels > self.total:
                raise UnavailableError(
                    f"too many image pixels are being decoded right now (budget "
                    f"{self.total} pixels); retry shortly",
                    code="decode_budget_full",
                    retry_after_s=self.bounds.retry_after_s,
                )
            self.in_flight += pixels
            self._burst += pixels
        try:
            yield
        finally:
            self._release(pixels)

    def _release(self, pixels: int) -> None:
        with self._lock:
            self.in_flight -= pixels
            trim = self.in_flight == 0 and self._burst >= TRIM_AFTER_PIXELS
            if self.in_flight == 0:
                self._burst = 0
        if trim:
            release_free_memory()


_current: ContextVar[PixelBudget | None] = ContextVar("agssp_pixel_budget", default=None)


@contextmanager
def active(budget: PixelBudget | None) -> Iterator[None]:
    """Make ``budget`` the one :func:`current` returns in this context (one request).

    A context variable, not a global: it follows the request into ``asyncio.to_thread`` and
    Starlette's thread pool, and two apps in one process (tests) never share bounds.
    """
    token = _current.set(budget)
    try:
        yield
    finally:
        _current.reset(token)


def current() -> PixelBudget | None:
    """The budget of the request being served, or ``None`` outside an API request."""
    return _current.get()


def _load_libc() -> ctypes.CDLL | None:
    name = ctypes.util.find_library("c")
    try:
        libc = ctypes.CDLL(name) if name else None
    except OSError:
        return None
    return libc if libc is not None and hasattr(libc, "malloc_trim") else None


_LIBC = _load_libc()


def release_free_memory() -> bool:
    """Return freed heap pages to the OS (glibc only); True when a trim ran."""
    if _LIBC is None:
        return False
    try:
        _LIBC.malloc_trim(0)
    except OSError:  # pragma: no cover - a libc without a working malloc_trim
        log.debug("malloc_trim failed", exc_info=True)
        return False
    return True
