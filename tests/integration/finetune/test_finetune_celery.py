"""Finetune service end to end: real redis, moto S3, a `finetune` worker and the API over HTTP.

Dataset import, AGDP on pseudo labels from an AGBP artifact, finetuning from the AGDP
artifact and an evaluation run as Celery jobs (1 epoch, 64 px YOLOv8n); the registered
model's ONNX file then runs in onnxruntime, which is the contract the inference service reads.
"""

from __future__ import annotations

import io
import json
import re
import urllib.error
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import cv2
import numpy as np
import onnxruntime as ort
import pytest
import torch

from shared.schemas.artifacts import ArtifactRef
from shared.schemas.pseudo_labels import (
    CLASSES_FILE,
    PseudoLabelManifest,
    classes_text,
    file_key,
    label_key,
    manifest_key,
)
from shared.storage.artifacts import ArtifactStore
from shared.storage.base import ObjectStore
from shared.storage.factory import create_store
from tests.integration.suite import Proc, SuiteEnv, start_api, start_worker, suite_env, wait_for
from tests.servers import ServerHandle

pytestmark = pytest.mark.timeout(300)

TINY = {"epochs": 1, "batch": 4, "imgsz": 64, "seed": 0}
AGBP_VERSION = "20260101T000000-0000abcd"
SIZE = 64
PSEUDO = "pseudo/steel/pl-1/"  # output prefix of the pseudo-label job the AGDP job reads


