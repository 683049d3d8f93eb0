"""ModelRegistry: stage pointers with LATEST fallback, 404s, verified cached copies, local files."""

from __future__ import annotations

import hashlib
from pathlib import Path

import pytest

from services.inference.stores.models import (
    ModelKey,
    ModelRegistry,
    ModelTarget,
    local_model,
)
from shared.errors import ConflictError, InvalidInputError, NotFoundError
from shared.schemas.detector_artifact import CLASSES_FILE, ONNX_FILE
from shared.storage.artifacts import ArtifactStore
from shared.storage.filesystem import FileObjectStore
from tests.unit.inference.serving import MODEL, publish

PRODUCTION = ModelTarget(MODEL, stage="production", fallback=True)


@pytest.fixture
def store(tmp_path: Path) -> FileObjectStore:
    return FileObjectStore(tmp_path / "store")


@pytest.fixture
def registry(store: FileObjectStore, tmp_path: Path) -> ModelRegistry:
    return ModelRegistry(ArtifactStore(store), tmp_path / "cache")


def test_a_stage_resolves_to_its_promoted_version(
    store: FileObjectStore, registry: ModelRegistry
) -> None:
    # given v1 in production and a newer v2 not promoted
    publish(store, "v1", b"onnx-1")
    publish(store, "v2", b"onnx-2", stage=None)

    # when / then
    assert registry.resolve(PRODUCTION) == ModelKey(MODEL, "v1")
    assert registry.resolve(ModelTarget(MODEL, stage="latest")) == ModelKey(MODEL, "v2")


def test_an_unset_stage_falls_back_to_latest_only_when_allowed(
    store: FileObjectStore, registry: ModelRegistry
) -> None:
    # given a model never promoted
    publish(store, "v1", b"onnx-1", stage=None)

    # when / then
    assert registry.resolve(PRODUCTION) == ModelKey(MODEL, "v1")
    with pytest.raises(NotFoundError) as info:
        registry.resolve(ModelTarget(MODEL, stage="production"))
    assert info.value.code == "model_stage_not_found"


@pytest.mark.parametrize(
    ("target", "code"),
    [
        (ModelTarget("nobody", stage="production", fallback=True), "model_not_found"),
        (ModelTarget("nobody", version="v1"), "model_not_found"),
        (ModelTarget(MODEL, version="v9"), "model_version_not_found"),
    ],
)
def test_unknown_models_and_versions_are_not_found(
    store: FileObjectStore, registry: ModelRegistry, target: ModelTarget, code: str
) -> None:
    publish(store, "v1", b"onnx-1")
    with pytest.raises(NotFoundError) as info:
        registry.resolve(target)
    assert info.value.code == code


def test_names_the_registry_refuses_are_invalid_input(registry: ModelRegistry) -> None:
    with pytest.raises(InvalidInputError):
        registry.resolve(ModelTarget("../etc", version="v1"))


def test_fetch_writes_a_verified_copy_and_reads_class_names(
    store: FileObjectStore, registry: ModelRegistry
) -> None:
    # given
    publish(store, "v1", b"onnx-bytes", classes=["scratch", "dent"])

    # when
    files = registry.fetch(ModelKey(MODEL, "v1"))

    # then
    assert files.path.read_bytes() == b"onnx-bytes"
    assert files.names == {0: "scratch", 1: "dent"}
    assert (files.runtime, files.source) == ("onnx", "registry")


def test_fetch_replaces_a_tampered_cached_copy(
    store: FileObjectStore, registry: ModelRegistry
) -> None:
    # given a cached copy that was changed on disk
    publish(store, "v1", b"onnx-bytes")
    path = registry.fetch(ModelKey(MODEL, "v1")).path
    path.write_bytes(b"tampered")

    # when
    again = registry.fetch(ModelKey(MODEL, "v1"))

    # then the verified content is back
    assert again.path.read_bytes() == b"onnx-bytes"


def test_fetch_refuses_a_stored_file_that_does_not_match_its_manifest(
    store: FileObjectStore, registry: ModelRegistry
) -> None:
    publish(store, "v1", b"onnx-bytes")
    store.put_bytes(f"models/{MODEL}/v1/{ONNX_FILE}", b"swapped behind the manifest")
    with pytest.raises(ConflictError):
        registry.fetch(ModelKey(MODEL, "v1"))


def test_a_version_without_an_onnx_file_is_not_servable(
    store: FileObjectStore, registry: ModelRegistry
) -> None:
    ArtifactStore(store).publish(MODEL, {"weights.pt": b"pickle"}, version="v1")
    with pytest.raises(NotFoundError) as info:
        registry.fetch(ModelKey(MODEL, "v1"))
    assert info.value.code == "model_not_servable"


def test_drop_deletes_the_cached_copy(store: FileObjectStore, registry: ModelRegistry) -> None:
    publish(store, "v1", b"onnx-bytes")
    path = registry.fetch(ModelKey(MODEL, "v1")).path
    registry.drop(ModelKey(MODEL, "v1"))
    assert not path.exists()


def test_a_local_model_is_versioned_by_its_content(tmp_path: Path) -> None:
    # given
    path = tmp_path / "line-3.onnx"
    path.write_bytes(b"onnx-bytes")

    # when
    files = local_model(path, "line-3", allow_pickle=False)

    # then
    digest = hashlib.sha256(b"onnx-bytes").hexdigest()
    assert files.key == ModelKey("line-3", f"local-{digest[:12]}")
    assert (files.runtime, files.source) == ("onnx", "local")


def test_a_local_pickle_needs_explicit_consent(tmp_path: Path) -> None:
    # given
    path = tmp_path / "best.pt"
    path.write_bytes(b"not really a pickle")

    # when / then
    with pytest.raises(InvalidInputError) as info:
        local_model(path, "best", allow_pickle=False)
    assert info.value.code == "pickle_not_allowed"
    assert local_model(path, "best", allow_pickle=True).runtime == "torch"


@pytest.mark.parametrize("raw", [b"not json", b'{"0": "scratch"}', b'["ok", 3]'])
def test_malformed_class_files_are_refused(
    store: FileObjectStore, registry: ModelRegistry, tmp_path: Path, raw: bytes
) -> None:
    # given a published version and a local model, each with a bad class file
    ArtifactStore(store).publish(MODEL, {ONNX_FILE: b"onnx", CLASSES_FILE: raw}, version="v1")
    local = tmp_path / "local" / "line.onnx"
    local.parent.mkdir()
    local.write_bytes(b"onnx")
    local.with_name(CLASSES_FILE).write_bytes(raw)

    # when / then both readers refuse it with the seam's code
    with pytest.raises(InvalidInputError) as fetched:
        registry.fetch(ModelKey(MODEL, "v1"))
    with pytest.raises(InvalidInputError) as described:
        local_model(local, "line", allow_pickle=False)
    assert fetched.value.code == described.value.code == "bad_classes"
