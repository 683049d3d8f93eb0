"""A real uvicorn server on loopback closes connections whose headers never end or whose
body stops, and still serves a normal client; the closing is one INFO line."""

from __future__ import annotations

import socket
import threading
import time
from collections.abc import Iterator

import pytest
import uvicorn
from fastapi import FastAPI, Request

from shared.http.slow_clients import guarded_protocol
from tests.servers import free_port

pytestmark = pytest.mark.unit
HEADER_S, BODY_S = 0.5, 0.5


@pytest.fixture(scope="module", params=["httptools", "h11"])
def server(request: pytest.FixtureRequest) -> Iterator[int]:
    app = FastAPI()

    @app.post("/echo")
    async def echo(request: Request) -> dict[str, int]:
        return {"size": len(await request.body())}

    port = free_port()
    config = uvicorn.Config(
        app, host="127.0.0.1", port=port, log_config=None, lifespan="off",
        http=guarded_protocol(HEADER_S, BODY_S, request.param),
    )  # fmt: skip
    runner = uvicorn.Server(config)
    thread = threading.Thread(target=runner.run, daemon=True)
    thread.start()
    deadline = time.monotonic() + 10
    while not runner.started and time.monotonic() < deadline:
        time.sleep(0.05)
    yield port
    runner.should_exit = True
    thread.join(timeout=10)


def _closed_within(sock: socket.socket, seconds: float) -> bool:
    """Whether the server closes the connection (recv gives b"") within ``seconds``."""
    sock.settimeout(seconds)
    try:
        while True:
            data = sock.recv(4096)
            if not data:
                return True
    except (TimeoutError, ConnectionResetError):
        return False


def test_headers_that_trickle_past_the_limit_are_cut(server: int) -> None:
    with socket.create_connection(("127.0.0.1", server)) as sock:
        sock.sendall(b"POST /echo HTTP/1.1\r\nHost: x\r\n")
        for _ in range(3):  # a byte now and then does not buy more time
            time.sleep(0.2)
            sock.sendall(b"X-A: b\r\n")
        assert _closed_within(sock, 2.0)


def test_a_body_that_stops_is_cut(server: int) -> None:
    with socket.create_connection(("127.0.0.1", server)) as sock:
        sock.sendall(b"POST /echo HTTP/1.1\r\nHost: x\r\nContent-Length: 1000\r\n\r\n" + b"a" * 10)
        assert _closed_within(sock, 2.0)


def test_a_slow_but_steady_body_and_a_normal_client_are_served(server: int) -> None:
    with socket.create_connection(("127.0.0.1", server)) as sock:
        sock.sendall(b"POST /echo HTTP/1.1\r\nHost: x\r\nContent-Length: 40\r\n\r\n")
        for _ in range(4):  # each pause shorter than the body limit, the total longer
            time.sleep(0.3)
            sock.sendall(b"a" * 10)
        sock.settimeout(5)
        answer = sock.recv(4096)
    assert answer.startswith(b"HTTP/1.1 200")
    assert answer.endswith(b'{"size":40}')
