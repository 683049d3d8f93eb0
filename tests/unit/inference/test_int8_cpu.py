"""INT8 versions against the serving CPU (issue 27): a scheme that saturates without VNNI is
never served as is. Its FP32 source serves in its place (``/v1/models`` says so), or the
version is refused with 503 naming the missing CPU feature.

The CPU is injected: these tests run on hosts with and without VNNI alike; the real-CPU
variant skips with the reason where the CPU has VNNI.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import pytest
from fastapi.testclient import TestClient

from services.finetune.ml.yolov8.quantize import quantize_int8
from services.inference.api.main import create_app
from services.inference.ml.letterbox import to_input_tensor
from services.inference.stores.models import ModelKey, ModelRegistry
from shared.errors import UnavailableError
from shared.ml.cpu_features import CpuFeatures, host_cpu
from shared.schemas.detector_artifact import INT8_KIND, ONNX_FILE, U8S8, U8S8_RR7
from shared.storage.artifacts import ArtifactStore
from shared.storage.filesystem import FileObjectStore
from tests.unit.inference.conftest import blocky_image
from tests.unit.inference.serving import AVX2_ONLY, MODEL, encode, publish, settings_for

WITH_VNNI = CpuFeatures.of([*AVX2_ONLY.flags, "avx512f", "avx512_vnni"], model="Xeon (VNNI)")


def _publish_int8(
    store: FileObjectStore,
    version: str,
    model: Path | bytes,
    *,
    scheme: str | None,
    source: str | None = "fp32",
    stage: str | None = "production",
) -> None:
    """An INT8 version as the quantise job publishes it (``scheme`` None: a legacy one)."""
    metadata: dict[str, Any] = {"kind": INT8_KIND, "lineage": {}}
    if scheme is not None:
        metadata["int8_scheme"] = scheme
    if source is not None:
        metadata["lineage"]["quantized_from"] = f"{MODEL}:{source}"
    artifacts = ArtifactStore(store)
    artifacts.publish(MODEL, {ONNX_FILE: model}, version=version, metadata=metadata)
    if stage is not None:
        artifacts.promote(MODEL, version, stage)


@pytest.fixture
def store(tmp_path: Path) -> FileObjectStore:
    return FileObjectStore(tmp_path / "store")


def _registry(store: FileObjectStore, tmp_path: Path, cpu: CpuFeatures) -> ModelRegistry:
    return ModelRegistry(ArtifactStore(store), tmp_path / "cache", cpu)


def test_an_unsafe_int8_version_is_served_by_its_fp32_source_on_a_cpu_without_vnni(
    store: FileObjectStore, tmp_path: Path
) -> None:
    # given an FP32 version and a full-range U8S8 version quantised from it
    publish(store, "fp32", b"fp32-onnx", stage=None)
    _publish_int8(store, "int8", b"int8-onnx", scheme=U8S8)
    # when a host without VNNI fetches the INT8 version
    files = _registry(store, tmp_path, AVX2_ONLY).fetch(ModelKey(MODEL, "int8"))
    # then it gets the FP32 bytes, still under the INT8 key, and the reason names the feature
    assert files.key == ModelKey(MODEL, "int8")
    assert files.path.read_bytes() == b"fp32-onnx"
    assert files.fallback is not None
    assert files.fallback.version == "fp32"
    assert "avx512_vnni" in files.fallback.reason


@pytest.mark.parametrize(
    ("scheme", "cpu"),
    [(U8S8_RR7, AVX2_ONLY), (U8S8, WITH_VNNI), (None, WITH_VNNI)],
    ids=["safe-scheme-without-vnni", "u8s8-with-vnni", "legacy-with-vnni"],
)
def test_an_int8_version_exact_on_the_cpu_is_served_as_it_is(
    store: FileObjectStore, tmp_path: Path, scheme: str | None, cpu: CpuFeatures
) -> None:
    publish(store, "fp32", b"fp32-onnx", stage=None)
    _publish_int8(store, "int8", b"int8-onnx", scheme=scheme)
    files = _registry(store, tmp_path, cpu).fetch(ModelKey(MODEL, "int8"))
    assert files.fallback is None
    assert files.path.read_bytes() == b"int8-onnx"


@pytest.mark.parametrize("source", [None, "deleted"], ids=["no-lineage", "source-deleted"])
def test_a_legacy_int8_version_without_an_fp32_source_is_refused_naming_the_feature(
    store: FileObjectStore, tmp_path: Path, source: str | None
) -> None:
    # given an INT8 version that records no scheme (published before schemes were recorded)
    _publish_int8(store, "int8", b"int8-onnx", scheme=None, source=source)
    # when / then
    with pytest.raises(UnavailableError) as info:
        _registry(store, tmp_path, AVX2_ONLY).fetch(ModelKey(MODEL, "int8"))
    assert info.value.code == "int8_unsupported_cpu"
    assert "avx512_vnni" in info.value.message
    assert "AMD EPYC Processor" in info.value.message


def test_this_cpu_serves_a_u8s8_version_by_its_fp32_source_when_it_lacks_vnni(
    store: FileObjectStore, tmp_path: Path
) -> None:
    cpu = host_cpu()
    if not cpu.x86_64 or cpu.vnni:
        vnni = ", ".join(sorted(f for f in cpu.flags if "vnni" in f)) or "not x86-64"
        pytest.skip(f"this CPU ({cpu.model}) runs U8S8 exactly ({vnni})")
    publish(store, "fp32", b"fp32-onnx", stage=None)
    _publish_int8(store, "int8", b"int8-onnx", scheme=U8S8)
    files = ModelRegistry(ArtifactStore(store), tmp_path / "cache").fetch(ModelKey(MODEL, "int8"))
    assert files.fallback is not None


@pytest.fixture(scope="module")
def u8s8_model(yolo_files: Any, tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("u8s8") / "model.onnx"
    rng, size = np.random.default_rng(5), yolo_files.imgsz
    calibration = [to_input_tensor([blocky_image(rng, size, size)]) for _ in range(2)]
    return quantize_int8(yolo_files.dynamic_onnx, out, calibration, scheme=U8S8)


def _client(tmp_path: Path, store: FileObjectStore, cpu: CpuFeatures) -> TestClient:
    settings = settings_for(tmp_path, intra_op_threads=1)
    return TestClient(create_app(settings, store=store, cpu=cpu))


def test_the_api_serves_the_fp32_source_and_says_so_in_v1_models(
    tmp_path: Path, store: FileObjectStore, yolo_files: Any, u8s8_model: Path
) -> None:
    # given the real exports: FP32 and its U8S8 copy in production, on a CPU without VNNI
    publish(store, "fp32", yolo_files.dynamic_onnx, stage=None)
    _publish_int8(store, "int8", u8s8_model, scheme=U8S8)
    image = encode(np.full((64, 64, 3), 90, np.uint8))
    with _client(tmp_path, store, AVX2_ONLY) as client:
        # when
        detect = client.post("/v1/detect", content=image, headers={"content-type": "image/png"})
        models = client.get("/v1/models").json()
    # then /detect answers, and /v1/models says which FP32 version runs and why
    assert detect.status_code == 200, detect.text
    (default,) = models["resident"]
    assert default["version"] == "int8"
    assert default["fallback"]["version"] == "fp32"
    assert "avx512_vnni" in default["fallback"]["reason"]


def test_the_api_answers_503_naming_the_cpu_feature_when_there_is_no_fp32_version(
    tmp_path: Path, store: FileObjectStore, yolo_files: Any, u8s8_model: Path
) -> None:
    # given a legacy INT8 version (no scheme, no lineage) and, by the local-file path, the
    # same export opened directly: both unsafe on a CPU without VNNI
    publish(store, "fp32", yolo_files.dynamic_onnx)
    _publish_int8(store, "int8", u8s8_model, scheme=None, source=None, stage=None)
    image = encode(np.full((64, 64, 3), 90, np.uint8))
    with _client(tmp_path, store, AVX2_ONLY) as client:
        # when the INT8 version is asked for by version
        pinned = client.post(
            "/v1/detect",
            content=image,
            params={"version": "int8"},
            headers={"content-type": "image/png"},
        )
        models = client.get("/v1/models").json()
    # then 503, naming the missing feature; the FP32 default still serves
    assert pinned.status_code == 503, pinned.text
    assert pinned.json()["code"] == "int8_unsupported_cpu"
    assert "avx512_vnni" in pinned.json()["detail"]
    assert [m["version"] for m in models["resident"]] == ["fp32"]
    assert models["resident"][0]["fallback"] is None


def test_a_local_unsafe_int8_file_is_refused_naming_the_cpu_feature(
    tmp_path: Path, store: FileObjectStore, u8s8_model: Path
) -> None:
    settings = settings_for(tmp_path, local_model_path=str(u8s8_model), intra_op_threads=1)
    with TestClient(create_app(settings, store=store, cpu=AVX2_ONLY)) as client:
        ready = client.get("/readyz")
        models = client.get("/v1/models").json()
    assert ready.status_code == 503
    assert "avx512_vnni" in models["followed"]["error"]
