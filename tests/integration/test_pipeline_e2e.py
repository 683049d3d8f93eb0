"""The whole AGSSP pipeline across the four services, over HTTP, through one real worker:

anomaly maps (KeAD, tiny random CLIP) -> pseudo-defect boxes -> AGBP -> AGDP -> finetune ->
promote -> the inference service picks the promoted model up and serves /detect.
Each service reads exactly what the previous one wrote to the shared S3 store.
"""

from __future__ import annotations

import io
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import httpx
import numpy as np
import pytest
from PIL import Image

from shared.storage.base import ObjectStore
from shared.storage.factory import create_store
from tests.integration.suite import ROOT, Proc, start_api, start_worker, suite_env, wait_for
from tests.servers import ServerHandle

pytestmark = pytest.mark.timeout(900)
SIZE = 64
TINY = {"epochs": 1, "batch": 4, "imgsz": 64, "seed": 0}
AGBP = {
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
CATEGORY = {
    "map": "steel surface",
    "good": ["{} without any defect"],
    "defect": ["{} with scratch defect, it appears as a bright line"],
}


def _png(seed: int, shade: int) -> tuple[bytes, tuple[float, float, float, float]]:
    rng = np.random.default_rng(seed)
    image = rng.integers(20, 60, (SIZE, SIZE, 3), dtype=np.uint8)
    x, y = (int(v) for v in rng.integers(4, SIZE // 2, 2))
    w, h = (int(v) for v in rng.integers(10, SIZE // 2 - 2, 2))
    image[y : y + h, x : x + w] = shade
    buffer = io.BytesIO()
    Image.fromarray(image).save(buffer, "PNG")
    box = ((x + w / 2) / SIZE, (y + h / 2) / SIZE, w / SIZE, h / SIZE)
    return buffer.getvalue(), box


def _seed(store: ObjectStore) -> None:
    for i in range(12):  # unlabelled line images
        store.put_bytes(f"lines/steel/images/line_{i:02d}.png", _png(i, 220)[0])
    for i in range(8):  # a few labelled defects, two classes, YOLO format
        png, box = _png(100 + i, 250 if i % 2 == 0 else 140)
        store.put_bytes(f"labelled/images/d_{i}.png", png)
        line = " ".join([str(i % 2), *(f"{v:.6f}" for v in box)])
        store.put_bytes(f"labelled/labels/d_{i}.txt", (line + "\n").encode())
    store.put_bytes("labelled/classes.txt", b"bright\ndark\n")


@dataclass
class Suite:
    urls: dict[str, str]
    worker: Proc
    store: ObjectStore


@pytest.fixture(scope="module")
def suite(
    tmp_path_factory: pytest.TempPathFactory, redis_server: ServerHandle, s3_server: ServerHandle
) -> Iterator[Suite]:
    tmp = tmp_path_factory.mktemp("e2e")
    senv = suite_env(
        tmp,
        redis_url=f"redis://127.0.0.1:{redis_server.port}/0",
        s3_url=s3_server.url,
        lease_ttl_s=120,
    )
    senv.env.update(
        {
            "ANOMALY_MAP_CLIP_MODEL": "tiny-vit",
            "ANOMALY_MAP_ALLOW_RANDOM_WEIGHTS": "true",
            "ANOMALY_MAP_EXTRA_MODEL_CONFIG_DIR": str(ROOT / "tests" / "fixtures"),
            "ANOMALY_MAP_DEVICE": "cpu",
            "PRETRAIN_DEVICE": "cpu",
            "PRETRAIN_NUM_WORKERS": "0",
            "FINETUNE_DEVICE": "cpu",
            "FINETUNE_WORKERS": "0",
            "FINETUNE_WORK_DIR": str(tmp / "ft"),
            "INFERENCE_MODEL_NAME": "steel-det",
            "INFERENCE_POLL_INTERVAL_S": "1",
            "OMP_NUM_THREADS": "1",
        }
    )
    store = create_store(senv.settings)
    _seed(store)
    worker = start_worker(senv, tmp, ["maps", "pretrain", "finetune"], "all")
    procs, urls = [], {}
    try:
        for service in ("anomaly_map", "pretrain", "finetune", "inference"):
            proc, urls[service] = start_api(senv, tmp, service, timeout_s=120)
            procs.append(proc)
        yield Suite(urls, worker, store)
    finally:
        for proc in procs:
            proc.stop()
        worker.stop()


def _job(suite: Suite, service: str, path: str, body: dict[str, Any]) -> dict[str, Any]:
    url = suite.urls[service]
    response = httpx.post(f"{url}{path}", json=body, timeout=60)
    assert response.status_code == 202, response.text
    job_id = response.json()["id"]
    record: dict[str, Any] = {}

    def finished() -> bool:
        record.update(httpx.get(f"{url}/v1/jobs/{job_id}", timeout=30).json())
        return record["state"] in ("SUCCEEDED", "FAILED", "CANCELED")

    wait_for(finished, 400, f"{path} did not finish:\n{suite.worker.tail()}", interval_s=1)
    assert record["state"] == "SUCCEEDED", (record.get("error"), suite.worker.tail())
    return record


def test_maps_to_boxes_to_pretraining_to_detector_to_detect(suite: Suite) -> None:
    # given a category described in words, with no reference images (zero-shot KeAD)
    put = httpx.put(f"{suite.urls['anomaly_map']}/v1/categories/steel", json=CATEGORY, timeout=60)
    assert put.status_code == 201, put.text
    # when the pipeline runs stage by stage
    maps = _job(
        suite,
        "anomaly_map",
        "/v1/anomaly-map-jobs",
        {"category": "steel", "prefix": "lines/steel/images/"},
    )
    maps_prefix = maps["outputs"]["output_prefix"]
    source = {
        "category": "steel",
        "images_prefix": "lines/steel/images/",
        "maps_prefix": maps_prefix,
    }
    boxes = _job(suite, "pretrain", "/v1/pseudo-label-jobs", source)
    agbp = _job(suite, "pretrain", "/v1/pretrain-jobs", {"sources": [source], "config": AGBP})
    agdp = _job(
        suite,
        "finetune",
        "/v1/agdp-jobs",
        {
            "images_prefix": "lines/steel/images/",
            "labels_prefix": boxes["outputs"]["out_prefix"],
            "backbone_artifact": agbp["artifacts"][0],
            "scale": "n",
            "config": TINY,
            "val_fraction": 0.25,
        },
    )
    _job(
        suite,
        "finetune",
        "/v1/datasets",
        {"name": "steel-labelled", "prefix": "labelled/", "format": "yolo", "val_fraction": 0.25},
    )
    tuned = _job(
        suite,
        "finetune",
        "/v1/finetune-jobs",
        {
            "dataset": "steel-labelled",
            "scale": "n",
            "config": TINY,
            "model_name": "steel-det",
            "init": {"kind": "agdp", "artifact": agdp["artifacts"][0]},
        },
    )
    name, version = tuned["artifacts"][0].split(":")
    promoted = httpx.post(
        f"{suite.urls['finetune']}/v1/models/{name}/versions/{version}/promote",
        json={"stage": "production"},
        timeout=30,
    )
    assert promoted.status_code == 200, promoted.text
    # then the inference service follows the stage and detects with that version
    inference = suite.urls["inference"]
    wait_for(
        lambda: httpx.get(f"{inference}/readyz", timeout=10).status_code == 200,
        120,
        "inference never loaded the promoted model",
    )
    detect = httpx.post(
        f"{inference}/detect",
        content=_png(7, 200)[0],
        headers={"content-type": "image/png"},
        timeout=60,
    )
    assert detect.status_code == 200, detect.text
    assert detect.json()["model"]["version"] == version
    # and the lineage of the served model goes back to the maps
    assert maps["outputs"]["total"] == 12
    assert agbp["artifacts"][0].startswith("agbp-yolov8n:")


def test_a_faster_rcnn_on_the_agbp_resnet_is_served_by_detect(suite: Suite) -> None:
    # given maps and pseudo boxes of the same line images
    httpx.put(f"{suite.urls['anomaly_map']}/v1/categories/steel", json=CATEGORY, timeout=60)
    maps = _job(
        suite, "anomaly_map", "/v1/anomaly-map-jobs",
        {"category": "steel", "prefix": "lines/steel/images/"},
    )  # fmt: skip
    source = {
        "category": "steel",
        "images_prefix": "lines/steel/images/",
        "maps_prefix": maps["outputs"]["output_prefix"],
    }
    boxes = _job(suite, "pretrain", "/v1/pseudo-label-jobs", source)
    # when AGBP pretrains a ResNet and the second detector family trains on it
    resnet = {**AGBP, "backbone": "resnet18-test"}
    agbp = _job(suite, "pretrain", "/v1/pretrain-jobs", {"sources": [source], "config": resnet})
    family = {**TINY, "family": "faster-rcnn", "backbone": "resnet18-test"}
    agdp = _job(
        suite, "finetune", "/v1/agdp-jobs",
        {
            "images_prefix": "lines/steel/images/",
            "labels_prefix": boxes["outputs"]["out_prefix"],
            "backbone_artifact": agbp["artifacts"][0],
            "config": family,
            "val_fraction": 0.25,
        },
    )  # fmt: skip
    _job(
        suite, "finetune", "/v1/datasets",
        {"name": "steel-frcnn-set", "prefix": "labelled/", "format": "yolo", "val_fraction": 0.25},
    )  # fmt: skip
    tuned = _job(
        suite, "finetune", "/v1/finetune-jobs",
        {
            "dataset": "steel-frcnn-set", "config": family, "model_name": "steel-frcnn",
            "init": {"kind": "agdp", "artifact": agdp["artifacts"][0]},
        },
    )  # fmt: skip
    # then /detect serves its ONNX export with the same response schema
    name, version = tuned["artifacts"][0].split(":")
    detect = httpx.post(
        f"{suite.urls['inference']}/detect",
        params={"model": name, "version": version, "conf": 0.0},
        content=_png(7, 200)[0],
        headers={"content-type": "image/png"},
        timeout=120,
    )
    assert detect.status_code == 200, detect.text
    body = detect.json()
    assert body["model"]["name"] == name
    assert body["model"]["version"] == version
    assert body["detections"], "a conf-0 request returns the graph's boxes"
    assert {d["class_name"] for d in body["detections"]} <= {"bright", "dark"}
    # and a backbone the family does not take is refused before any job is queued
    refused = httpx.post(
        f"{suite.urls['finetune']}/v1/finetune-jobs",
        json={"dataset": "steel-frcnn-set", "model_name": "bad",
              "config": {**family, "backbone": "yolov8n"}},
        timeout=30,
    )  # fmt: skip
    assert refused.status_code == 422, refused.text
