"""Start and supervise the suite's processes for ``agssp up`` (the embedded default)."""

from __future__ import annotations

import logging
import os
import signal
import subprocess
import sys
import time
from collections.abc import Sequence
from dataclasses import dataclass, field

log = logging.getLogger(__name__)


def console_env(host: str, ports: dict[str, int]) -> dict[str, str]:
    """``CONSOLE_<SERVICE>_URL`` variables pointing the console at the APIs ``up`` started."""
    return {f"CONSOLE_{name.upper()}_URL": f"http://{host}:{port}" for name, port in ports.items()}


def pipeline_env(host: str, ports: dict[str, int]) -> dict[str, str]:
    """``PIPELINE_<SERVICE>_URL`` variables pointing the pipeline at the APIs ``up`` started."""
    return {f"PIPELINE_{name.upper()}_URL": f"http://{host}:{port}" for name, port in ports.items()}


@dataclass
class Child:
    name: str
    argv: list[str]
    proc: subprocess.Popen[bytes] | None = None


def serve_argv(service: str, host: str, port: int) -> list[str]:
    return [
        sys.executable,
        "-m",
        "agssp.main",
        "serve",
        service,
        "--host",
        host,
        "--port",
        str(port),
    ]


def worker_argv(queues: Sequence[str]) -> list[str]:
    return [sys.executable, "-m", "agssp.main", "worker", *queues]


def start(children: Sequence[Child], env: dict[str, str]) -> None:
    for child in children:
        _spawn(child, env)


def _spawn(child: Child, env: dict[str, str]) -> None:
    # Each child gets its own process group so one Ctrl-C stops them in order.
    child.proc = subprocess.Popen(child.argv, env=env, start_new_session=True)
    log.info("started %s (pid %s)", child.name, child.proc.pid)


def stop(children: Sequence[Child], grace_s: float = 30.0) -> None:
    for child in children:
        if child.proc and child.proc.poll() is None:
            os.killpg(child.proc.pid, signal.SIGTERM)
    deadline = time.monotonic() + grace_s
    for child in children:
        if child.proc is None:
            continue
        try:
            child.proc.wait(timeout=max(0.1, deadline - time.monotonic()))
        except subprocess.TimeoutExpired:
            os.killpg(child.proc.pid, signal.SIGKILL)


@dataclass
class Backoff:
    """Restart delays: ``first_s`` doubling up to ``max_s``; reset after ``stable_s`` up."""

    first_s: float = 1.0
    max_s: float = 30.0
    stable_s: float = 60.0


@dataclass
class _Restarts:
    """Per-child restart bookkeeping for ``supervise``."""

    delay_s: dict[str, float] = field(default_factory=dict)
    due_at: dict[str, float] = field(default_factory=dict)
    started_at: dict[str, float] = field(default_factory=dict)
    count: dict[str, int] = field(default_factory=dict)


def _check_child(
    child: Child, env: dict[str, str], backoff: Backoff, state: _Restarts, now: float
) -> None:
    """Schedule a restart for an exited child, or restart it once its delay has passed."""
    name = child.name
    if child.proc is None or child.proc.poll() is None:
        if now - state.started_at.get(name, now) >= backoff.stable_s:
            state.delay_s.pop(name, None)  # up long enough: the next crash restarts quickly
        return
    if name not in state.due_at:
        delay = state.delay_s.get(name, backoff.first_s)
        state.due_at[name] = now + delay
        state.delay_s[name] = min(backoff.max_s, delay * 2)
        log.error(
            "%s exited with %s; restarting it in %.1f s (the others keep serving)",
            name,
            child.proc.returncode,
            delay,
        )
        return
    if now >= state.due_at[name]:
        del state.due_at[name]
        _spawn(child, env)
        state.started_at[name] = now
        state.count[name] = state.count.get(name, 0) + 1
        log.warning("restarted %s (restart %d)", name, state.count[name])


def supervise(
    children: Sequence[Child],
    env: dict[str, str] | None = None,
    backoff: Backoff | None = None,
    poll_s: float = 0.5,
) -> int:
    """Keep every child running until the user interrupts; then stop everything.

    A child that exits is restarted after a back-off delay (doubling per crash, reset once
    it stayed up ``stable_s``); the other children are left alone, so a crashed worker never
    takes ``/detect`` down.
    """
    stop_now = {"flag": False}

    def _interrupt(signum: int, frame: object) -> None:
        stop_now["flag"] = True

    signal.signal(signal.SIGINT, _interrupt)
    signal.signal(signal.SIGTERM, _interrupt)
    child_env = dict(os.environ) if env is None else env
    backoff = backoff or Backoff()
    state = _Restarts()
    start_time = time.monotonic()
    for child in children:
        state.started_at[child.name] = start_time
    while not stop_now["flag"]:
        now = time.monotonic()
        for child in children:
            _check_child(child, child_env, backoff, state, now)
        time.sleep(poll_s)
    stop(children)
    return 0
