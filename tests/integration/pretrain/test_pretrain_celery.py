"""Pretrain jobs end to end: the pretrain API over uvicorn, real `pretrain` Celery workers,
redis-server and moto's S3 server.

The anomaly maps are synthetic (numpy blobs written in the anomaly_map service's dataset-map
output layout by ``services.pretrain.stores.synthetic``): services never import each other, and the
map job has its own tests.
"""

from __future__ import annotations

import json
import urllib.error
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
import torch

from services.pretrain.stores.synthetic import write_synthetic_source
from shared.jobs.store import JobStore
from shared.schemas.artifacts import ArtifactRef
from shared.schemas.jobs import JobRecord, JobState
from shared.storage.artifacts import ArtifactStore
from shared.storage.factory import create_store
from tests.integration.suite import (
    Proc,
    SuiteEnv,
    start_api,
    start_worker,
    suite_env,
    wait_for,
)
from tests.servers import ServerHandle

pytestmark = pytest.mark.timeout(300)

MAP_JOB = "20260101T120000-1a2b3c4d"
CATEGORIES = ("pipe", "billet")
# 24 pairs, batch 4: 6 steps per epoch; epoch-end checkpoints only.
CONFIG = {
    "backbone": "yolov8n",
    "batch_size": 4,
    "input_size": 64,
    "resize_base": 64,
    "amp": False,
    "checkpoint_every": 0,
    "num_workers": 0,
}


@dataclass
class Stack:
    senv: SuiteEnv
    jobs: JobStore
    url: str
    workers: dict[str, Proc]

    def job(self, job_id: str) -> JobRecord:
        return self.jobs.get(job_id)

    def logs(self) -> str:
        return "\n".join(f"--- {name}\n{proc.tail(15)}" for name, proc in self.workers.items())


@pytest.fixture(scope="module")
def stack(
    tmp_path_factory: pytest.TempPathFactory, redis_server: ServerHandle, s3_server: ServerHandle
) -> Iterator[Stack]:
    tmp = tmp_path_factory.mktemp("pretrain-it")
    base = suite_env(
        tmp, redis_url=f"redis://127.0.0.1:{redis_server.port}/0", s3_url=s3_server.url
    )
    extra = {
        "PRETRAIN_DEVICE": "cpu",
        "PRETRAIN_NUM_WORKERS": "0",
        "OMP_NUM_THREADS": "1",
        "PRETRAIN_CHECKPOINT_MIN_INTERVAL_S": "0",  # a checkpoint per epoch: the test kills after one
    }
    senv = SuiteEnv(dict(base.env, **extra), base.settings)
    store = create_store(senv.settings)
    for category in CATEGORIES:
        write_synthetic_source(
            store,
            images_prefix=f"img/{category}/",
            output_prefix=f"maps/{category}/{MAP_JOB}/",
            category=category,
            count=12,
            size=(96, 80),
            grid=6,
            job_id=MAP_JOB,
        )
    store.put_bytes("img/pipe/lonely.png", store.get_bytes("img/pipe/pipe_0000.png"))
    api, url = start_api(senv, tmp, "pretrain")
    workers = {name: start_worker(senv, tmp, ["pretrain"], name) for name in ("w1", "w2")}
    try:
        yield Stack(senv, JobStore(store), url, workers)
    finally:
        for proc in [api, *workers.values()]:
            proc.stop()


def _post(url: str, body: dict[str, Any] | None = None) -> tuple[int, dict[str, Any]]:
    data = json.dumps(body or {}).encode()
    request = urllib.request.Request(
        url, data=data, method="POST", headers={"Content-Type": "application/json"}
    )
    try:
        with urllib.request.urlopen(request, timeout=30) as response:
            return response.status, json.loads(response.read())
    except urllib.error.HTTPError as err:
        return err.code, json.loads(err.read())


def _agbp_job(stack: Stack, name: str, epochs: int) -> str:
    sources = [
        {"category": c, "images_prefix": f"img/{c}/", "maps_prefix": f"maps/{c}/{MAP_JOB}/"}
        for c in CATEGORIES
    ]
    body = {"sources": sources, "config": CONFIG | {"epochs": epochs}, "artifact_name": name}
    status, record = _post(f"{stack.url}/v1/pretrain-jobs", body)
    assert status == 202, record
    return str(record["id"])


