"""Fixtures for the inference service over real HTTP: two ONNX exports and a served API."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from shared.schemas.detector_artifact import CLASSES_FILE, ONNX_FILE, classes_json
from shared.storage.artifacts import ArtifactStore
from shared.storage.factory import create_store
from tests.integration.inference.support import Exports, Publish, Serve
from tests.integration.suite import Proc, SuiteEnv, start_api, suite_env, wait_for
from tests.servers import ServerHandle

MODEL = "line-detector"
IMGSZ = 160  # the smallest size that keeps YOLOv8n's three strides meaningful; fast on CPU
# The inference API never talks to the broker (no jobs); an unreachable URL proves it.
UNUSED_REDIS = "redis://127.0.0.1:9/0"


@pytest.fixture(scope="session")
def exports(tmp_path_factory: pytest.TempPathFactory) -> Exports:
    import onnx
    from ultralytics.models.yolo.model import YOLO

    out = tmp_path_factory.mktemp("exports")
    model: Any = YOLO("yolov8n.yaml")
    model.model.pt_path = str(out / "v1.pt")  # the exporter writes next to this path
    v1 = Path(model.export(format="onnx", imgsz=IMGSZ, dynamic=True, simplify=False))
    proto = onnx.load(str(v1))
    proto.metadata_props.add(key="description", value="retrained")
    v2 = out / "v2.onnx"
    onnx.save(proto, str(v2))
    return Exports(v1=v1, v2=v2)


@pytest.fixture
def senv(tmp_path: Path, s3_server: ServerHandle) -> SuiteEnv:
    return suite_env(tmp_path, redis_url=UNUSED_REDIS, s3_url=s3_server.url)


@pytest.fixture
def publish(senv: SuiteEnv) -> Publish:
    """Publish and promote to production, as the finetune service does with a trained model."""
    artifacts = ArtifactStore(create_store(senv.settings))

    def publish_and_promote(version: str, path: Path) -> None:
        classes = classes_json([f"class{i}" for i in range(80)])
        artifacts.publish(MODEL, {ONNX_FILE: path, CLASSES_FILE: classes}, version=version)
        artifacts.promote(MODEL, version, "production")

    return publish_and_promote


@pytest.fixture
def serve(senv: SuiteEnv, tmp_path: Path) -> Iterator[Serve]:
    """Start ``agssp serve inference`` with extra INFERENCE_* variables; stop it afterwards."""
    started: list[Proc] = []

    def start(**variables: str) -> tuple[Proc, str]:
        env = dict(senv.env, INFERENCE_MODEL_NAME=MODEL, INFERENCE_INTRA_OP_THREADS="1")
        env.update({f"INFERENCE_{k.upper()}": v for k, v in variables.items()})
        proc, url = start_api(SuiteEnv(env, senv.settings), tmp_path, "inference")
        started.append(proc)
        wait_for(lambda: _ready(url), 60, f"inference never became ready:\n{proc.tail()}")
        return proc, url

    yield start
    for proc in started:
        proc.stop()


def _ready(url: str) -> bool:
    try:
        return httpx.get(f"{url}/readyz", timeout=5).status_code == 200
    except httpx.HTTPError:
        return False
