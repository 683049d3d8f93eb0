"""FileObjectStore: the shared storage contract plus local-folder specifics, the factory and
artifact versions."""

from __future__ import annotations

import io
import os
import re
from datetime import UTC, datetime, timedelta, timezone
from pathlib import Path

import pytest
from pydantic import SecretStr

from shared.config import CommonSettings, S3Settings, StorageSettings
from shared.errors import ConflictError, InvalidInputError, UnavailableError
from shared.schemas.artifacts import ArtifactRef, new_version
from shared.storage.base import ObjectStore
from shared.storage.factory import create_store
from shared.storage.filesystem import FileObjectStore
from tests.storage_contract import ArtifactStoreContract, ObjectStoreContract


@pytest.fixture
def store(tmp_path: Path) -> FileObjectStore:
    return FileObjectStore(tmp_path / "store")


class TestFileObjectStoreContract(ObjectStoreContract):
    presigns = False


class TestFileArtifactStoreContract(ArtifactStoreContract):
    pass


class _Exploding(io.RawIOBase):
    """Yields some bytes, then fails like a dropped upload."""

    def __init__(self) -> None:
        self.sent = False

    def readable(self) -> bool:
        return True

    def readinto(self, buffer: memoryview) -> int:  # type: ignore[override]
        if self.sent:
            raise ConnectionResetError("client went away")
        self.sent = True
        buffer[:3] = b"new"
        return 3


def test_file_store_satisfies_the_protocol(store: FileObjectStore) -> None:
    assert isinstance(store, ObjectStore)


def test_failed_write_keeps_the_old_object_and_no_temp_file(store: FileObjectStore) -> None:
    # given
    store.put_bytes("obj", b"old")
    # when
    with pytest.raises(ConnectionResetError):
        store.put_stream("obj", _Exploding())  # type: ignore[arg-type]
    # then
    assert store.get_bytes("obj") == b"old"
    assert os.listdir(store.root) == ["obj"]


def test_temp_files_are_hidden_from_list(store: FileObjectStore) -> None:
    # given: a writer's temp file in flight
    store.put_bytes("a/done", b"1")
    (store.root / "a" / ".~tmp-abc.tmp").write_bytes(b"partial")
    # when
    keys = store.list()
    # then
    assert keys == ["a/done"]


def test_symlink_out_of_the_root_is_rejected(store: FileObjectStore, tmp_path: Path) -> None:
    # given
    outside = tmp_path / "outside"
    outside.mkdir()
    (outside / "secret").write_bytes(b"s")
    store.put_bytes("keep", b"1")
    (store.root / "link").symlink_to(outside, target_is_directory=True)
    # when / then
    with pytest.raises(InvalidInputError):
        store.get_bytes("link/secret")


def test_key_that_is_also_a_prefix_conflicts(store: FileObjectStore) -> None:
    store.put_bytes("a/b", b"1")
    with pytest.raises(ConflictError):
        store.put_bytes("a", b"2")


def test_delete_prunes_empty_folders(store: FileObjectStore) -> None:
    # given
    store.put_bytes("a/b/c", b"1")
    # when
    store.delete("a/b/c")
    # then: the name 'a' is free for an object again, as on S3
    store.put_bytes("a", b"2")
    assert store.list() == ["a"]


def test_ping_fails_when_the_root_is_not_a_folder(tmp_path: Path) -> None:
    # given
    blocker = tmp_path / "file"
    blocker.write_bytes(b"")
    # when / then
    with pytest.raises(UnavailableError):
        FileObjectStore(blocker / "store").ping()


def test_factory_builds_a_file_store_by_default(tmp_path: Path) -> None:
    # given
    settings = CommonSettings(
        storage=StorageSettings(backend="auto", root=tmp_path / "st"),
        s3=S3Settings(endpoint_url=None),
    )
    # when
    store = create_store(settings)
    # then
    assert isinstance(store, FileObjectStore)
    assert store.root == (tmp_path / "st").resolve()


def test_factory_builds_an_s3_store_when_an_endpoint_is_set() -> None:
    # given
    from shared.storage.s3 import S3ObjectStore

    settings = CommonSettings(
        s3=S3Settings(
            endpoint_url="https://minio.example:9000",
            bucket="b1",
            access_key_id="k",
            secret_access_key=SecretStr("s"),
        )
    )
    # when: no network call is made here
    store = create_store(settings)
    # then
    assert isinstance(store, S3ObjectStore)
    assert store.bucket == "b1"


def test_s3_store_rejects_an_endpoint_with_a_path() -> None:
    from shared.storage.s3 import S3ObjectStore

    with pytest.raises(InvalidInputError):
        S3ObjectStore(S3Settings(endpoint_url="http://minio:9000/bucket"))


def test_new_version_is_deterministic_for_a_seed_and_time() -> None:
    at = datetime(2026, 1, 1, 12, 0, tzinfo=UTC)
    assert new_version("job-1", at=at) == new_version("job-1", at=at)
    assert new_version("job-1", at=at) != new_version("job-2", at=at)


