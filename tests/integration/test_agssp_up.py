"""``agssp up`` runs the whole suite with no Redis or S3 server (the embedded default)."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import urllib.request
from pathlib import Path

import pytest

from tests.integration.suite import ROOT, wait_for
from tests.servers import free_port

pytestmark = pytest.mark.timeout(180)
SERVICES = ("anomaly_map", "pretrain", "finetune", "inference")


def _json(url: str) -> dict[str, object]:
    with urllib.request.urlopen(url, timeout=5) as response:
        return dict(json.loads(response.read()))


def _answers(url: str) -> bool:
    try:
        return _json(url)["status"] == "ok"
    except OSError:
        return False


def _base_port() -> int:
    while True:
        base = free_port()
        if base < 60000 and all(_port_free(base + i) for i in range(4)):
            return base


def _port_free(port: int) -> bool:
    import socket

    with socket.socket() as sock:
        return sock.connect_ex(("127.0.0.1", port)) != 0


def test_up_serves_all_four_apis_and_runs_a_job_without_servers(tmp_path: Path) -> None:
    # given an environment with no broker or S3 configured
    env = {k: v for k, v in os.environ.items() if not k.startswith(("REDIS_", "S3_", "STORAGE_"))}
    env.update(AGSSP_HOME=str(tmp_path / "home"), JOBS_HEARTBEAT_S="1", PYTHONUNBUFFERED="1")
    base = _base_port()
    log = (tmp_path / "up.log").open("wb")
    proc = subprocess.Popen(
        [sys.executable, "-m", "shared.cli.main", "up", "--base-port", str(base)],
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
                f"{service} did not answer:\n{(tmp_path / 'up.log').read_text()[-3000:]}",
            )
            assert _json(f"http://127.0.0.1:{base + i}/healthz")["service"] == service
        # and a job runs through the embedded broker and the local-folder store
        job_id = subprocess.run(
            [
                sys.executable,
                "-m",
                "shared.cli.main",
                "jobs",
                "selftest",
                "--steps",
                "2",
                "--step-s",
                "0.1",
            ],
            env=env,
            cwd=ROOT,
            check=True,
            capture_output=True,
            text=True,
        ).stdout.strip()
        job_url = f"http://127.0.0.1:{base + 1}/v1/jobs/{job_id}"
        wait_for(lambda: _json(job_url)["state"] == "SUCCEEDED", 60, "selftest job did not run")
    finally:
        os.killpg(proc.pid, signal.SIGTERM)
        proc.wait(timeout=60)
        log.close()
    assert (tmp_path / "home" / "store" / "jobs" / job_id / "job.json").is_file()
