"""Close connections that send a request too slowly: headers that never end, a body that stops.

uvicorn times out idle keep-alive connections but not a request in progress, so a client that
sends half its headers (or half a body) holds a connection and its buffers for ever; a
thousand of them hold a service. ``guarded_protocol`` returns uvicorn's HTTP protocol class
(httptools when installed, else h11) with two timers:

* **headers**: from the first byte of a request (or the connection) until its headers are
  complete, at most ``header_timeout_s``, however the bytes trickle in;
* **body**: while a request body is unfinished, at most ``body_idle_s`` between two
  arrivals. While uvicorn has paused reading (the app has not consumed what came), the
  client cannot send, so the timer waits for the app instead of closing.

On expiry the connection is closed and one INFO line says why; an app reading that body sees
a disconnect. Timings come from ``HTTP_HEADER_TIMEOUT_S`` (30 s) and ``HTTP_BODY_IDLE_S``
(60 s), nginx's order of magnitude: generous to a slow network, fatal to a slowloris.
"""

from __future__ import annotations

import asyncio
import logging
from typing import Any

from uvicorn.protocols.http.h11_impl import H11Protocol

log = logging.getLogger(__name__)


class _Guard:
    """The timers, mixed into a uvicorn protocol class (which provides the attributes used)."""

    header_timeout_s: float = 30.0
    body_idle_s: float = 60.0
    transport: asyncio.Transport
    loop: asyncio.AbstractEventLoop
    cycle: Any
    flow: Any
    client: tuple[str, int] | None

    _timer: asyncio.TimerHandle | None = None
    _phase: str | None = None  # "headers" or "body" while a timer runs

    def _in_request(self) -> bool:
        return self.cycle is not None and not self.cycle.response_complete

    def _watch(self) -> None:
        """Arm, re-arm or drop the timer after the protocol handled what arrived."""
        if not self._in_request():
            if self._phase != "headers":  # a new request started: its header clock starts
                self._arm("headers", self.header_timeout_s)
        elif getattr(self.cycle, "more_body", False):
            self._arm("body", self.body_idle_s)  # every arrival restarts the idle clock
        else:
            self._disarm()  # the request is in; the app's time is not the client's

    def _arm(self, phase: str, seconds: float) -> None:
        self._disarm()
        self._phase = phase
        self._timer = self.loop.call_later(seconds, self._expired, phase, seconds)

    def _disarm(self) -> None:
        if self._timer is not None:
            self._timer.cancel()
        self._timer, self._phase = None, None

    def _expired(self, phase: str, seconds: float) -> None:
        self._timer = None
        if phase == "body" and self.flow is not None and self.flow.read_paused:
            self._arm(phase, seconds)  # the app is behind, not the client
            return
        self._phase = None
        who = f"{self.client[0]}:{self.client[1]}" if self.client else "a client"
        log.info("closing the connection of %s: no complete request %s within %.0f s",
                 who, phase, seconds)  # fmt: skip
        self.transport.close()


def _guarded(base: type, header_s: float, body_s: float) -> type:
    class Guarded(_Guard, base):  # type: ignore[misc, valid-type]
        header_timeout_s = header_s
        body_idle_s = body_s

        def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]
            super().connection_made(transport)
            self._arm("headers", self.header_timeout_s)

        def data_received(self, data: bytes) -> None:
            super().data_received(data)
            if not self.transport.is_closing():
                self._watch()

        def on_response_complete(self) -> None:
            super().on_response_complete()
            self._disarm()  # uvicorn's keep-alive timer covers the idle connection

        def connection_lost(self, exc: Exception | None) -> None:
            self._disarm()
            super().connection_lost(exc)

    Guarded.__name__ = f"Guarded{base.__name__}"
    return Guarded


def guarded_protocol(header_timeout_s: float, body_idle_s: float, base: str = "auto") -> type:
    """uvicorn's HTTP/1.1 protocol (``auto``: httptools when installed, else ``h11``) with the
    two timers set."""
    chosen: type = H11Protocol
    if base != "h11":
        try:
            from uvicorn.protocols.http.httptools_impl import HttpToolsProtocol

            chosen = HttpToolsProtocol
        except ImportError:  # httptools is an optional uvicorn extra
            if base == "httptools":
                raise
    return _guarded(chosen, header_timeout_s, body_idle_s)