def _image(rng: np.random.Generator, shade: int) -> tuple[bytes, tuple[float, ...]]:
    """A dark noisy PNG with one bright rectangle; returns it and its YOLO box (cx cy w h)."""
    image = rng.integers(20, 60, (SIZE, SIZE, 3), dtype=np.uint8)
    w, h = (int(v) for v in rng.integers(SIZE // 4, SIZE // 2, 2))
    x, y = (int(v) for v in rng.integers(0, SIZE - max(w, h), 2))
    image[y : y + h, x : x + w] = shade
    ok, png = cv2.imencode(".png", image)
    assert ok
    box = ((x + w / 2) / SIZE, (y + h / 2) / SIZE, w / SIZE, h / SIZE)
    return png.tobytes(), box


def _line(class_id: int, box: tuple[float, ...]) -> bytes:
    return (" ".join([str(class_id), *(f"{v:.6f}" for v in box)]) + "\n").encode()


def _seed_store(store: ObjectStore) -> None:
    rng = np.random.default_rng(0)
    images = {}
    for i in range(8):  # AGDP input: images + a pseudo-label job's output
        png, box = _image(rng, 230)
        store.put_bytes(f"uploads/steel/img_{i}.png", png)
        store.put_bytes(label_key(PSEUDO, f"img_{i}"), _line(0, box))
        images[f"img_{i}"] = f"uploads/steel/img_{i}.png"
    store.put_bytes(file_key(PSEUDO, CLASSES_FILE), classes_text())
    manifest = PseudoLabelManifest(  # as the pretrain service's pseudo-label job writes it
        job_id="pl-1",
        category="steel",
        images_prefix="uploads/steel/",
        maps_prefix="maps/steel/m-1/",
        threshold=0.5,
        count=len(images),
        images_with_boxes=len(images),
        images=images,
    )
    store.put_bytes(manifest_key(PSEUDO), manifest.to_bytes())
    for i in range(8):  # a two-class YOLO dataset to finetune on
        png, box = _image(rng, 250 if i % 2 == 0 else 150)
        store.put_bytes(f"uploads/shapes/images/s_{i}.png", png)
        store.put_bytes(f"uploads/shapes/labels/s_{i}.txt", _line(i % 2, box))
    store.put_bytes("uploads/shapes/classes.txt", b"light\ndark\n")
    _publish_agbp(store)


def _publish_agbp(store: ObjectStore) -> None:
    from services.finetune.ml.yolov8.detector import build_detector

    state = {
        k: v
        for k, v in build_detector("n", 1, seed=5).model.state_dict().items()
        if re.match(r"^model\.[0-9]\.", k)
    }
    buffer = io.BytesIO()
    torch.save(state, buffer)
    meta = {"kind": "agbp", "backbone": "yolov8n", "key_names": "ultralytics-detector"}
    ArtifactStore(store).publish(
        "agbp-yolov8n", {"backbone.pt": buffer.getvalue()}, version=AGBP_VERSION, metadata=meta
    )


def _call(url: str, body: dict[str, Any] | None = None) -> tuple[int, dict[str, Any]]:
    data = None if body is None else json.dumps(body).encode()
    request = urllib.request.Request(url, data=data, headers={"content-type": "application/json"})
    try:
        with urllib.request.urlopen(request, timeout=30) as response:
            return response.status, json.loads(response.read())
    except urllib.error.HTTPError as err:
        return err.code, json.loads(err.read())


@dataclass
class Pipeline:
    url: str
    store: ObjectStore
    worker: Proc
    jobs: dict[str, dict[str, Any]]


def _run(pipeline: Pipeline, step: str, path: str, body: dict[str, Any]) -> dict[str, Any]:
    status, record = _call(pipeline.url + path, body)
    assert status == 202, record
    job_url = f"{pipeline.url}/v1/jobs/{record['id']}"

    def finished() -> bool:
        record.update(_call(job_url)[1])
        return record["state"] in ("SUCCEEDED", "FAILED", "CANCELED")

    wait_for(finished, 150, f"{step} did not finish:\n{pipeline.worker.tail()}")
    pipeline.jobs[step] = record
    return record


@pytest.fixture(scope="module")
def pipeline(
    tmp_path_factory: pytest.TempPathFactory, redis_server: ServerHandle, s3_server: ServerHandle
) -> Iterator[Pipeline]:
    tmp = tmp_path_factory.mktemp("finetune-it")
    senv: SuiteEnv = suite_env(
        tmp,
        redis_url=f"redis://127.0.0.1:{redis_server.port}/0",
        s3_url=s3_server.url,
        lease_ttl_s=60,
    )
    senv.env.update(
        {"FINETUNE_DEVICE": "cpu", "FINETUNE_WORKERS": "0", "FINETUNE_WORK_DIR": str(tmp / "work")}
    )
    store = create_store(senv.settings)
    _seed_store(store)
    worker = start_worker(senv, tmp, ["finetune"], "ft")
    api, url = start_api(senv, tmp, "finetune")
    try:
        yield Pipeline(url, store, worker, {})
    finally:
        api.stop()
        worker.stop()


@pytest.fixture(scope="module")
def finished(pipeline: Pipeline) -> Pipeline:
    """Import -> AGDP -> finetune -> evaluation, each waited for."""
    imported = _run(
        pipeline,
        "import",
        "/v1/datasets",
        {"name": "shapes", "prefix": "uploads/shapes/", "format": "yolo", "val_fraction": 0.25},
    )
    agdp = _run(
        pipeline,
        "agdp",
        "/v1/agdp-jobs",
        {
            "images_prefix": "uploads/steel/",
            "labels_prefix": PSEUDO,
            "backbone_artifact": "agbp-yolov8n",
            "scale": "n",
            "config": TINY,
            "val_fraction": 0.25,
        },
    )
    body = {"dataset": "shapes", "scale": "n", "config": TINY, "model_name": "shapes-n"}
    if agdp["artifacts"]:
        body["init"] = {"kind": "agdp", "artifact": agdp["artifacts"][0]}
    _run(pipeline, "finetune", "/v1/finetune-jobs", body)
    _run(pipeline, "evaluation", "/v1/evaluations", {"model": "shapes-n", "dataset": "shapes"})
    assert imported
    return pipeline


@pytest.mark.parametrize("step", ["import", "agdp", "finetune", "evaluation"])
def test_every_job_succeeds(finished: Pipeline, step: str) -> None:
    # then
    record = finished.jobs[step]
    assert record["state"] == "SUCCEEDED", (record["error"], finished.worker.tail())
    assert record["progress"] == 100.0
    assert record["artifacts"]


def test_agdp_and_finetune_publish_detectors_with_lineage(finished: Pipeline) -> None:
    # given
    artifacts = ArtifactStore(finished.store)
    agdp = finished.jobs["agdp"]["artifacts"][0]
    name, version = finished.jobs["finetune"]["artifacts"][0].split(":")
    # when
    manifest = artifacts.manifest(ArtifactRef(name=name, version=version))
    # then
    assert {"model.onnx", "classes.json", "model.pt", "config.yaml", "metrics.json"} <= set(
        manifest.files
    )
    chain = [entry["artifact"] for entry in manifest.metadata["lineage"]["chain"]]
    assert chain == [agdp, f"agbp-yolov8n:{AGBP_VERSION}"]
    assert finished.jobs["finetune"]["outputs"]["transfer"]["fresh"] >= 6


def test_registered_onnx_model_detects_with_onnxruntime(finished: Pipeline) -> None:
    # given the model as the inference service would fetch it
    status, detail = _call(f"{finished.url}/v1/models/shapes-n")
    assert status == 200
    version = detail["versions"][-1]["version"]
    ref = ArtifactRef(name="shapes-n", version=version)
    onnx = ArtifactStore(finished.store).get_file_bytes(ref, "model.onnx")
    classes = json.loads(ArtifactStore(finished.store).get_file_bytes(ref, "classes.json"))
    session = ort.InferenceSession(onnx, providers=["CPUExecutionProvider"])
    png = finished.store.get_bytes("uploads/shapes/images/s_0.png")
    bgr = cv2.imdecode(np.frombuffer(png, np.uint8), cv2.IMREAD_COLOR)
    assert bgr is not None
    rgb = bgr[..., ::-1]
    batch = np.ascontiguousarray(np.stack([rgb, rgb]).transpose(0, 3, 1, 2), np.float32) / 255
    # when a batch of two goes through (dynamic batch axis)
    (output,) = session.run(None, {"images": batch})
    # then: (batch, 4 box values + one score per class, anchors), best box non-empty
    assert classes == ["light", "dark"]
    assert output.shape[:2] == (2, 4 + len(classes))
    scores = output[0, 4:].max(axis=0)
    best = output[0, :4, int(scores.argmax())]
    assert 0.0 <= float(scores.max()) <= 1.0
    assert best[2] > 0
    assert best[3] > 0
    names = session.get_modelmeta().custom_metadata_map["names"]
    assert "'light'" in names
    assert "'dark'" in names


def test_evaluation_is_listed_with_the_model_version(finished: Pipeline) -> None:
    # given
    version = finished.jobs["finetune"]["artifacts"][0].split(":")[1]
    # when
    status, body = _call(f"{finished.url}/v1/models/shapes-n/versions/{version}")
    # then
    assert status == 200
    assert body["evaluation_results"][0]["split"] == "val"
    assert set(body["evaluation_results"][0]["per_class"]) == {"light", "dark"}


def test_promotion_moves_production(finished: Pipeline) -> None:
    # given
    version = finished.jobs["finetune"]["artifacts"][0].split(":")[1]
    # when
    status, body = _call(
        f"{finished.url}/v1/models/shapes-n/versions/{version}/promote", {"stage": "production"}
    )
    # then
    assert status == 200, body
    stage = ArtifactStore(finished.store).stage("shapes-n", "production")
    assert stage is not None
    assert stage.version == version


def test_bad_requests_get_a_4xx_and_the_api_keeps_serving(pipeline: Pipeline) -> None:
    # when
    unknown_key = _call(
        f"{pipeline.url}/v1/finetune-jobs",
        {"dataset": "shapes", "model_name": "x", "config": {"epochz": 1}},
    )
    unknown_model = _call(f"{pipeline.url}/v1/models/ghost")
    health = _call(f"{pipeline.url}/healthz")
    # then
    assert unknown_key[0] == 422
    assert unknown_key[1]["code"] == "unknown_config_keys"
    assert unknown_model[0] == 404
    assert health[0] == 200
