"""``agssp up`` runs the whole suite with no Redis or S3 server (the embedded default)."""

from __future__ import annotations

import json
import os
import random
import re
import signal
import socket
import subprocess
import sys
import urllib.request
from pathlib import Path

import pytest

from tests.integration.suite import ROOT, wait_for

pytestmark = pytest.mark.timeout(240)
SERVICES = ("anomaly_map", "pretrain", "finetune", "inference")


def _json(url: str) -> dict[str, object]:
    with urllib.request.urlopen(url, timeout=5) as response:
        return dict(json.loads(response.read()))


def _answers(url: str) -> bool:
    try:
        return _json(url)["status"] == "ok"
    except OSError:
        return False


def _ephemeral_range() -> tuple[int, int]:
    try:
        low, high = Path("/proc/sys/net/ipv4/ip_local_port_range").read_text().split()
        return int(low), int(high)
    except (OSError, ValueError):
        return 32768, 60999  # Linux's default


def _base_port(count: int = len(SERVICES), tries: int = 200) -> int:
    """A block of ``count`` bindable ports below the kernel's ephemeral range.

    Ports from the ephemeral range (what ``bind(0)`` hands out) collide with the suite's own
    outgoing connections (S3, Redis, HTTP clients) between the check and the child's bind.
    """
    low, _ = _ephemeral_range()
    top = max(2000, low - count - 1)
    rng = random.Random()
    for _ in range(tries):
        base = rng.randrange(max(1025, top - 10_000), top)
        if all(_bindable(base + i) for i in range(count)):
            return base
    raise AssertionError(f"no block of {count} free ports below {low}")


def _bindable(port: int) -> bool:
    with socket.socket() as sock:
        try:
            sock.bind(("127.0.0.1", port))
        except OSError:
            return False
        return True


def test_base_port_is_outside_the_ephemeral_range() -> None:
    # given the kernel's ephemeral range, when a base port is chosen
    low, _ = _ephemeral_range()
    base = _base_port()
    # then the whole block lies below it and is bindable
    assert base + len(SERVICES) - 1 < low
    assert all(_bindable(base + i) for i in range(len(SERVICES)))


def _selftest(env: dict[str, str]) -> str:
    argv = [sys.executable, "-m", "agssp.main", "jobs", "selftest", "--steps", "2"]
    done = subprocess.run(
        [*argv, "--step-s", "0.1"], env=env, cwd=ROOT, check=True, capture_output=True, text=True
    )
    return done.stdout.strip()


def _started_pid(log: Path, name: str) -> int:
    found = re.findall(rf"started {name} \(pid (\d+)\)", log.read_text(errors="replace"))
    assert found, f"no start line for {name} in:\n{log.read_text()[-3000:]}"
    return int(found[-1])


def test_up_serves_all_four_apis_and_runs_a_job_without_servers(tmp_path: Path) -> None:
    # given an environment with no broker or S3 configured
    env = {k: v for k, v in os.environ.items() if not k.startswith(("REDIS_", "S3_", "STORAGE_"))}
    env.update(AGSSP_HOME=str(tmp_path / "home"), JOBS_HEARTBEAT_S="1", PYTHONUNBUFFERED="1")
    base = _base_port(len(SERVICES) + 2)  # then the console (base + 4) and the pipeline API
    log = (tmp_path / "up.log").open("wb")
    proc = subprocess.Popen(
        [sys.executable, "-m", "agssp.main", "up", "--base-port", str(base)],
        env=env,
        cwd=ROOT,
        stdout=log,
        stderr=subprocess.STDOUT,
        start_new_session=True,
    )
    try:
        # when the suite starts, then every service answers /healthz
        for i, service in enumerate(SERVICES):
            wait_for(
                lambda i=i: _answers(f"http://127.0.0.1:{base + i}/healthz"),
                90,
                lambda service=service: (
                    f"{service} did not answer:\n{(tmp_path / 'up.log').read_text()[-3000:]}"
                ),
            )
            assert _json(f"http://127.0.0.1:{base + i}/healthz")["service"] == service
        # and a job runs through the embedded broker and the local-folder store
        job_id = _selftest(env)
        job_url = f"http://127.0.0.1:{base + 1}/v1/jobs/{job_id}"
        wait_for(lambda: _json(job_url)["state"] == "SUCCEEDED", 60, "selftest job did not run")
        # and the console reaches the APIs that up started, through its proxy
        console = f"http://127.0.0.1:{base + len(SERVICES)}"
        wait_for(lambda: _answers(f"{console}/healthz"), 60, "the console did not start")
        with urllib.request.urlopen(f"{console}/api/pretrain/v1/jobs/{job_id}", timeout=10) as r:
            assert json.loads(r.read())["state"] == "SUCCEEDED"
        # when the worker crashes, then the APIs keep serving and the worker comes back
        worker_pid = _started_pid(tmp_path / "up.log", "worker")
        os.killpg(worker_pid, signal.SIGKILL)
        wait_for(
            lambda: "restarted worker" in (tmp_path / "up.log").read_text(errors="replace"),
            30,
            lambda: f"worker not restarted:\n{(tmp_path / 'up.log').read_text()[-3000:]}",
        )
        for i in range(len(SERVICES)):
            assert _answers(f"http://127.0.0.1:{base + i}/healthz")
        second = _selftest(env)
        second_url = f"http://127.0.0.1:{base + 1}/v1/jobs/{second}"
        wait_for(lambda: _json(second_url)["state"] == "SUCCEEDED", 90, "restarted worker idle")
    finally:
        os.killpg(proc.pid, signal.SIGTERM)
        proc.wait(timeout=60)
        log.close()
    assert (tmp_path / "home" / "store" / "jobs" / job_id / "job.json").is_file()
