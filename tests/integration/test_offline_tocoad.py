"""An offline plant: no CLIP file anywhere and no random-weights setting (issue 11).

Real uvicorn API, real ``maps`` Celery worker, redis-server and moto's S3 server over HTTP.
ToCoAD fits, serves maps, runs a dataset map job and an evaluation; KeAD answers 503.
"""

from __future__ import annotations

import io
import json
from collections.abc import Iterator
from pathlib import Path

import httpx
import numpy as np
import pytest
from PIL import Image

from shared.jobs.store import JobStore
from shared.schemas.jobs import JobRecord, JobState
from shared.storage.base import ObjectStore
from shared.storage.factory import create_store
from tests.integration.suite import Proc, SuiteEnv, start_api, start_worker, suite_env, wait_for
from tests.servers import ServerHandle

pytestmark = pytest.mark.timeout(300)

SPEC = {
    "map": "tile surface",
    "good": ["{} without holes"],
    "defect": ["{} with a crack"],
    "method": "tocoad",
}


def _image(seed: int, height: int = 48, width: int = 96) -> bytes:
    rng = np.random.default_rng(seed)
    pixels = np.clip(120 + rng.normal(0, 15, (height, width, 3)), 0, 255).astype(np.uint8)
    buffer = io.BytesIO()
    Image.fromarray(pixels).save(buffer, "PNG")
    return buffer.getvalue()


def _mask(defect: bool, height: int = 48, width: int = 96) -> bytes:
    mask = np.zeros((height, width), dtype=np.uint8)
    if defect:
        mask[10:30, 20:60] = 255
    buffer = io.BytesIO()
    Image.fromarray(mask).save(buffer, "PNG")
    return buffer.getvalue()


@pytest.fixture(scope="module")
def senv(
    tmp_path_factory: pytest.TempPathFactory, redis_server: ServerHandle, s3_server: ServerHandle
) -> SuiteEnv:
    tmp = tmp_path_factory.mktemp("offline")
    base = suite_env(
        tmp, redis_url=f"redis://127.0.0.1:{redis_server.port}/0", s3_url=s3_server.url
    )
    env = {k: v for k, v in base.env.items() if not k.startswith("ANOMALY_MAP_")}
    (tmp / "models").mkdir()  # an empty model directory
    env.update(
        {
            "AGSSP_MODEL_DIR": str(tmp / "models"),
            "ANOMALY_MAP_DEVICE": "cpu",
            "ANOMALY_MAP_MAX_BATCH_SIZE": "2",
            "OMP_NUM_THREADS": "1",
        }
    )
    return SuiteEnv(env, base.settings)


@pytest.fixture(scope="module")
def store(senv: SuiteEnv) -> ObjectStore:
    return create_store(senv.settings)


@pytest.fixture(scope="module")
def api(senv: SuiteEnv, tmp_path_factory: pytest.TempPathFactory) -> Iterator[httpx.Client]:
    proc, url = start_api(senv, tmp_path_factory.mktemp("api"), "anomaly_map", timeout_s=120)
    try:
        with httpx.Client(base_url=url, timeout=60) as client:
            yield client
    finally:
        proc.stop()


def _wait_done(jobs: JobStore, job_id: str, worker: Proc, timeout_s: float = 180) -> JobRecord:
    wait_for(lambda: jobs.get(job_id).terminal, timeout_s, f"job not done:\n{worker.tail()}")
    return jobs.get(job_id)


def _upload(store: ObjectStore) -> None:
    for i in range(4):
        name = f"{'bad' if i % 2 else 'good'}/{i}.png"
        store.put_bytes(f"plant/images/{name}", _image(30 + i))
        store.put_bytes(f"plant/masks/{name}", _mask(i % 2 == 1))


def test_tocoad_end_to_end_without_any_weights(
    api: httpx.Client, senv: SuiteEnv, store: ObjectStore, tmp_path: Path
) -> None:
    # given an API without weights and a ToCoAD category with three references
    ready = api.get("/readyz")
    files = [("references", (f"r{i}.png", _image(i), "image/png")) for i in range(3)]
    put = api.put("/v1/categories/tile", data={"spec": json.dumps(SPEC)}, files=files)
    assert put.status_code == 201, put.text
    _upload(store)
    jobs = JobStore(store)
    worker = start_worker(senv, tmp_path, ["maps"], "offline1")
    try:
        # when: fit, a map, a dataset map job and an evaluation
        fit = api.post("/v1/tocoad-fits", json={"category": "tile", "preset": "tiny"})
        assert fit.status_code == 202, fit.text
        fitted = _wait_done(jobs, fit.json()["id"], worker)
        assert fitted.state == JobState.SUCCEEDED, fitted.error
        mapped = api.post(
            "/v1/anomaly-maps",
            files={"image": ("x.png", _image(9), "image/png")},
            data={"category": "tile", "mode": "tocoad"},
        )
        job = api.post(
            "/v1/anomaly-map-jobs",
            json={"category": "tile", "prefix": "plant/images/", "mode": "tocoad"},
        )
        maps_job = _wait_done(jobs, job.json()["id"], worker)
        evaluation = api.post(
            "/v1/evaluations",
            json={
                "category": "tile",
                "images_prefix": "plant/images/",
                "masks_prefix": "plant/masks/",
                "mode": "tocoad",
            },
        )
        eval_job = _wait_done(jobs, evaluation.json()["id"], worker)
        kead = api.post(
            "/v1/anomaly-maps",
            files={"image": ("x.png", _image(9), "image/png")},
            data={"category": "tile", "mode": "kead"},
        )
    finally:
        worker.stop()
    # then the API was ready for ToCoAD only
    assert ready.status_code == 200, ready.text
    methods = ready.json()["details"]["methods"]
    assert methods["tocoad"]["ready"]
    assert not methods["kead"]["ready"]
    # and every result names the fitted ToCoAD model
    version = fitted.outputs["model_version"]
    assert mapped.status_code == 200, mapped.text
    assert mapped.json()["model"] == version
    assert mapped.json()["map_shape"] == [64, 64]
    assert maps_job.state == JobState.SUCCEEDED, maps_job.error
    manifest = json.loads(store.get_bytes(maps_job.outputs["manifest"]))
    assert manifest["model"] == version
    assert manifest["tocoad"]["fit_job"] == fitted.id
    assert manifest["count"] == 4
    assert eval_job.state == JobState.SUCCEEDED, eval_job.error
    summary = json.loads(store.get_bytes(eval_job.outputs["results"]))
    assert summary["model"] == version
    assert summary["tocoad"]["config"]["image_size"] == 64
    assert set(summary["metrics"]) == {"image_auroc", "pixel_auroc", "aupro"}
    # and KeAD still says why it cannot serve
    assert kead.status_code == 503
    assert kead.json()["code"] == "model_weights_missing"
