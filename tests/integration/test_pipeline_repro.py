"""Issue 21, items 5 and 6, on real parts: the same pipeline request twice on the generated set.

redis-server, moto's S3 server, one real Celery worker on every queue and the services under
uvicorn, as in ``test_pipeline_service.py`` (its smallest overrides, the ``cpu-demo`` preset
whose ToCoAD maps come from the ``tiny`` preset). Two identical requests must publish
identical detectors with identical metrics, and the report must give the lift with its
bootstrap interval and say that the maps are not meant to be meaningful.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import pytest

from agssp.demo import synthetic_demo
from shared.schemas.artifacts import ArtifactRef
from shared.schemas.backbones import BACKBONE_FILE
from shared.schemas.dataset_maps import DatasetMapManifest, manifest_key
from shared.schemas.evaluation import PER_IMAGE_FILE, PerImageEval
from shared.storage.artifacts import ArtifactStore
from shared.storage.base import ObjectStore
from shared.storage.factory import create_store
from tests.integration.suite import (
    TINY_OVERRIDES,
    Proc,
    pipeline_env,
    start_pipeline_apis,
    start_worker,
    suite_env,
    wait_for,
)
from tests.servers import ServerHandle

pytestmark = pytest.mark.timeout(900)
OVERRIDES = TINY_OVERRIDES
DETECTOR_STEPS = ("agdp", "finetune", "baseline")


@dataclass
class Suite:
    urls: dict[str, str]
    worker: Proc
    store: ObjectStore


def _upload(store: ObjectStore, folder: Path, prefix: str) -> None:
    for path in sorted(p for p in folder.rglob("*") if p.is_file()):
        store.put_bytes(prefix + path.relative_to(folder).as_posix(), path.read_bytes())


@pytest.fixture(scope="module")
def suite(
    tmp_path_factory: pytest.TempPathFactory, redis_server: ServerHandle, s3_server: ServerHandle
) -> Iterator[Suite]:
    tmp = tmp_path_factory.mktemp("repro")
    base = suite_env(
        tmp, redis_url=f"redis://127.0.0.1:{redis_server.port}/0", s3_url=s3_server.url
    )
    senv = pipeline_env(base, tmp)
    store = create_store(senv.settings)
    synthetic_demo(tmp / "demo", labelled=16, pool=12, size=64, seed=0)  # the generated set
    _upload(store, tmp / "demo" / "labelled", "demo/labelled/")
    _upload(store, tmp / "demo" / "unlabelled", "demo/unlabelled/")
    worker = start_worker(senv, tmp, ["maps", "pretrain", "finetune"], "w1")
    procs: list[Proc] = []
    try:
        procs, urls = start_pipeline_apis(senv, tmp)
        yield Suite(urls, worker, store)
    finally:
        for proc in procs:
            proc.stop()
        worker.stop()


BODY: dict[str, Any] = {
    "name": "gen-det",
    "category": "gen",
    "category_spec": {"map": "grey surface", "defect": ["{} with a spot or a scratch"]},
    "unlabelled_prefix": "demo/unlabelled/",
    "labelled": {"prefix": "demo/labelled/", "format": "voc", "annotations": "annotations"},
    "maps": "tocoad",
    "preset": "cpu-demo",
    "seed": 5,
    "overrides": OVERRIDES,
}


def _pipeline(suite: Suite, pipeline_id: str) -> dict[str, Any]:
    response = httpx.get(f"{suite.urls['pipeline']}/v1/pipelines/{pipeline_id}", timeout=30)
    assert response.status_code == 200, response.text
    record: dict[str, Any] = response.json()
    return record


def _run(suite: Suite) -> dict[str, Any]:
    started = httpx.post(f"{suite.urls['pipeline']}/v1/pipelines", json=BODY, timeout=30)
    assert started.status_code == 202, started.text
    pipeline_id = started.json()["id"]

    def ended() -> bool:
        return _pipeline(suite, pipeline_id)["state"] in ("SUCCEEDED", "FAILED", "CANCELED")

    wait_for(ended, 600, lambda: f"pipeline did not end:\n{suite.worker.tail()}", 1.0)
    record = _pipeline(suite, pipeline_id)
    assert record["state"] == "SUCCEEDED", (record.get("error"), suite.worker.tail())
    return record


@pytest.fixture(scope="module")
def two_runs(suite: Suite) -> tuple[dict[str, Any], dict[str, Any]]:
    return _run(suite), _run(suite)


def _outputs(record: dict[str, Any], step: str) -> dict[str, Any]:
    outputs: dict[str, Any] = next(s for s in record["steps"] if s["name"] == step)["outputs"]
    return outputs


# what the steps learned; config files and plots may carry names and versions
LEARNED = ("weights.pt", PER_IMAGE_FILE, BACKBONE_FILE, "loss_curve.csv")


def _hashes(store: ObjectStore, artifact: str) -> dict[str, str]:
    name, version = artifact.split(":")
    manifest = ArtifactStore(store).manifest(ArtifactRef(name=name, version=version))
    hashes = {k: v for k, v in manifest.hashes().items() if k in LEARNED}
    assert hashes, f"{artifact} holds none of {LEARNED}"
    return hashes


def _maps(store: ObjectStore, record: dict[str, Any]) -> list[bytes]:
    prefix = _outputs(record, "maps")["maps_prefix"]
    manifest = DatasetMapManifest.from_bytes(store.get_bytes(manifest_key(prefix)))
    return [store.get_bytes(key) for _, key in sorted(manifest.maps.items())]


def test_the_same_request_twice_gives_the_same_detectors_and_map(
    suite: Suite, two_runs: tuple[dict[str, Any], dict[str, Any]]
) -> None:
    # given two pipelines of the same request, one after the other, on this machine
    first, second = two_runs
    # then (issue 21, item 6) the finetune and baseline metrics are identical ...
    for step in ("finetune", "baseline"):
        ours, again = _outputs(first, step)["metrics"], _outputs(second, step)["metrics"]
        assert (ours["map50"], ours["map50_95"]) == (again["map50"], again["map50_95"]), step
        assert ours == again
    # ... because the maps, the pseudo boxes, the backbone and every detector's tensors and
    # per-image records are bit for bit the same
    assert _maps(suite.store, first) == _maps(suite.store, second)
    assert _outputs(first, "pseudo_boxes")["boxes"] == _outputs(second, "pseudo_boxes")["boxes"]
    for step in ("agbp", *DETECTOR_STEPS):
        a, b = _outputs(first, step)["artifact"], _outputs(second, step)["artifact"]
        assert a != b  # two published versions ...
        assert _hashes(suite.store, a) == _hashes(suite.store, b), step  # ... same content


def test_each_training_job_records_its_seed_and_threads(
    suite: Suite, two_runs: tuple[dict[str, Any], dict[str, Any]]
) -> None:
    # when the finetune service's job records are read back
    first, _ = two_runs
    for step in DETECTOR_STEPS:
        job_id = next(s for s in first["steps"] if s["name"] == step)["job_id"]
        job = httpx.get(f"{suite.urls['finetune']}/v1/jobs/{job_id}", timeout=30).json()
        # then
        run = job["outputs"]["run"]
        assert run["seed"] == BODY["seed"]
        assert run["deterministic"] is True
        assert run["torch_threads"] >= 1
        key = job["outputs"]["eval_per_image"]
        records = PerImageEval.from_bytes(suite.store.get_bytes(key), key)
        assert records.run is not None
        assert records.run.model_dump(mode="json") == run


def test_the_report_gives_the_interval_and_the_tiny_preset_caveat(
    suite: Suite, two_runs: tuple[dict[str, Any], dict[str, Any]]
) -> None:
    # when
    first, _ = two_runs
    url = f"{suite.urls['pipeline']}/v1/pipelines/{first['id']}/report"
    report = httpx.get(url, timeout=30)
    # then (issue 21, item 5)
    assert report.status_code == 200
    page = report.text
    assert "95 % interval" in page
    assert "1000 resamples" in page
    assert "validation images (split &#x27;val&#x27;), 1 seed (5)" in page
    assert "ToCoAD preset &#x27;tiny&#x27;" in page
    assert "not meant to be meaningful" in page
    assert "torch thread(s)" in page
