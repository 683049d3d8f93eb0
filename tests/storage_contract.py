"""The ``ObjectStore`` / ``ArtifactStore`` contract, run on every backend: subclass both classes
as ``Test...`` classes and provide a ``store`` fixture (a fresh, empty store per test).
"""

from __future__ import annotations

import hashlib
import io
import json
import random
import urllib.request
from pathlib import Path
from typing import Any, BinaryIO, ClassVar, cast

import pytest

from shared.errors import ConflictError, InvalidInputError, NotFoundError
from shared.schemas.artifacts import ArtifactRef
from shared.storage.artifacts import ArtifactStore
from shared.storage.base import ObjectNotFoundError, ObjectStore

MIB = 1 << 20
BAD_KEYS = ["../x", "/abs", "a//b", "a/./b", "a/../b", "a b", "a\\b", "caf\u00e9", "a?b", "", "a/"]


def payload(size: int, seed: int = 0) -> bytes:
    """Deterministic pseudo-random bytes."""
    return random.Random(seed).randbytes(size)


class OneWayStream(io.RawIOBase):
    """A readable, non-seekable stream: its length is unknown to the store."""

    def __init__(self, data: bytes) -> None:
        self._inner = io.BytesIO(data)

    def readable(self) -> bool:
        return True

    def readinto(self, buffer: Any) -> int:
        return self._inner.readinto(buffer)


