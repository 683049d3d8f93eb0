"""Real servers for integration tests: moto's S3 and redis-server as subprocesses on loopback.

``AGSSP_TEST_S3_ENDPOINT`` / ``AGSSP_TEST_REDIS_URL`` select already running servers instead.
"""

from __future__ import annotations

import atexit
import contextlib
import os
import shutil
import socket
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from types import TracebackType

import pytest

S3_ENV = "AGSSP_TEST_S3_ENDPOINT"
REDIS_ENV = "AGSSP_TEST_REDIS_URL"
READY_TIMEOUT_S = 30.0
STOP_TIMEOUT_S = 10.0


def free_port() -> int:
    """A TCP port on 127.0.0.1 that was free a moment ago."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


@dataclass
class ServerHandle:
    """A test server: ``url`` to reach it, ``stop``/``restart`` on the same port, ``close``.

    Cleans up through ``close``, the context manager and ``atexit``. Handles of external
    servers (from the environment variables) are not ``managed`` and can not be stopped.
    """

    name: str
    url: str
    port: int
    command: list[str] | None = None
    ready: Callable[[], bool] = lambda: True
    process: subprocess.Popen[bytes] | None = field(default=None, repr=False)
    log_path: Path | None = None

    @property
    def managed(self) -> bool:
        """True when this handle started the server (and so may stop it)."""
        return self.command is not None

    @property
    def running(self) -> bool:
        return self.process is not None and self.process.poll() is None

    def start(self, timeout_s: float = READY_TIMEOUT_S) -> ServerHandle:
        """Start the process and wait (bounded) until it answers."""
        if self.command is None or self.running:
            return self
        if self.log_path is None:
            self.log_path = Path(tempfile.mkdtemp(prefix=f"{self.name}-")) / "server.log"
        with open(self.log_path, "ab") as log:
            self.process = subprocess.Popen(self.command, stdout=log, stderr=subprocess.STDOUT)
        self._wait_ready(timeout_s)
        return self

    def _wait_ready(self, timeout_s: float) -> None:
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            if not self.running:
                raise RuntimeError(f"{self.name} exited during start-up:\n{self.log_tail()}")
            if self.ready():
                return
            time.sleep(0.1)
        self.stop()
        raise RuntimeError(f"{self.name} not ready after {timeout_s} s:\n{self.log_tail()}")

    def stop(self) -> None:
        """Terminate the server (kill after a grace period); a no-op when not running."""
        if self.command is None:
            raise RuntimeError(f"{self.name} at {self.url} was started outside the tests")
        process, self.process = self.process, None
        if process is None or process.poll() is not None:
            return
        process.terminate()
        try:
            process.wait(STOP_TIMEOUT_S)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait(STOP_TIMEOUT_S)

    def restart(self, timeout_s: float = READY_TIMEOUT_S) -> ServerHandle:
        """Stop, then start again on the same port (in-memory state is lost)."""
        self.stop()
        return self.start(timeout_s)

    def close(self) -> None:
        """Stop a managed server and remove its log; external servers are left alone."""
        if not self.managed:
            return
        self.stop()
        if self.log_path is not None:
            shutil.rmtree(self.log_path.parent, ignore_errors=True)
            self.log_path = None

    def log_tail(self, lines: int = 30) -> str:
        if self.log_path is None or not self.log_path.is_file():
            return "(no log)"
        return "\n".join(self.log_path.read_text(errors="replace").splitlines()[-lines:])

    def __enter__(self) -> ServerHandle:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()


def _http_ready(url: str) -> Callable[[], bool]:
    def ready() -> bool:
        try:
            with urllib.request.urlopen(url, timeout=1.0):
                return True
        except urllib.error.HTTPError:
            return True  # any HTTP answer means the server is serving
        except OSError:
            return False

    return ready


def _redis_ready(port: int) -> Callable[[], bool]:
    def ready() -> bool:
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=1.0) as sock:
                sock.sendall(b"PING\r\n")
                return sock.recv(16).startswith(b"+PONG")
        except OSError:
            return False

    return ready


def _managed(handle: ServerHandle) -> ServerHandle:
    atexit.register(handle.close)  # safety net when a fixture's teardown never runs
    try:
        return handle.start()
    except BaseException:
        handle.close()
        raise


def start_moto_s3(*, allow_external: bool = True) -> ServerHandle:
    """moto's standalone S3 server (``python -m moto.server``) on a free loopback port.

    Args:
        allow_external: use ``$AGSSP_TEST_S3_ENDPOINT`` when set (outage tests pass False).
    """
    if allow_external and os.environ.get(S3_ENV):
        url = os.environ[S3_ENV].rstrip("/")
        return ServerHandle("s3", url, port=int(url.rsplit(":", 1)[-1]))
    port = free_port()
    url = f"http://127.0.0.1:{port}"
    command = [sys.executable, "-m", "moto.server", "-H", "127.0.0.1", "-p", str(port)]
    return _managed(ServerHandle("moto-s3", url, port, command, _http_ready(url + "/")))


def start_redis(*, allow_external: bool = True) -> ServerHandle:
    """``redis-server`` without persistence on a free loopback port; skips when absent.

    Args:
        allow_external: use ``$AGSSP_TEST_REDIS_URL`` when set.
    """
    if allow_external and os.environ.get(REDIS_ENV):
        url = os.environ[REDIS_ENV]
        port = 6379
        with contextlib.suppress(ValueError):
            port = int(url.rsplit(":", 1)[-1].split("/")[0])
        return ServerHandle("redis", url, port)
    binary = shutil.which("redis-server")
    if binary is None:
        pytest.skip(
            f"redis-server is not installed (apt-get install redis-server) and {REDIS_ENV} is unset"
        )
    port = free_port()
    command = [
        binary,
        "--port",
        str(port),
        "--bind",
        "127.0.0.1",
        "--save",
        "",
        "--appendonly",
        "no",
    ]
    handle = ServerHandle("redis", f"redis://127.0.0.1:{port}/0", port, command, _redis_ready(port))
    return _managed(handle)
