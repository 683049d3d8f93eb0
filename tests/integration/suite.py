"""Helpers for integration tests: environments pointing at real servers, worker and API
processes started exactly as ``agssp worker`` / ``agssp serve`` start them."""

from __future__ import annotations

import itertools
import os
import signal
import subprocess
import sys
import time
import urllib.request
import uuid
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from shared.config import (
    CommonSettings,
    JobSettings,
    PathSettings,
    RedisSettings,
    S3Settings,
    StorageSettings,
)
from tests.servers import free_port

ROOT = Path(__file__).resolve().parents[2]


@dataclass
class SuiteEnv:
    """Environment variables for child processes plus the equivalent settings object."""

    env: dict[str, str]
    settings: CommonSettings


# Every suite gets a Redis database of its own (1..15 in turn): workers left from another
# module must never take this suite's tasks, whose records live in another bucket.
_REDIS_DBS = itertools.count()


def own_redis_db(redis_url: str) -> str:
    """``redis_url`` pointed at the next database of the shared test server."""
    base = redis_url.rsplit("/", 1)[0] if redis_url.count("/") > 2 else redis_url
    return f"{base}/{1 + next(_REDIS_DBS) % 15}"


def suite_env(tmp: Path, *, redis_url: str, s3_url: str, lease_ttl_s: float = 3.0) -> SuiteEnv:
    redis_url = own_redis_db(redis_url)
    bucket = f"it-{uuid.uuid4().hex[:10]}"
    env = dict(os.environ)
    env.update(
        {
            "AGSSP_HOME": str(tmp / "home"),
            "REDIS_URL": redis_url,
            "S3_ENDPOINT_URL": s3_url,
            "S3_BUCKET": bucket,
            "S3_ACCESS_KEY_ID": "testing",
            "S3_SECRET_ACCESS_KEY": "testing",
            "S3_TIMEOUT_S": "2",
            "S3_RETRIES": "1",
            "JOBS_LEASE_TTL_S": str(lease_ttl_s),
            "JOBS_HEARTBEAT_S": "0.5",
            "JOBS_REAPER_INTERVAL_S": "1",
            "LOG_LEVEL": "INFO",
            "PYTHONUNBUFFERED": "1",
            "YOLO_OFFLINE": "1",
            "YOLO_AUTOINSTALL": "False",
        }
    )
    settings = CommonSettings(
        paths=PathSettings(home=tmp / "home"),
        storage=StorageSettings(backend="s3"),
        s3=S3Settings(
            endpoint_url=s3_url,
            bucket=bucket,
            access_key_id="testing",
            secret_access_key="testing",
            timeout_s=2,
            retries=1,
        ),  # type: ignore[arg-type]
        redis=RedisSettings(url=redis_url),
        jobs=JobSettings(lease_ttl_s=lease_ttl_s, heartbeat_s=0.5, reaper_interval_s=1),
    )
    return SuiteEnv(env, settings)


class Proc:
    """A child process in its own session, with its output in a log file."""

    def __init__(self, argv: list[str], env: dict[str, str], log: Path) -> None:
        self.log = log
        self._out = log.open("wb")
        self.popen = subprocess.Popen(
            argv,
            env=env,
            cwd=ROOT,
            stdout=self._out,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )

    def kill(self, sig: int = signal.SIGKILL) -> None:
        if self.popen.poll() is None:
            os.killpg(self.popen.pid, sig)
        self.popen.wait(timeout=30)

    def stop(self) -> None:
        if self.popen.poll() is None:
            os.killpg(self.popen.pid, signal.SIGTERM)
            try:
                self.popen.wait(timeout=20)
            except subprocess.TimeoutExpired:
                self.kill()
        self._out.close()

    def tail(self, n: int = 40) -> str:
        return "\n".join(self.log.read_text(errors="replace").splitlines()[-n:])