class ObjectStoreContract:
    """Behaviour every ``ObjectStore`` shares. Needs a ``store`` fixture."""

    presigns: ClassVar[bool] = False  # whether presigned_url returns a URL on this backend

    def test_put_bytes_then_get_bytes_returns_them(self, store: ObjectStore) -> None:
        # given
        store.put_bytes("a/b.bin", b"hello")
        # when
        data = store.get_bytes("a/b.bin")
        # then
        assert data == b"hello"

    def test_empty_object_round_trips(self, store: ObjectStore) -> None:
        store.put_bytes("empty", b"")
        assert store.get_bytes("empty") == b""
        assert store.size("empty") == 0

    def test_put_bytes_overwrites(self, store: ObjectStore) -> None:
        # given
        store.put_bytes("k", b"old")
        # when
        store.put_bytes("k", b"new content")
        # then
        assert store.get_bytes("k") == b"new content"

    def test_exists_tells_present_from_missing(self, store: ObjectStore) -> None:
        store.put_bytes("x/present", b"1")
        assert store.exists("x/present")
        assert not store.exists("x/missing")
        assert not store.exists("x")  # a prefix is not an object

    def test_size_is_the_byte_count(self, store: ObjectStore) -> None:
        store.put_bytes("s", b"12345")
        assert store.size("s") == 5

    def test_missing_key_raises_object_not_found(self, store: ObjectStore) -> None:
        with pytest.raises(ObjectNotFoundError):
            store.get_bytes("no/such/key")
        with pytest.raises(ObjectNotFoundError):
            store.size("no/such/key")

    def test_list_is_recursive_and_sorted(self, store: ObjectStore) -> None:
        # given
        for key in ["b/2", "a/x/1", "b/1", "a/0"]:
            store.put_bytes(key, b".")
        # when
        keys = store.list()
        # then
        assert keys == ["a/0", "a/x/1", "b/1", "b/2"]

    def test_list_prefix_isolates_siblings(self, store: ObjectStore) -> None:
        # given
        for key in ["a/1", "a/2", "ab/1", "b/1"]:
            store.put_bytes(key, b".")
        # when
        under_a = store.list("a/")
        # then
        assert under_a == ["a/1", "a/2"]

    def test_list_prefix_is_a_plain_string_prefix(self, store: ObjectStore) -> None:
        for key in ["a/1", "ab/1", "b/1"]:
            store.put_bytes(key, b".")
        assert store.list("a") == ["a/1", "ab/1"]

    def test_list_unknown_prefix_is_empty(self, store: ObjectStore) -> None:
        store.put_bytes("a/1", b".")
        assert store.list("zzz/") == []

    def test_delete_removes_the_object(self, store: ObjectStore) -> None:
        # given
        store.put_bytes("d/1", b".")
        # when
        store.delete("d/1")
        # then
        assert not store.exists("d/1")
        assert store.list("d/") == []

    def test_delete_of_missing_key_is_fine(self, store: ObjectStore) -> None:
        store.delete("never/written")
        assert not store.exists("never/written")

    def test_delete_prefix_removes_only_that_prefix(self, store: ObjectStore) -> None:
        # given
        for key in ["p/1", "p/q/2", "pq/3", "z/4"]:
            store.put_bytes(key, b".")
        # when
        removed = store.delete_prefix("p/")
        # then
        assert removed == 2
        assert store.list() == ["pq/3", "z/4"]

    def test_delete_prefix_requires_a_trailing_slash(self, store: ObjectStore) -> None:
        with pytest.raises(InvalidInputError):
            store.delete_prefix("p")

    def test_iter_chunks_yields_the_content(self, store: ObjectStore) -> None:
        # given
        data = payload(100_000)
        store.put_bytes("c", data)
        # when
        chunks = list(store.iter_chunks("c", chunk_size=16_384))
        # then
        assert b"".join(chunks) == data
        assert len(chunks) > 1

    def test_iter_chunks_of_missing_key_raises(self, store: ObjectStore) -> None:
        with pytest.raises(ObjectNotFoundError):
            list(store.iter_chunks("missing"))

    def test_put_stream_of_unknown_length_round_trips(self, store: ObjectStore) -> None:
        # given: 12 MiB, more than two 5 MiB parts on S3
        data = payload(12 * MIB, seed=1)
        # when
        written = store.put_stream("big/stream.bin", cast(BinaryIO, OneWayStream(data)))
        # then
        assert written == len(data)
        assert store.size("big/stream.bin") == len(data)
        assert hashlib.sha256(store.get_bytes("big/stream.bin")).digest() == (
            hashlib.sha256(data).digest()
        )

    def test_put_stream_with_length_stops_there(self, store: ObjectStore) -> None:
        written = store.put_stream("part", io.BytesIO(b"0123456789"), length=4)
        assert written == 4
        assert store.get_bytes("part") == b"0123"

    def test_put_stream_shorter_than_its_length_is_rejected(self, store: ObjectStore) -> None:
        with pytest.raises(InvalidInputError):
            store.put_stream("short", io.BytesIO(b"abc"), length=10)
        assert not store.exists("short")

    def test_put_file_then_get_file_round_trips(self, store: ObjectStore, tmp_path: Path) -> None:
        # given
        source = tmp_path / "in.bin"
        source.write_bytes(payload(300_000, seed=2))
        store.put_file("files/in.bin", source)
        # when
        target = tmp_path / "out" / "copy.bin"
        target.parent.mkdir()
        store.get_file("files/in.bin", target)
        # then
        assert target.read_bytes() == source.read_bytes()
        assert sorted(p.name for p in target.parent.iterdir()) == ["copy.bin"]  # no temp left

    def test_get_file_of_missing_key_leaves_no_file(
        self, store: ObjectStore, tmp_path: Path
    ) -> None:
        with pytest.raises(ObjectNotFoundError):
            store.get_file("missing", tmp_path / "out.bin")
        assert list(tmp_path.iterdir()) == []

    def test_a_file_for_reading_keeps_its_bytes_when_the_object_changes(
        self, store: ObjectStore, tmp_path: Path
    ) -> None:
        # given
        store.put_bytes("files/a.bin", b"first")
        target = tmp_path / "cache" / "a.bin"
        # when
        store.get_file_for_reading("files/a.bin", target)
        store.put_bytes("files/a.bin", b"second version")
        # then
        assert target.read_bytes() == b"first"
        assert store.get_bytes("files/a.bin") == b"second version"
        # and deleting the object leaves the reader's file, removing the file leaves the object
        store.delete("files/a.bin")
        assert target.read_bytes() == b"first"
        store.put_bytes("files/b.bin", b"kept")
        other = tmp_path / "cache" / "b.bin"
        store.get_file_for_reading("files/b.bin", other)
        other.unlink()
        assert store.get_bytes("files/b.bin") == b"kept"

    def test_a_file_for_reading_of_a_missing_key_raises(
        self, store: ObjectStore, tmp_path: Path
    ) -> None:
        with pytest.raises(ObjectNotFoundError):
            store.get_file_for_reading("missing", tmp_path / "out.bin")
        with pytest.raises(ObjectNotFoundError):
            store.get_file_for_reading("no/such/folder", tmp_path / "out.bin")
        assert not (tmp_path / "out.bin").exists()

    @pytest.mark.parametrize("key", BAD_KEYS)
    def test_invalid_keys_are_rejected_on_write(self, store: ObjectStore, key: str) -> None:
        with pytest.raises(InvalidInputError):
            store.put_bytes(key, b"x")

    @pytest.mark.parametrize("key", BAD_KEYS)
    def test_invalid_keys_are_rejected_on_read(self, store: ObjectStore, key: str) -> None:
        with pytest.raises(InvalidInputError):
            store.get_bytes(key)

    def test_presigned_url_is_none_without_urls(self, store: ObjectStore) -> None:
        if self.presigns:
            pytest.skip("this backend hands out URLs")
        store.put_bytes("u", b"x")
        assert store.presigned_url("u") is None

    def test_presigned_url_downloads_the_object(self, store: ObjectStore) -> None:
        if not self.presigns:
            pytest.skip("this backend has no URLs")
        # given
        store.put_bytes("dl/file.txt", b"download me")
        url = store.presigned_url("dl/file.txt", expires_s=60)
        assert url is not None
        # when
        with urllib.request.urlopen(url, timeout=10) as response:
            body = response.read()
        # then
        assert body == b"download me"

    def test_ping_passes_on_a_healthy_store(self, store: ObjectStore) -> None:
        store.ping()


