"""anomaly_map over real HTTP (uvicorn) with moto S3, redis-server and real ``maps`` workers.

The tiny CLIP (tests/fixtures/tiny-vit.json) with seeded random weights stands in for real
weights in the API and worker processes (ANOMALY_MAP_EXTRA_MODEL_CONFIG_DIR).
"""

from __future__ import annotations

import io
import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import numpy as np
import pytest
from PIL import Image

from shared.jobs.store import JobStore
from shared.schemas.jobs import JobRecord, JobState
from shared.storage.base import ObjectStore
from shared.storage.factory import create_store
from tests.integration.suite import (
    ROOT,
    Proc,
    SuiteEnv,
    start_api,
    start_worker,
    suite_env,
    wait_for,
)
from tests.servers import ServerHandle

pytestmark = pytest.mark.timeout(300)

SPEC = {"map": "tile surface", "good": ["{} without holes"], "defect": ["{} with a crack"]}
LONG = "{} with a scratch defect, it appears as " + "a very long and thin bright line " * 12


def _image(seed: int, height: int = 64, width: int = 96, fmt: str = "PNG") -> bytes:
    rng = np.random.default_rng(seed)
    ramp = np.linspace(0, 200, width, dtype=np.float32)[None, :, None]
    pixels = np.clip(ramp + rng.normal(0, 20, (height, width, 3)), 0, 255).astype(np.uint8)
    buffer = io.BytesIO()
    Image.fromarray(pixels).save(buffer, fmt)
    return buffer.getvalue()


def _mask(defect: bool, height: int = 64, width: int = 96) -> bytes:
    mask = np.zeros((height, width), dtype=np.uint8)
    if defect:
        mask[20:40, 30:60] = 255
    buffer = io.BytesIO()
    Image.fromarray(mask).save(buffer, "PNG")
    return buffer.getvalue()