def test_new_version_has_the_sortable_utc_format() -> None:
    # given
    at = datetime(2026, 1, 1, 13, 0, tzinfo=timezone(timedelta(hours=1)))
    # when
    version = new_version("job-1", at=at)
    # then
    assert re.fullmatch(r"20260101T120000Z-[0-9a-f]{8}", version)
    assert new_version(at=at) < new_version(at=at + timedelta(seconds=1))


def test_artifact_ref_rejects_a_path_as_name() -> None:
    with pytest.raises(ValueError, match="invalid"):
        ArtifactRef(name="../etc", version="v1")


# -- keys -> paths: links ----------------------------------------------------------------
def _outside_folder(tmp_path: Path) -> Path:
    outside = tmp_path / "outside"
    outside.mkdir()
    (outside / "x").write_bytes(b"secret")
    return outside


def test_a_folder_swapped_for_an_outside_link_after_use_is_rejected(
    store: FileObjectStore, tmp_path: Path
) -> None:
    # given: a folder used for reads and writes, then replaced by a link out of the root
    store.put_bytes("a/b/x", b"mine")
    assert store.get_bytes("a/b/x") == b"mine"
    assert store.exists("a/b/x")
    outside = _outside_folder(tmp_path)
    (store.root / "a" / "b").rename(tmp_path / "old-b")
    (store.root / "a" / "b").symlink_to(outside, target_is_directory=True)
    # when / then: no read or write goes through it
    for call in (
        lambda: store.get_bytes("a/b/x"),
        lambda: store.exists("a/b/x"),
        lambda: store.size("a/b/x"),
        lambda: store.put_bytes("a/b/y", b"leak"),
        lambda: store.delete("a/b/x"),
    ):
        with pytest.raises(InvalidInputError):
            call()
    assert sorted(p.name for p in outside.iterdir()) == ["x"]


def test_a_folder_moved_out_and_linked_back_is_rejected(
    store: FileObjectStore, tmp_path: Path
) -> None:
    # given: the very folder the store used now lives outside, a link in its place
    store.put_bytes("top/sub/x", b"1")
    assert store.get_bytes("top/sub/x") == b"1"
    moved = tmp_path / "moved"
    (store.root / "top").rename(moved)
    (store.root / "top").symlink_to(moved, target_is_directory=True)
    # when / then
    with pytest.raises(InvalidInputError):
        store.get_bytes("top/sub/x")
    with pytest.raises(InvalidInputError):
        store.put_bytes("top/sub/y", b"2")
    assert not (moved / "sub" / "y").exists()


def test_a_file_link_out_of_the_root_is_rejected(store: FileObjectStore, tmp_path: Path) -> None:
    # given
    outside = _outside_folder(tmp_path)
    store.put_bytes("d/keep", b"1")
    (store.root / "d" / "x").symlink_to(outside / "x")
    # when / then
    with pytest.raises(InvalidInputError):
        store.get_bytes("d/x")
    with pytest.raises(InvalidInputError):
        store.put_bytes("d/x", b"over")
    assert (outside / "x").read_bytes() == b"secret"


def test_a_link_that_stays_in_the_root_is_followed(store: FileObjectStore) -> None:
    # given
    store.put_bytes("real/x", b"1")
    (store.root / "alias").symlink_to(store.root / "real", target_is_directory=True)
    # when / then
    assert store.get_bytes("alias/x") == b"1"


@pytest.mark.parametrize("key", ["a\n", "a/b\n", "a/\n/b"])
def test_a_key_with_a_newline_is_rejected(store: FileObjectStore, key: str) -> None:
    with pytest.raises(InvalidInputError):
        store.put_bytes(key, b"1")


def test_a_file_for_reading_is_a_hard_link_on_the_same_filesystem(
    store: FileObjectStore, tmp_path: Path
) -> None:
    # given
    store.put_bytes("maps/a.npy", b"map bytes")
    target = tmp_path / "cache" / "a.npy"
    # when
    store.get_file_for_reading("maps/a.npy", target)
    # then: the same inode, no bytes copied
    assert target.stat().st_ino == (store.root / "maps" / "a.npy").stat().st_ino


def test_a_file_for_reading_falls_back_to_a_copy_where_links_fail(
    store: FileObjectStore, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # given: a cache on another filesystem (the link fails with EXDEV)
    store.put_bytes("maps/a.npy", b"map bytes")
    target = tmp_path / "cache" / "a.npy"

    def cross_device(*_args: object, **_kwargs: object) -> None:
        raise OSError(18, "Invalid cross-device link")

    monkeypatch.setattr(os, "link", cross_device)
    # when
    store.get_file_for_reading("maps/a.npy", target)
    # then
    assert target.read_bytes() == b"map bytes"
    assert target.stat().st_ino != (store.root / "maps" / "a.npy").stat().st_ino