class RecordingStore:
    """Delegates to a store and records the key of every write, in order."""

    def __init__(self, inner: ObjectStore) -> None:
        self.inner = inner
        self.writes: list[str] = []

    def __getattr__(self, name: str) -> Any:
        return getattr(self.inner, name)

    def put_bytes(
        self, key: str, data: bytes, content_type: str = "application/octet-stream"
    ) -> None:
        self.writes.append(key)
        self.inner.put_bytes(key, data, content_type)

    def put_file(self, key: str, path: Path) -> None:
        self.writes.append(key)
        self.inner.put_file(key, path)


class ArtifactStoreContract:
    """Behaviour of ``ArtifactStore`` on every backend. Needs a ``store`` fixture."""

    @pytest.fixture
    def artifacts(self, store: ObjectStore) -> ArtifactStore:
        return ArtifactStore(store)

    def test_publish_moves_latest_to_the_new_version(self, artifacts: ArtifactStore) -> None:
        # when
        ref = artifacts.publish("det", {"w.bin": b"weights"}, version="v1", metadata={"a": 1})
        # then
        assert ref == ArtifactRef(name="det", version="v1")
        assert artifacts.latest("det") == ref

    def test_publish_writes_files_then_manifest_then_latest(self, store: ObjectStore) -> None:
        # given
        recording = RecordingStore(store)
        artifacts = ArtifactStore(cast(ObjectStore, recording))
        # when
        artifacts.publish("det", {"a.bin": b"a", "cfg/b.yaml": b"b"}, version="v1")
        # then
        assert recording.writes[:2] == ["models/det/v1/a.bin", "models/det/v1/cfg/b.yaml"]
        assert recording.writes[2:] == ["models/det/v1/manifest.json", "models/det/LATEST"]

    def test_manifest_lists_sizes_hashes_and_metadata(self, artifacts: ArtifactStore) -> None:
        # given
        ref = artifacts.publish("det", {"w.bin": b"weights"}, metadata={"epochs": 3})
        # when
        manifest = artifacts.manifest(ref)
        # then
        assert manifest.files["w.bin"].size == 7
        assert manifest.files["w.bin"].sha256 == hashlib.sha256(b"weights").hexdigest()
        assert manifest.metadata == {"epochs": 3}

    def test_republishing_the_same_content_is_a_no_op(
        self, artifacts: ArtifactStore, store: ObjectStore
    ) -> None:
        # given
        first = artifacts.publish("det", {"w.bin": b"w1"}, version="v1")
        before = store.get_bytes("models/det/v1/manifest.json")
        # when
        again = artifacts.publish("det", {"w.bin": b"w1"}, version="v1", metadata={"retry": 1})
        # then
        assert again == first
        assert store.get_bytes("models/det/v1/manifest.json") == before

    def test_republishing_an_old_version_keeps_latest(self, artifacts: ArtifactStore) -> None:
        # given
        artifacts.publish("det", {"w.bin": b"w1"}, version="v1")
        newer = artifacts.publish("det", {"w.bin": b"w2"}, version="v2")
        # when: a redelivered job publishes v1 again
        artifacts.publish("det", {"w.bin": b"w1"}, version="v1")
        # then
        assert artifacts.latest("det") == newer

    def test_republishing_completes_a_publish_cut_before_latest(
        self, artifacts: ArtifactStore, store: ObjectStore
    ) -> None:
        # given: files and manifest written, the worker died before LATEST moved
        ref = artifacts.publish("det", {"w.bin": b"w1"}, version="v1")
        store.delete("models/det/LATEST")
        # when
        artifacts.publish("det", {"w.bin": b"w1"}, version="v1")
        # then
        assert artifacts.latest("det") == ref

    def test_republishing_different_content_conflicts(self, artifacts: ArtifactStore) -> None:
        artifacts.publish("det", {"w.bin": b"w1"}, version="v1")
        with pytest.raises(ConflictError):
            artifacts.publish("det", {"w.bin": b"other"}, version="v1")

    def test_versions_lists_complete_versions_only(
        self, artifacts: ArtifactStore, store: ObjectStore
    ) -> None:
        # given: two versions and a half-written one without manifest
        artifacts.publish("det", {"w.bin": b"1"}, version="20260101T000000Z-aaaaaaaa")
        artifacts.publish("det", {"w.bin": b"2"}, version="20260102T000000Z-bbbbbbbb")
        store.put_bytes("models/det/20260103T000000Z-cccccccc/w.bin", b"partial")
        # when
        versions = artifacts.versions("det")
        # then
        assert versions == ["20260101T000000Z-aaaaaaaa", "20260102T000000Z-bbbbbbbb"]

    def test_list_models_names_published_models(self, artifacts: ArtifactStore) -> None:
        artifacts.publish("zeta", {"w": b"1"})
        artifacts.publish("alpha", {"w": b"1"})
        assert artifacts.list_models() == ["alpha", "zeta"]

    def test_latest_of_unknown_model_is_none(self, artifacts: ArtifactStore) -> None:
        assert artifacts.latest("nothing") is None

    def test_manifest_of_missing_version_raises_not_found(self, artifacts: ArtifactStore) -> None:
        with pytest.raises(NotFoundError):
            artifacts.manifest(ArtifactRef(name="det", version="v404"))

    @pytest.mark.parametrize(("name", "version"), [("../x", "v1"), ("det", "LATEST"), ("a/b", "v")])
    def test_invalid_name_or_version_is_rejected(
        self, artifacts: ArtifactStore, name: str, version: str
    ) -> None:
        with pytest.raises(InvalidInputError):
            artifacts.publish(name, {"w": b"1"}, version=version)

    def test_unserialisable_metadata_is_rejected_before_writing(
        self, artifacts: ArtifactStore, store: ObjectStore
    ) -> None:
        with pytest.raises(InvalidInputError):
            artifacts.publish("det", {"w": b"1"}, metadata={"bad": object()})
        assert store.list() == []

    def test_fetch_downloads_every_file(self, artifacts: ArtifactStore, tmp_path: Path) -> None:
        # given
        local = tmp_path / "best.pt"
        local.write_bytes(payload(200_000, seed=3))
        ref = artifacts.publish("det", {"weights/best.pt": local, "config.json": b"{}"})
        # when
        dest = artifacts.fetch(ref, tmp_path / "cache")
        # then
        assert (dest / "weights" / "best.pt").read_bytes() == local.read_bytes()
        assert (dest / "config.json").read_bytes() == b"{}"
        assert json.loads((dest / "manifest.json").read_text())["version"] == ref.version

    def test_fetch_rejects_a_tampered_file(
        self, artifacts: ArtifactStore, store: ObjectStore, tmp_path: Path
    ) -> None:
        # given
        ref = artifacts.publish("det", {"w.bin": b"good weights"})
        store.put_bytes(ref.key("w.bin"), b"evil weights")
        # when / then
        with pytest.raises(ConflictError):
            artifacts.fetch(ref, tmp_path / "cache")
        assert not (tmp_path / "cache" / "w.bin").exists()

    def test_get_file_bytes_returns_a_verified_file(self, artifacts: ArtifactStore) -> None:
        ref = artifacts.publish("det", {"labels.txt": b"scratch\ndent\n"})
        assert artifacts.get_file_bytes(ref, "labels.txt") == b"scratch\ndent\n"

    def test_get_file_bytes_of_unknown_file_raises(self, artifacts: ArtifactStore) -> None:
        ref = artifacts.publish("det", {"labels.txt": b"x"})
        with pytest.raises(NotFoundError):
            artifacts.get_file_bytes(ref, "other.txt")

    def test_promote_points_the_stage_at_the_version(self, artifacts: ArtifactStore) -> None:
        # given
        v1 = artifacts.publish("det", {"w": b"1"}, version="v1")
        artifacts.publish("det", {"w": b"2"}, version="v2")
        # when
        artifacts.promote("det", "v1", "production")
        # then
        assert artifacts.stage("det", "production") == v1
        assert artifacts.stage("det", "staging") is None

    def test_promote_of_missing_version_raises_not_found(self, artifacts: ArtifactStore) -> None:
        artifacts.publish("det", {"w": b"1"}, version="v1")
        with pytest.raises(NotFoundError):
            artifacts.promote("det", "v9", "production")
