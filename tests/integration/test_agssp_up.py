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
import urllib.error
import urllib.request
from pathlib import Path

import pytest

from services.pretrain.stores.synthetic import write_synthetic_source
from shared.storage.filesystem import FileObjectStore
from tests.integration.suite import ROOT, wait_for

pytestmark = pytest.mark.timeout(240)
SERVICES = ("anomaly_map", "pretrain", "finetune", "inference")
# AGBP at its smallest: one epoch of a YOLOv8n backbone at 64 px on a dozen images.
AGBP_TINY = {
    "backbone": "yolov8n",
    "objective": "distill",
    "epochs": 1,
    "batch_size": 4,
    "input_size": 64,
    "resize_base": 64,
    "amp": False,
    "checkpoint_every": 0,
    "num_workers": 0,
}


def _json(url: str) -> dict[str, object]:
    with urllib.request.urlopen(url, timeout=5) as response:
        return dict(json.loads(response.read()))


def _post(url: str, body: dict[str, object]) -> dict[str, object]:
    request = urllib.request.Request(
        url, data=json.dumps(body).encode(), headers={"content-type": "application/json"}
    )
    try:
        with urllib.request.urlopen(request, timeout=30) as response:
            return dict(json.loads(response.read()))
    except urllib.error.HTTPError as err:
        raise AssertionError(f"POST {url}: {err.code} {err.read()!r}") from err


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


def _clean_env(home: Path) -> dict[str, str]:
    """The caller's environment without broker, S3 or ultralytics variables (a bare shell)."""
    drop = ("REDIS_", "S3_", "STORAGE_", "YOLO_", "PRETRAIN_", "FINETUNE_")
    env = {k: v for k, v in os.environ.items() if not k.startswith(drop)}
    env.update(
        AGSSP_HOME=str(home),
        JOBS_HEARTBEAT_S="1",
        PYTHONUNBUFFERED="1",
        OMP_NUM_THREADS="1",
        TRAINING_THREADS="1",
        PRETRAIN_DEVICE="cpu",
        FINETUNE_DEVICE="cpu",
    )
    return env


def _finished(url: str, log: Path, timeout_s: float) -> dict[str, object]:
    """Wait for the job at ``url`` to end; it must have SUCCEEDED."""
    record: dict[str, object] = {}

    def ended() -> bool:
        record.update(_json(url))
        return record["state"] in ("SUCCEEDED", "FAILED", "CANCELED")

    wait_for(ended, timeout_s, lambda: f"{url} did not end:\n{log.read_text()[-3000:]}", 1.0)
    assert record["state"] == "SUCCEEDED", (record.get("error"), log.read_text()[-3000:])
    return record


@pytest.mark.timeout(600)
def test_up_in_a_clean_environment_runs_agbp_then_agdp_in_its_one_worker(tmp_path: Path) -> None:
    # given a bare shell (no YOLO_* exported) and maps of a category in the local store
    home = tmp_path / "home"
    env = _clean_env(home)
    write_synthetic_source(
        FileObjectStore(home / "store"),
        images_prefix="img/steel/",
        output_prefix="maps/steel/m-1/",
        category="steel",
        count=12,
        size=(64, 64),
        job_id="m-1",
    )
    source = {"category": "steel", "images_prefix": "img/steel/", "maps_prefix": "maps/steel/m-1/"}
    base = _base_port(len(SERVICES))
    log_path = tmp_path / "up.log"
    log = log_path.open("wb")
    argv = [sys.executable, "-m", "agssp.main", "up", "--base-port", str(base)]
    proc = subprocess.Popen(
        [*argv, "--no-console", "--no-pipeline"],
        env=env,
        cwd=ROOT,
        stdout=log,
        stderr=subprocess.STDOUT,
        start_new_session=True,
    )
    pretrain, finetune = f"http://127.0.0.1:{base + 1}", f"http://127.0.0.1:{base + 2}"
    try:
        for url in (pretrain, finetune):
            wait_for(lambda url=url: _answers(f"{url}/healthz"), 90, lambda: log_path.read_text())
        # when the one worker runs pseudo boxes, AGBP (ultralytics' first import) and AGDP
        boxes = _post(f"{pretrain}/v1/pseudo-label-jobs", source)
        outputs = _finished(f"{pretrain}/v1/jobs/{boxes['id']}", log_path, 120)["outputs"]
        agbp = _post(f"{pretrain}/v1/pretrain-jobs", {"sources": [source], "config": AGBP_TINY})
        backbone = _finished(f"{pretrain}/v1/jobs/{agbp['id']}", log_path, 240)["artifacts"]
        body = {
            "images_prefix": "img/steel/",
            "labels_prefix": outputs["out_prefix"],  # type: ignore[index]
            "backbone_artifact": backbone[0],  # type: ignore[index]
            "scale": "n",
            "config": {"epochs": 1, "batch": 4, "imgsz": 64, "seed": 0},
            "val_fraction": 0.25,
        }
        agdp = _post(f"{finetune}/v1/agdp-jobs", body)
        # then both succeed: the worker was offline before anything imported ultralytics
        record = _finished(f"{finetune}/v1/jobs/{agdp['id']}", log_path, 300)
        assert record["artifacts"], record
    finally:
        os.killpg(proc.pid, signal.SIGTERM)
        proc.wait(timeout=60)
        log.close()
    assert "configure_ultralytics_offline" not in log_path.read_text(errors="replace")