@pytest.fixture(scope="module")
def senv(
    tmp_path_factory: pytest.TempPathFactory, redis_server: ServerHandle, s3_server: ServerHandle
) -> SuiteEnv:
    tmp = tmp_path_factory.mktemp("anomaly-map")
    base = suite_env(
        tmp, redis_url=f"redis://127.0.0.1:{redis_server.port}/0", s3_url=s3_server.url
    )
    env = dict(base.env)
    env.update(
        {
            "ANOMALY_MAP_CLIP_MODEL": "tiny-vit",
            "ANOMALY_MAP_ALLOW_RANDOM_WEIGHTS": "true",
            "ANOMALY_MAP_DEVICE": "cpu",
            "ANOMALY_MAP_EXTRA_MODEL_CONFIG_DIR": str(ROOT / "tests" / "fixtures"),
            "ANOMALY_MAP_MAX_BATCH_SIZE": "2",
            "ANOMALY_MAP_MAX_IMAGE_MB": "1",
            "HTTP_MAX_BODY_MB": "2",
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


def _put_category(api: httpx.Client, name: str, references: int = 2) -> dict[str, Any]:
    files = [("references", (f"r{i}.png", _image(100 + i), "image/png")) for i in range(references)]
    response = api.put(f"/v1/categories/{name}", data={"spec": json.dumps(SPEC)}, files=files)
    assert response.status_code == 201, response.text
    return dict(response.json())


def _map(
    api: httpx.Client, image: bytes, accept: str = "application/json", **fields: str
) -> httpx.Response:
    return api.post(
        "/v1/anomaly-maps",
        files={"image": ("x.png", image, "image/png")},
        data={"category": "tiles", **fields},
        headers={"accept": accept},
    )


def test_category_then_maps_in_every_representation(api: httpx.Client) -> None:
    # given
    category = _put_category(api, "tiles")
    # when
    as_json = _map(api, _image(1))
    as_npy = _map(api, _image(1), accept="application/x-npy")
    as_png = _map(api, _image(1), accept="image/png")
    listed = api.get("/v1/categories").json()["items"]
    # then
    assert as_json.status_code == 200, as_json.text
    assert as_json.json()["category_version"] == category["version"]
    assert as_json.json()["map_shape"] == [5, 5]
    grid = np.load(io.BytesIO(as_npy.content), allow_pickle=False)
    assert grid.shape == (5, 5)
    assert float(as_npy.headers["x-image-score"]) == pytest.approx(
        as_json.json()["image_score"], abs=1e-5
    )
    assert as_png.content.startswith(b"\x89PNG")
    assert "tiles" in [item["name"] for item in listed]
    assert api.get("/readyz").status_code == 200


def test_bad_inputs_get_4xx_and_the_service_keeps_serving(api: httpx.Client) -> None:
    # given
    _put_category(api, "tiles")
    # when
    corrupt = _map(api, _image(2)[:100])
    not_image = _map(api, b"just some text")
    unknown = _map(api, _image(2), category="nope")
    too_big = api.post(
        "/v1/anomaly-maps?category=tiles",
        content=b"\0" * 3_000_000,
        headers={"content-type": "image/png"},
    )
    too_long = api.put("/v1/categories/long", json={**SPEC, "defect": [LONG]})
    bad_param = _map(api, _image(2), resolution="huge")
    after = _map(api, _image(2))
    # then
    assert (corrupt.status_code, corrupt.json()["code"]) == (422, "corrupt_image")
    assert not_image.status_code == 415
    assert (unknown.status_code, unknown.json()["code"]) == (404, "category_not_found")
    assert too_big.status_code == 413
    assert (too_long.status_code, too_long.json()["code"]) == (422, "prompt_too_long")
    assert bad_param.status_code == 422
    assert after.status_code == 200


def _upload_dataset(store: ObjectStore, prefix: str, count: int, size: int = 64) -> list[str]:
    keys = []
    for i in range(count):
        defect = i % 2 == 1
        name = f"{'bad' if defect else 'good'}/img.{i:03d}.png"
        store.put_bytes(f"{prefix}images/{name}", _image(i, size, size))
        store.put_bytes(f"{prefix}masks/{name}", _mask(defect, size, size))
        keys.append(f"{prefix}images/{name}")
    return keys


def _job(jobs: JobStore, job_id: str) -> JobRecord:
    return jobs.get(job_id)


def _wait_done(jobs: JobStore, job_id: str, worker: Proc, timeout_s: float = 150) -> JobRecord:
    wait_for(lambda: _job(jobs, job_id).terminal, timeout_s, f"job not done:\n{worker.tail()}")
    return _job(jobs, job_id)


def test_dataset_maps_then_evaluation_through_a_worker(
    api: httpx.Client, senv: SuiteEnv, store: ObjectStore, tmp_path: Path
) -> None:
    # given six images in S3 and a category
    _put_category(api, "tiles")
    _upload_dataset(store, "datasets/six/", 6)
    jobs = JobStore(store)
    worker = start_worker(senv, tmp_path, ["maps"], "maps1")
    try:
        # when
        submitted = api.post(
            "/v1/anomaly-map-jobs", json={"category": "tiles", "prefix": "datasets/six/images/good"}
        )
        maps_job = _wait_done(jobs, submitted.json()["id"], worker)
        evaluation = api.post(
            "/v1/evaluations",
            json={
                "category": "tiles",
                "images_prefix": "datasets/six/images/",
                "masks_prefix": "datasets/six/masks/",
            },
        )
        eval_job = _wait_done(jobs, evaluation.json()["id"], worker)
    finally:
        worker.stop()
    # then the maps job wrote one raw map per image with the full stem
    assert submitted.status_code == 202
    assert maps_job.state == JobState.SUCCEEDED, maps_job.error
    out = maps_job.outputs["output_prefix"]
    assert out == f"maps/tiles/{maps_job.id}/"
    assert store.list(f"{out}maps/") == [f"{out}maps/img.{i:03d}.npy" for i in (0, 2, 4)]
    manifest = json.loads(store.get_bytes(f"{out}manifest.json"))
    assert manifest["count"] == 3
    assert maps_job.metrics["images_per_s"] > 0
    # and the evaluation reports the three metrics
    assert eval_job.state == JobState.SUCCEEDED, eval_job.error
    assert eval_job.outputs["counts"]["images"] == 6
    assert set(eval_job.outputs["metrics"]) == {"image_auroc", "pixel_auroc", "aupro"}
    assert store.exists(eval_job.outputs["results"])


def test_killed_worker_resumes_the_dataset_job_and_writes_each_map_once(
    api: httpx.Client, senv: SuiteEnv, store: ObjectStore, tmp_path: Path
) -> None:
    # given a dataset job running on worker 1
    _put_category(api, "tiles")
    keys = _upload_dataset(store, "datasets/kill/", 24, size=384)
    jobs = JobStore(store)
    # (a checkpoint segment after every batch, so the kill lands between saved segments
    # however fast the machine maps; the default saves one at most every 2 s)
    eager = SuiteEnv({**senv.env, "ANOMALY_MAP_CHECKPOINT_EVERY_S": "0"}, senv.settings)
    first = start_worker(eager, tmp_path, ["maps"], "kill1")
    job_id = api.post(
        "/v1/anomaly-map-jobs", json={"category": "tiles", "prefix": "datasets/kill/images/"}
    ).json()["id"]
    segments = f"jobs/{job_id}/checkpoints/batches/"
    try:
        wait_for(lambda: len(store.list(segments)) >= 3, 120, first.tail(), interval_s=0.05)
    finally:
        # when worker 1 dies without any chance to clean up
        first.kill()
    assert _job(jobs, job_id).state == JobState.RUNNING
    second = start_worker(senv, tmp_path, ["maps"], "kill2")
    try:
        final = _wait_done(jobs, job_id, second)
    finally:
        second.stop()
    # then it resumed from its checkpoint and every image was scored exactly once overall
    assert final.state == JobState.SUCCEEDED, final.error
    assert final.resumed >= 1
    assert final.worker == "kill2@it"
    resumed_from = final.outputs["resumed_from"]
    assert resumed_from >= 6
    assert resumed_from + final.outputs["computed"] == len(keys)
    out = final.outputs["output_prefix"]
    assert len(store.list(f"{out}maps/")) == len(keys)
    rows = store.get_bytes(f"{out}scores.csv").decode().strip().splitlines()[1:]
    assert sorted(row.split(",")[0] for row in rows) == sorted(keys)
