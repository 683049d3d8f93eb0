"""One pipeline request, end to end on real parts, with no downloaded weights (issue 12).

redis-server, moto's S3 server over HTTP, one real Celery worker on every queue, the four
APIs and the pipeline service under uvicorn. The pipeline fits ToCoAD (no CLIP file
anywhere), maps the unlabelled images, derives pseudo boxes, runs AGBP, AGDP, the finetune
and its scratch baseline, promotes the detector and writes the report; the inference
service, configured with no model at all, then serves the promoted version. The worker is
SIGKILLed in the middle and a second one finishes the interrupted step's job.
"""

from __future__ import annotations

import io
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import numpy as np
import pytest
from PIL import Image

from shared.storage.base import ObjectStore
from shared.storage.factory import create_store
from tests.integration.suite import (
    TINY_OVERRIDES,
    Proc,
    SuiteEnv,
    pipeline_env,
    start_pipeline_apis,
    start_worker,
    suite_env,
    wait_for,
)
from tests.servers import ServerHandle

pytestmark = pytest.mark.timeout(900)
SIZE = 64
OVERRIDES = TINY_OVERRIDES


def _png(seed: int, shade: int) -> tuple[bytes, tuple[float, float, float, float]]:
    rng = np.random.default_rng(seed)
    image = rng.integers(60, 110, (SIZE, SIZE, 3), dtype=np.uint8)
    x, y = (int(v) for v in rng.integers(4, SIZE // 2, 2))
    w, h = (int(v) for v in rng.integers(8, SIZE // 2 - 2, 2))
    image[y : y + h, x : x + w] = shade
    buffer = io.BytesIO()
    Image.fromarray(image).save(buffer, "PNG")
    return buffer.getvalue(), ((x + w / 2) / SIZE, (y + h / 2) / SIZE, w / SIZE, h / SIZE)


def _seed(store: ObjectStore) -> None:
    for i in range(12):
        store.put_bytes(f"plant/lines/l{i:02d}.png", _png(i, 230 if i % 3 == 0 else 85)[0])
    for i in range(8):
        png, box = _png(100 + i, 240)
        store.put_bytes(f"plant/labelled/images/d{i}.png", png)
        label = " ".join(["0", *(f"{v:.6f}" for v in box)])
        store.put_bytes(f"plant/labelled/labels/d{i}.txt", f"{label}\n".encode())
    store.put_bytes("plant/labelled/classes.txt", b"spot\n")


@dataclass
class Suite:
    senv: SuiteEnv
    tmp: Path
    urls: dict[str, str]
    workers: list[Proc]
    store: ObjectStore

    def worker_tail(self) -> str:
        return "\n".join(w.tail() for w in self.workers)


@pytest.fixture(scope="module")
def suite(
    tmp_path_factory: pytest.TempPathFactory, redis_server: ServerHandle, s3_server: ServerHandle
) -> Iterator[Suite]:
    tmp = tmp_path_factory.mktemp("pipeline")
    base = suite_env(
        tmp,
        redis_url=f"redis://127.0.0.1:{redis_server.port}/0",
        s3_url=s3_server.url,
        lease_ttl_s=5,
    )
    senv = pipeline_env(base, tmp, INFERENCE_POLL_INTERVAL_S="1")  # no model dir: offline
    store = create_store(senv.settings)
    _seed(store)
    workers = [start_worker(senv, tmp, ["maps", "pretrain", "finetune"], "w1")]
    procs: list[Proc] = []
    try:
        procs, urls = start_pipeline_apis(senv, tmp)
        yield Suite(senv, tmp, urls, workers, store)
    finally:
        for proc in procs:
            proc.stop()
        for worker in workers:
            worker.stop()


def _body(name: str, **changes: Any) -> dict[str, Any]:
    body = {
        "name": name,
        "category": "tile",
        "category_spec": {"map": "tile surface", "defect": ["{} with a bright spot"]},
        "unlabelled_prefix": "plant/lines/",
        "labelled": {"prefix": "plant/labelled/", "format": "yolo"},
        "preset": "cpu-demo",
        "promote": "production",
        "seed": 3,
        "overrides": OVERRIDES,
    }
    return {**body, **changes}


def _pipeline(suite: Suite, pipeline_id: str) -> dict[str, Any]:
    response = httpx.get(f"{suite.urls['pipeline']}/v1/pipelines/{pipeline_id}", timeout=30)
    assert response.status_code == 200, response.text
    record: dict[str, Any] = response.json()
    return record


def _step(record: dict[str, Any], name: str) -> dict[str, Any]:
    return next(s for s in record["steps"] if s["name"] == name)


def test_a_pipeline_runs_every_step_to_a_served_detector_across_a_worker_kill(
    suite: Suite,
) -> None:
    # given the offline suite: KeAD cannot load, so auto picks ToCoAD
    # (AGBP long enough that the kill lands after its first epoch and before its last on
    # any machine: the tiny recipe's 4 epochs of 3 steps can end between two polls)
    overrides = {**OVERRIDES, "agbp": {**OVERRIDES["agbp"], "epochs": 40}}
    body = _body("tile-det", overrides=overrides)
    started = httpx.post(f"{suite.urls['pipeline']}/v1/pipelines", json=body)
    assert started.status_code == 202, started.text
    pipeline_id = started.json()["id"]

    # when the worker is killed while AGBP runs, and a second worker takes over
    def agbp_submitted() -> bool:
        record = _pipeline(suite, pipeline_id)
        assert record["state"] == "RUNNING", (record.get("error"), suite.worker_tail())
        return _step(record, "agbp")["job_id"] is not None

    wait_for(agbp_submitted, 400, lambda: f"AGBP never started:\n{suite.worker_tail()}", 0.5)
    agbp_job = _step(_pipeline(suite, pipeline_id), "agbp")["job_id"]

    def agbp_past_first_epoch() -> bool:
        job = httpx.get(f"{suite.urls['pretrain']}/v1/jobs/{agbp_job}", timeout=30).json()
        assert job["state"] in ("PENDING", "RUNNING"), job
        return job["state"] == "RUNNING" and "epoch 1" in job["message"]

    wait_for(agbp_past_first_epoch, 300, lambda: f"no epoch:\n{suite.worker_tail()}", 0.2)
    suite.workers[0].kill()
    suite.workers.append(
        start_worker(suite.senv, suite.tmp, ["maps", "pretrain", "finetune"], "w2")
    )

    def ended() -> bool:
        return _pipeline(suite, pipeline_id)["state"] in ("SUCCEEDED", "FAILED", "CANCELED")

    wait_for(ended, 600, lambda: f"pipeline did not end:\n{suite.worker_tail()}", 1.0)
    record = _pipeline(suite, pipeline_id)

    # then every step ran once, the interrupted job was resumed rather than resubmitted
    assert record["state"] == "SUCCEEDED", (record.get("error"), suite.worker_tail())
    assert _step(record, "method")["outputs"] == {"method": "tocoad"}
    assert _step(record, "agbp")["job_id"] == agbp_job
    assert {s["state"] for s in record["steps"]} == {"SUCCEEDED"}
    assert all(s["attempts"] == 1 for s in record["steps"])
    agbp_record = httpx.get(f"{suite.urls['pretrain']}/v1/jobs/{agbp_job}", timeout=30).json()
    assert agbp_record["resumed"] >= 1
    # the report renders and names the scratch baseline
    report = httpx.get(f"{suite.urls['pipeline']}/v1/pipelines/{pipeline_id}/report", timeout=30)
    assert report.status_code == 200
    assert report.headers["content-type"].startswith("text/html")
    assert "tile-det-scratch" in report.text
    assert "data:image/png;base64," in report.text
    # and the inference service, configured with no model, serves the promoted detector
    version = _step(record, "promote")["outputs"]["version"]

    def serving() -> bool:
        detect = httpx.post(
            f"{suite.urls['inference']}/detect",
            content=_png(77, 240)[0],
            headers={"content-type": "image/png"},
            timeout=60,
        )
        return detect.status_code == 200 and detect.json()["model"]["version"] == version

    wait_for(serving, 120, "inference never served the promoted version")


def test_cancel_stops_a_pipeline_and_its_running_job(suite: Suite) -> None:
    # given a pipeline that has started its first job, on a category it creates itself (the
    # test runs alone or in any order: it must not lean on the other test's category)
    body = _body("tile-cancel", category="tile-cancel", maps="tocoad", promote=None)
    started = httpx.post(f"{suite.urls['pipeline']}/v1/pipelines", json=body)
    assert started.status_code == 202, started.text
    pipeline_id = started.json()["id"]
    wait_for(
        lambda: _step(_pipeline(suite, pipeline_id), "tocoad_fit")["job_id"] is not None,
        120,
        "the fit job was never submitted",
    )
    job_id = _step(_pipeline(suite, pipeline_id), "tocoad_fit")["job_id"]
    # when
    cancel = httpx.post(f"{suite.urls['pipeline']}/v1/pipelines/{pipeline_id}/cancel")
    assert cancel.status_code == 200
    wait_for(lambda: _pipeline(suite, pipeline_id)["state"] == "CANCELED", 60, "not canceled")
    # then the job was asked to cancel and no later step started
    job = httpx.get(f"{suite.urls['anomaly_map']}/v1/jobs/{job_id}", timeout=30).json()
    assert job["cancel_requested"] is True or job["state"] in ("CANCELED", "SUCCEEDED")
    assert _step(_pipeline(suite, pipeline_id), "maps")["job_id"] is None
