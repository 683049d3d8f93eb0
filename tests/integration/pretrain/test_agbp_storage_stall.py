"""A training job survives the object store hanging under it (issue 24, item 3).

Real parts: redis-server, moto's S3 server in its own process (frozen with SIGSTOP, so every
request hangs as it would behind a dead load balancer), one real `pretrain` Celery worker.
The AGBP job reads its pairs and maps from the store, writes checkpoints every two steps and
its record and heartbeat all along; the store hangs at three points of the run. Shorter stalls
are waited out by the job's patient store calls; a stall longer than the patience leaves the
record RUNNING for the reaper, which hands the job back to a worker that resumes it from its
last checkpoint. Either way the job finishes, with every epoch once and one published version.
"""

from __future__ import annotations

import os
import signal
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from services.pretrain.stores.synthetic import write_synthetic_source
from shared.jobs.store import JobStore
from shared.schemas.jobs import JobRecord, JobState
from shared.storage.artifacts import ArtifactStore
from shared.storage.factory import create_store
from tests.integration.pretrain.test_pretrain_celery import CONFIG, MAP_JOB, _post
from tests.integration.suite import SuiteEnv, start_api, start_worker, suite_env, wait_for
from tests.servers import ServerHandle, start_moto_s3

pytestmark = pytest.mark.timeout(420)
EPOCHS = 4  # 12 pairs at batch 4: 3 steps an epoch
STEPS = 3 * EPOCHS


@pytest.fixture
def own_s3() -> Iterator[ServerHandle]:
    with start_moto_s3(allow_external=False) as server:
        yield server


def _stack(tmp: Path, redis: ServerHandle, s3: ServerHandle, patience_s: float) -> SuiteEnv:
    base = suite_env(
        tmp, redis_url=f"redis://127.0.0.1:{redis.port}/0", s3_url=s3.url, lease_ttl_s=6.0
    )
    extra = {
        "PRETRAIN_DEVICE": "cpu",
        "PRETRAIN_NUM_WORKERS": "0",
        "OMP_NUM_THREADS": "1",
        "JOBS_STORAGE_PATIENCE_S": str(patience_s),
        "JOBS_HEARTBEAT_S": "1",
    }
    senv = SuiteEnv(dict(base.env, **extra), base.settings)
    write_synthetic_source(
        create_store(senv.settings),
        images_prefix="img/pipe/",
        output_prefix=f"maps/pipe/{MAP_JOB}/",
        category="pipe",
        count=12,
        size=(96, 80),
        grid=6,
        job_id=MAP_JOB,
    )
    return senv


def _submit(url: str) -> str:
    sources = [
        {"category": "pipe", "images_prefix": "img/pipe/", "maps_prefix": f"maps/pipe/{MAP_JOB}/"}
    ]
    config = CONFIG | {"epochs": EPOCHS, "checkpoint_every": 2}
    status, record = _post(
        f"{url}/v1/pretrain-jobs",
        {"sources": sources, "config": config, "artifact_name": "stalled"},
    )
    assert status == 202, record
    return str(record["id"])


def _stall(s3: ServerHandle, seconds: float) -> None:
    assert s3.process is not None
    os.kill(s3.process.pid, signal.SIGSTOP)
    try:
        time.sleep(seconds)
    finally:
        os.kill(s3.process.pid, signal.SIGCONT)


def _record(jobs: JobStore, job_id: str) -> JobRecord | None:
    try:
        return jobs.get(job_id)
    except Exception:  # the store may still be catching up right after a stall
        return None


def _reached(jobs: JobStore, job_id: str, step: int) -> Callable[[], bool]:
    def check() -> bool:
        record = _record(jobs, job_id)
        assert record is None or record.state != JobState.FAILED, record.error
        return record is not None and (
            record.state == JobState.SUCCEEDED
            or (
                record.state == JobState.RUNNING
                and int(record.metrics.get("checkpoint_step", 0)) >= step
            )
        )

    return check


def _run_with_stalls(
    tmp: Path, redis: ServerHandle, s3: ServerHandle, patience_s: float, stall_s: float
) -> JobRecord:
    senv = _stack(tmp, redis, s3, patience_s)
    jobs = JobStore(create_store(senv.settings))
    api, url = start_api(senv, tmp, "pretrain")
    worker = start_worker(senv, tmp, ["pretrain"], "w1")
    try:
        job_id = _submit(url)
        # the store hangs as the job starts, after its first checkpoint, and mid-run
        for step in (0, 2, STEPS // 2):
            wait_for(_reached(jobs, job_id, step), 180, worker.tail)
            _stall(s3, stall_s)
        wait_for(
            lambda: (r := _record(jobs, job_id)) is not None and r.terminal,
            240,
            lambda: f"job did not finish after the stalls:\n{worker.tail(60)}",
        )
        final = jobs.get(job_id)
        assert final.state == JobState.SUCCEEDED, f"{final.error}\n{worker.tail(60)}"
        assert [h["epoch"] for h in final.outputs["history"]] == [
            float(e) for e in range(1, EPOCHS + 1)
        ]
        assert ArtifactStore(jobs.store).versions("stalled") == [job_id]
        return final
    finally:
        worker.stop()
        api.stop()


def test_stalls_shorter_than_the_patience_are_waited_out(
    tmp_path: Path, redis_server: ServerHandle, own_s3: ServerHandle
) -> None:
    # given a store patience of 30 s, when the store hangs 4 s three times, then the job
    # finishes in its first delivery
    final = _run_with_stalls(tmp_path, redis_server, own_s3, patience_s=30, stall_s=4)
    assert final.resumed == 0


def test_a_stall_past_the_patience_hands_the_job_over_and_it_resumes(
    tmp_path: Path, redis_server: ServerHandle, own_s3: ServerHandle
) -> None:
    # given a store patience of 2 s, when the store hangs 9 s three times, then the job is
    # never FAILED: its record stays RUNNING, the reaper re-delivers it, and it resumes from
    # its last checkpoint until it finishes
    final = _run_with_stalls(tmp_path, redis_server, own_s3, patience_s=2, stall_s=9)
    assert final.resumed >= 1
