"""How long a healthy broker holds a job before a worker takes it, and what the PENDING
re-publish costs: the measurement behind ``JOBS_PENDING_REQUEUE_S`` (issue 24, item 5).

Real parts: a ``redis-server`` of its own on a free loopback port, one Celery worker process
(``agssp worker default``, concurrency 1), a local-folder store, self-test jobs (sleeping
steps with checkpoints). Three rows:

* ``healthy``: ``--jobs`` jobs of ``--job-s`` seconds submitted at once, no re-publish: the
  wait of each job before its claim. It grows with the queue ahead of it, so no fixed
  threshold tells a lost message from a waiting one.
* ``eager``: the same queue with ``JOBS_PENDING_REQUEUE_S`` = ``--eager-s``: every waiting
  job is re-published (the wait doubling each time); how many duplicate deliveries that
  makes, and the wall time of the whole queue against ``healthy`` (the duplicates' cost).
* ``lost``: one job running, one queued, then Redis restarted empty: how long the queued
  job waits before it runs with ``--eager-s``, against the wait with the default.

    python -m benchmarks.queue_wait            # about 3 minutes
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from benchmarks.provenance import load_average, stamp
from shared.config import CommonSettings, JobSettings, PathSettings, RedisSettings, StorageSettings
from shared.jobs.celery_app import make_celery
from shared.jobs.producer import submit_job
from shared.jobs.store import JobStore
from shared.schemas.jobs import JobRecord, JobState, Queue, TaskName
from shared.storage.filesystem import FileObjectStore

ROOT = Path(__file__).resolve().parents[1]
RESULT = ROOT / "benchmarks" / "results" / "queue_wait.json"
STEP_S = 0.5


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def _wait(check: Callable[[], bool], timeout_s: float, what: str) -> None:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if check():
            return
        time.sleep(0.2)
    raise TimeoutError(what)


class Stack:
    """redis-server, a store folder and one worker process with the given requeue time."""

    def __init__(self, tmp: Path, requeue_s: float) -> None:
        tmp.mkdir(parents=True, exist_ok=True)
        self.tmp, self.port = tmp, _free_port()
        self.redis = self._start_redis()
        self.env = {
            **os.environ,
            "AGSSP_HOME": str(tmp / "home"),
            "STORAGE_BACKEND": "file",
            "REDIS_URL": f"redis://127.0.0.1:{self.port}/0",
            "JOBS_PENDING_REQUEUE_S": str(requeue_s),
            "JOBS_REAPER_INTERVAL_S": "1",
            "JOBS_HEARTBEAT_S": "1",
            "JOBS_LEASE_TTL_S": "10",
            "LOG_LEVEL": "INFO",
        }
        self.settings = CommonSettings(
            paths=PathSettings(home=tmp / "home"),
            storage=StorageSettings(backend="file"),
            redis=RedisSettings(url=self.env["REDIS_URL"]),
            jobs=JobSettings(pending_requeue_s=requeue_s),
        )
        self.jobs = JobStore(FileObjectStore(self.settings.storage_root()))
        self.log = tmp / "worker.log"
        argv = [sys.executable, "-m", "agssp.main", "worker", "default", "--hostname", "w@q"]
        with self.log.open("wb") as out:
            self.worker = subprocess.Popen(argv, env=self.env, stdout=out, stderr=out, cwd=ROOT)
        _wait(lambda: b"ready" in self.log.read_bytes(), 90, "worker not ready")

    def _start_redis(self) -> subprocess.Popen[bytes]:
        binary = shutil.which("redis-server") or "redis-server"
        argv = [binary, "--port", str(self.port), "--bind", "127.0.0.1", "--save", ""]
        proc = subprocess.Popen(argv, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        _wait(self._redis_up, 20, "redis-server did not start")
        return proc

    def _redis_up(self) -> bool:
        try:
            with socket.create_connection(("127.0.0.1", self.port), timeout=0.5) as sock:
                sock.sendall(b"PING\r\n")
                return sock.recv(16).startswith(b"+PONG")
        except OSError:
            return False

    def restart_redis(self) -> None:
        """Stop redis-server and start it again, empty, on the same port."""
        self.redis.terminate()
        self.redis.wait(10)
        self.redis = self._start_redis()

    def submit(self, seconds: float) -> JobRecord:
        params = {"steps": max(1, round(seconds / STEP_S)), "step_s": STEP_S}
        sender = make_celery(self.settings)
        return submit_job(
            sender, self.jobs, kind="selftest", task_name=TaskName.SELFTEST,
            queue=Queue.DEFAULT, params=params,
        )  # fmt: skip

    def finished(self, ids: list[str], timeout_s: float) -> list[JobRecord]:
        _wait(lambda: all(self.jobs.get(i).terminal for i in ids), timeout_s, "jobs unfinished")
        return [self.jobs.get(i) for i in ids]

    def duplicates_dropped(self) -> int:
        return self.log.read_text(errors="replace").count(" not run: ")

    def close(self) -> None:
        self.worker.terminate()
        self.worker.wait(30)
        self.redis.terminate()
        self.redis.wait(10)


def _queue_row(tmp: Path, requeue_s: float, jobs: int, job_s: float) -> dict[str, Any]:
    stack = Stack(tmp, requeue_s)
    try:
        started = time.monotonic()
        ids = [stack.submit(job_s).id for _ in range(jobs)]
        done = stack.finished(ids, timeout_s=jobs * job_s * 4 + 120)
        wall = time.monotonic() - started
        waits = [(r.started_at - r.created_at).total_seconds() for r in done if r.started_at]
        return {
            "pending_requeue_s": requeue_s,
            "jobs": jobs,
            "job_s": job_s,
            "succeeded": sum(r.state == JobState.SUCCEEDED for r in done),
            "attempts": [r.attempts for r in done],
            "requeues": [r.requeues for r in done],
            "duplicates_dropped": stack.duplicates_dropped(),
            "claim_wait_s": [round(w, 2) for w in waits],
            "queue_wall_s": round(wall, 2),
        }
    finally:
        stack.close()


def _lost_row(tmp: Path, requeue_s: float, job_s: float) -> dict[str, Any]:
    stack = Stack(tmp, requeue_s)
    try:
        first = stack.submit(job_s)
        _wait(lambda: stack.jobs.get(first.id).state == JobState.RUNNING, 60, "not running")
        queued = stack.submit(1.0)
        stack.restart_redis()
        lost_at = time.monotonic()
        done = stack.finished([first.id, queued.id], timeout_s=requeue_s * 2 + job_s * 4 + 120)
        return {
            "pending_requeue_s": requeue_s,
            "running_job_s": job_s,
            "queued_job_finished_after_s": round(time.monotonic() - lost_at, 2),
            "succeeded": sum(r.state == JobState.SUCCEEDED for r in done),
            "queued_requeues": done[1].requeues,
        }
    finally:
        stack.close()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--jobs", type=int, default=6)
    parser.add_argument("--job-s", type=float, default=10.0)
    parser.add_argument("--eager-s", type=float, default=4.0)
    parser.add_argument("--out", type=Path, default=RESULT)
    args = parser.parse_args()
    load = load_average()
    with tempfile.TemporaryDirectory(prefix="bench-queue-") as folder:
        tmp = Path(folder)
        rows = {
            "healthy": _queue_row(tmp / "healthy", 3600.0, args.jobs, args.job_s),
            "eager": _queue_row(tmp / "eager", args.eager_s, args.jobs, args.job_s),
            "lost": _lost_row(tmp / "lost", args.eager_s, args.job_s),
        }
    result = {**stamp("benchmarks.queue_wait", load), "rows": rows}
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=1) + "\n")
    print(json.dumps(rows, indent=1))


if __name__ == "__main__":
    main()