def start_worker(senv: SuiteEnv, tmp: Path, queues: list[str], name: str) -> Proc:
    argv = [sys.executable, "-m", "agssp.main", "worker", *queues, "--hostname", f"{name}@it"]
    return Proc(argv, senv.env, tmp / f"{name}.log")


def start_api(
    senv: SuiteEnv, tmp: Path, service: str, *, timeout_s: float = 60.0
) -> tuple[Proc, str]:
    port = free_port()
    argv = [
        sys.executable,
        "-m",
        "agssp.main",
        "serve",
        service,
        "--host",
        "127.0.0.1",
        "--port",
        str(port),
    ]
    proc = Proc(argv, senv.env, tmp / f"api-{service}.log")
    url = f"http://127.0.0.1:{port}"
    wait_for(lambda: _healthy(url), timeout_s, f"{service} API did not start:\n{proc.tail()}")
    return proc, url


def _healthy(url: str) -> bool:
    try:
        with urllib.request.urlopen(f"{url}/healthz", timeout=2) as response:
            return bool(response.status == 200)
    except OSError:
        return False


def wait_for(
    predicate: Callable[[], bool],
    timeout_s: float,
    message: str | Callable[[], str],
    interval_s: float = 0.2,
) -> None:
    """Poll ``predicate`` until true; bounded in time.

    ``message`` may be a callable, evaluated only on failure (e.g. a log tail read after the
    wait, not before it).
    """
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if predicate():
            return
        time.sleep(interval_s)
    raise AssertionError(message() if callable(message) else message)


# -- the whole suite for pipeline tests ------------------------------------------------------
PIPELINE_SERVICES = ("anomaly_map", "pretrain", "finetune", "inference")
TINY_DETECTOR = {"epochs": 1, "batch": 4, "imgsz": 64}
# The smallest training a pipeline accepts: seconds per step on one thread.
TINY_OVERRIDES = {
    "tocoad": {},
    "tocoad_preset": "tiny",  # cpu-demo's own ``demo`` schedule takes minutes
    "agbp": {"epochs": 4, "batch_size": 4, "input_size": 64, "resize_base": 64},
    "agdp": TINY_DETECTOR,
    "finetune": TINY_DETECTOR,
}


def pipeline_env(base: SuiteEnv, tmp: Path, **extra: str) -> SuiteEnv:
    """``base`` for a CPU pipeline run: no CLIP model (an empty model directory), one thread,
    data-loader workers off, a fast pipeline poll; ``extra`` variables on top."""
    env = {k: v for k, v in base.env.items() if not k.startswith(("ANOMALY_MAP_", "INFERENCE_"))}
    (tmp / "models").mkdir(exist_ok=True)
    env.update(
        {
            "AGSSP_MODEL_DIR": str(tmp / "models"),
            "ANOMALY_MAP_DEVICE": "cpu",
            "PRETRAIN_DEVICE": "cpu",
            "PRETRAIN_NUM_WORKERS": "0",
            "FINETUNE_DEVICE": "cpu",
            "FINETUNE_WORKERS": "0",
            "FINETUNE_WORK_DIR": str(tmp / "ft"),
            "PIPELINE_POLL_INTERVAL_S": "0.5",
            "OMP_NUM_THREADS": "1",
            **extra,
        }
    )
    return SuiteEnv(env, base.settings)


def start_pipeline_apis(senv: SuiteEnv, tmp: Path) -> tuple[list[Proc], dict[str, str]]:
    """The four APIs, then the pipeline API pointed at them; stops what started on failure."""
    procs: list[Proc] = []
    urls: dict[str, str] = {}
    try:
        for service in PIPELINE_SERVICES:
            proc, urls[service] = start_api(senv, tmp, service, timeout_s=120)
            procs.append(proc)
        senv.env.update({f"PIPELINE_{s.upper()}_URL": urls[s] for s in PIPELINE_SERVICES})
        proc, urls["pipeline"] = start_api(senv, tmp, "pipeline", timeout_s=60)
        procs.append(proc)
    except BaseException:
        for proc in procs:
            proc.stop()
        raise
    return procs, urls