def test_agbp_resumes_after_its_worker_is_killed_and_publishes_once(
    stack: Stack, tmp_path: Path
) -> None:
    from ultralytics.nn.tasks import DetectionModel

    # given: a 3-epoch job that finished its first epoch on some worker
    job_id = _agbp_job(stack, "agbp-it", epochs=3)
    wait_for(
        lambda: stack.job(job_id).metrics.get("checkpoint_step", 0) >= 6,
        150,
        f"no epoch finished:\n{stack.logs()}",
    )
    # when that worker dies without any chance to clean up
    owner = str(stack.job(job_id).worker).split("@")[0]
    stack.workers[owner].kill()
    killed = stack.job(job_id)
    wait_for(
        lambda: stack.job(job_id).state == JobState.SUCCEEDED,
        150,
        f"not resumed:\n{stack.logs()}\n{stack.job(job_id).error}",
    )
    # then: another worker continued the history and published exactly one version
    final = stack.job(job_id)
    history = final.outputs["history"]
    assert killed.state == JobState.RUNNING
    assert final.resumed >= 1
    assert final.worker != killed.worker
    assert [h["epoch"] for h in history] == [1.0, 2.0, 3.0]
    reported = int(killed.metrics["epoch"])
    assert history[reported - 1]["loss"] == pytest.approx(killed.metrics["loss"])
    assert ArtifactStore(stack.jobs.store).versions("agbp-it") == [job_id]
    assert final.outputs["pairing"][0]["images_without_maps_examples"] == ["img/pipe/lonely.png"]
    # and the weights load into a YOLOv8n detector, every tensor matched
    raw = ArtifactStore(stack.jobs.store).get_file_bytes(
        ArtifactRef(name="agbp-it", version=job_id), "backbone.pt"
    )
    (tmp_path / "backbone.pt").write_bytes(raw)
    weights = torch.load(tmp_path / "backbone.pt", weights_only=True)
    own = DetectionModel("yolov8n.yaml", ch=3, nc=1, verbose=False).state_dict()  # type: ignore[no-untyped-call]
    assert all(k in own and own[k].shape == v.shape for k, v in weights.items())


def test_a_running_agbp_job_can_be_canceled_over_http(stack: Stack) -> None:
    # given: a long job that started training
    job_id = _agbp_job(stack, "agbp-it-cancel", epochs=50)
    wait_for(
        lambda: stack.job(job_id).message.startswith("epoch"),
        150,
        f"training did not start:\n{stack.logs()}",
    )
    # when
    status, _ = _post(f"{stack.url}/v1/jobs/{job_id}/cancel")
    wait_for(lambda: stack.job(job_id).terminal, 60, stack.logs())
    # then
    assert status == 202
    assert stack.job(job_id).state == JobState.CANCELED
    assert ArtifactStore(stack.jobs.store).versions("agbp-it-cancel") == []


def test_pseudo_label_job_writes_yolo_labels_and_coco(stack: Stack) -> None:
    # given
    body = {
        "category": "pipe",
        "images_prefix": "img/pipe/",
        "maps_prefix": f"maps/pipe/{MAP_JOB}/",
    }
    # when
    status, record = _post(f"{stack.url}/v1/pseudo-label-jobs", body)
    job_id = record["id"]
    wait_for(lambda: stack.job(job_id).terminal, 120, stack.logs())
    # then
    final = stack.job(job_id)
    out = final.outputs.get("out_prefix", "")
    store = stack.jobs.store
    coco = json.loads(store.get_bytes(final.outputs["annotations"]))
    assert status == 202
    assert final.state == JobState.SUCCEEDED, final.error
    assert len([k for k in store.list(f"{out}labels/") if k.endswith(".txt")]) == 12
    assert {(i["width"], i["height"]) for i in coco["images"]} == {(96, 80)}
    assert final.outputs["images_with_boxes"] == 8  # every third synthetic image is normal
    assert store.exists(f"{out}manifest.json")


def test_pseudo_label_job_with_the_auto_gate_records_it(stack: Stack) -> None:
    # given: scores.csv gives 0.9 to the 8 images with a blob and 0.1 to the 4 normal ones
    body = {
        "category": "billet",
        "images_prefix": "img/billet/",
        "maps_prefix": f"maps/billet/{MAP_JOB}/",
        "gate": "auto",
    }
    # when
    status, record = _post(f"{stack.url}/v1/pseudo-label-jobs", body)
    job_id = record["id"]
    wait_for(lambda: stack.job(job_id).terminal, 120, stack.logs())
    # then
    final = stack.job(job_id)
    out = final.outputs
    assert status == 202
    assert final.state == JobState.SUCCEEDED, final.error
    assert (out["gate"], out["gate_score_source"]) == ("auto", "scores")
    assert 0.1 < out["gate_threshold"] < 0.9
    assert out["gate_defect_share"] == pytest.approx(2 / 3, abs=0.01)
    assert (out["gate_passed_images"], out["images_with_boxes"]) == (8, 8)
    assert out["share_with_boxes"] == pytest.approx(2 / 3)
    assert out["boxes_per_image"] > 0


def test_the_server_refuses_unknown_config_keys_and_keeps_serving(stack: Stack) -> None:
    # when
    source = {"category": "x", "images_prefix": "a/", "maps_prefix": "b/"}
    status, body = _post(
        f"{stack.url}/v1/pretrain-jobs", {"sources": [source], "config": {"epoch": 3}}
    )
    again, _ = _post(f"{stack.url}/v1/pretrain-jobs", {"sources": []})
    # then
    assert status == 422
    assert body["code"] == "unknown_config_keys"
    assert "did you mean 'epochs'" in body["detail"]
    assert again == 422
