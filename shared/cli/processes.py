"""Start and supervise the suite's processes for ``agssp up`` (the embedded default)."""

from __future__ import annotations

import logging
import os
import signal
import subprocess
import sys
import time
from collections.abc import Sequence
from dataclasses import dataclass

log = logging.getLogger(__name__)

SERVICES = ("anomaly_map", "pretrain", "finetune", "inference")
DEFAULT_PORTS = {"anomaly_map": 8001, "pretrain": 8002, "finetune": 8003, "inference": 8004}


@dataclass
class Child:
    name: str
    argv: list[str]
    proc: subprocess.Popen[bytes] | None = None


def serve_argv(service: str, host: str, port: int) -> list[str]:
    return [
        sys.executable,
        "-m",
        "shared.cli.main",
        "serve",
        service,
        "--host",
        host,
        "--port",
        str(port),
    ]


def worker_argv(queues: Sequence[str]) -> list[str]:
    return [sys.executable, "-m", "shared.cli.main", "worker", *queues]


def start(children: Sequence[Child], env: dict[str, str]) -> None:
    for child in children:
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


def supervise(children: Sequence[Child]) -> int:
    """Wait until a child exits or the user interrupts; then stop everything."""
    stop_now = {"flag": False}

    def _interrupt(signum: int, frame: object) -> None:
        stop_now["flag"] = True

    signal.signal(signal.SIGINT, _interrupt)
    signal.signal(signal.SIGTERM, _interrupt)
    code = 0
    while not stop_now["flag"]:
        for child in children:
            if child.proc and child.proc.poll() is not None:
                log.error(
                    "%s exited with %s; stopping the suite", child.name, child.proc.returncode
                )
                code = child.proc.returncode or 1
                stop_now["flag"] = True
        time.sleep(0.5)
    stop(children)
    return code
