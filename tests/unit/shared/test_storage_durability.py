"""The local folder's durability policy: atomic writes always, fsync per write only when
``durable``, else at the durability points ``sync()`` marks; ``JobStore`` declares them.

fsync calls are observed by wrapping ``os.fsync`` and naming each fd from /proc (Linux).
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import textwrap
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from pydantic import SecretStr

from shared.config import S3Settings
from shared.errors import InvalidInputError, UnavailableError
from shared.jobs.store import JobStore
from shared.schemas.jobs import JobState
from shared.storage import filesystem
from shared.storage.artifacts import ArtifactStore
from shared.storage.filesystem import FileObjectStore
from shared.storage.patient import PatientStore

pytestmark = pytest.mark.skipif(not Path("/proc/self/fd").is_dir(), reason="needs /proc")


@pytest.fixture
def synced(monkeypatch: pytest.MonkeyPatch) -> list[str]:
    """Every path fsynced (files and folders) and 'syncfs:<folder>' for each syncfs, in order."""
    calls: list[str] = []
    real_fsync = os.fsync

    def fsync(fd: int) -> None:
        calls.append(os.readlink(f"/proc/self/fd/{fd}"))
        real_fsync(fd)

    def syncfs(fd: int) -> int:
        calls.append(f"syncfs:{os.readlink(f'/proc/self/fd/{fd}')}")
        return 0

    monkeypatch.setattr(os, "fsync", fsync)
    monkeypatch.setattr(filesystem, "_SYNCFS", syncfs)
    return calls


def test_a_plain_store_writes_without_fsync(tmp_path: Path, synced: list[str]) -> None:
    # given
    store = FileObjectStore(tmp_path / "st")
    # when
    store.put_bytes("a/b/x", b"1")
    # then
    assert synced == []
    assert store.get_bytes("a/b/x") == b"1"


def test_sync_flushes_the_stores_filesystem(tmp_path: Path, synced: list[str]) -> None:
    # given
    store = FileObjectStore(tmp_path / "st")
    store.put_bytes("a/x", b"1")
    # when
    store.sync()
    # then
    assert synced == [f"syncfs:{store.root}"]


def test_sync_falls_back_to_os_sync_without_syncfs(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # given
    calls: list[str] = []
    monkeypatch.setattr(filesystem, "_SYNCFS", None)
    monkeypatch.setattr(os, "sync", lambda: calls.append("sync"))
    store = FileObjectStore(tmp_path / "st")
    store.put_bytes("x", b"1")
    # when
    store.sync()
    # then
    assert calls == ["sync"]


def test_the_real_syncfs_runs(tmp_path: Path) -> None:
    store = FileObjectStore(tmp_path / "st")
    store.put_bytes("a/x", b"1")
    store.sync()  # raises OSError if syncfs failed
    assert store.get_bytes("a/x") == b"1"


def test_sync_of_keys_fsyncs_each_object_and_its_folder(tmp_path: Path, synced: list[str]) -> None:
    # given
    store = FileObjectStore(tmp_path / "st")
    store.put_bytes("a/x", b"1")
    store.put_bytes("a/y", b"2")
    # when: a missing key is skipped
    store.sync(["a/x", "a/y", "a/missing"])
    # then
    root = store.root
    assert synced == [f"{root}/a/x", f"{root}/a/y", f"{root}/a"]


def test_sync_of_a_key_that_escapes_is_rejected(tmp_path: Path) -> None:
    store = FileObjectStore(tmp_path / "st")
    store.put_bytes("x", b"1")
    with pytest.raises(InvalidInputError):
        store.sync(["../x"])


def test_sync_before_any_write_does_nothing(tmp_path: Path, synced: list[str]) -> None:
    FileObjectStore(tmp_path / "never").sync()
    assert synced == []


def test_a_durable_store_syncs_each_write_and_its_new_folders(
    tmp_path: Path, synced: list[str]
) -> None:
    # given
    store = FileObjectStore(tmp_path / "st", durable=True)
    root = store.root
    # when: the first write creates a/b/, the second only writes into it
    store.put_bytes("a/b/x", b"1")
    first = list(synced)
    synced.clear()
    store.put_bytes("a/b/y", b"2")
    # then: the temp file is synced before its rename, then the folder entries
    assert first[1:] == [f"{root}/a/b", f"{root}/a", f"{root}"]
    assert first[0].startswith(f"{root}/a/b/.~tmp-")
    assert synced[1:] == [f"{root}/a/b"]
    # and there is nothing left to sync
    synced.clear()
    store.sync()
    store.sync(["a/b/x"])
    assert synced == []


def test_a_killed_writer_leaves_the_old_object_or_none(tmp_path: Path) -> None:
    # given: a writer that stalls halfway through replacing one object and creating another
    store = FileObjectStore(tmp_path / "st")
    store.put_bytes("obj", b"old")
    ready = tmp_path / "ready"
    script = textwrap.dedent(
        f"""
        import io, threading, time
        from pathlib import Path
        from shared.storage.filesystem import FileObjectStore

        class Stalling(io.RawIOBase):  # half the object, then a stall the kill ends
            def __init__(self): self.sent = False
            def readable(self): return True
            def readinto(self, buffer):
                if self.sent:
                    Path({str(ready)!r}).touch()
                    time.sleep(60)
                self.sent = True
                buffer[:3] = b"new"
                return 3

        store = FileObjectStore(Path({str(store.root)!r}))
        threading.Thread(target=store.put_stream, args=("fresh", Stalling()), daemon=True).start()
        store.put_stream("obj", Stalling())
        """
    )
    child = subprocess.Popen([sys.executable, "-c", script], cwd=Path.cwd())
    try:
        deadline = time.monotonic() + 60
        while not ready.exists():
            assert child.poll() is None, "the writer died before it stalled"
            assert time.monotonic() < deadline
            time.sleep(0.05)
        time.sleep(0.2)  # the second writer is stalled too
        # when
        child.send_signal(signal.SIGKILL)
        child.wait(timeout=30)
    finally:
        if child.poll() is None:
            child.kill()
    # then: both temp files were cut short, neither object shows a part
    assert len([n for n in os.listdir(store.root) if n.startswith(".~tmp-")]) == 2
    assert store.get_bytes("obj") == b"old"
    assert not store.exists("fresh")
    assert store.list() == ["obj"]


class _Recording(FileObjectStore):
    """Logs writes and syncs in order."""

    def __init__(self, root: Path) -> None:
        super().__init__(root)
        self.log: list[Any] = []

    def put_bytes(
        self, key: str, data: bytes, content_type: str = "application/octet-stream"
    ) -> None:
        self.log.append(("put", key))
        super().put_bytes(key, data, content_type)

    def sync(self, keys: Any = None) -> None:
        self.log.append(("sync", None if keys is None else list(keys)))
        super().sync(keys)


def _record_events(log: list[Any], key: str) -> Iterator[Any]:
    """The log around each write of ``key``: the event before it, it, the one after."""
    for index, event in enumerate(log):
        if event == ("put", key):
            yield log[index - 1], event, log[index + 1]


def test_a_terminal_record_is_written_after_a_sync_and_synced(tmp_path: Path) -> None:
    # given: a job that wrote its output
    store = _Recording(tmp_path / "st")
    jobs = JobStore(store)
    record = jobs.create(kind="k", task_name="t", queue="q", params={})
    store.put_bytes("out/result", b"1")
    store.log.clear()
    # when
    record.state = JobState.SUCCEEDED
    jobs.save(record)
    # then
    key = jobs.record_key(record.id)
    assert list(_record_events(store.log, key)) == [(("sync", None), ("put", key), ("sync", [key]))]


def test_a_running_record_is_synced_without_a_full_sync(tmp_path: Path) -> None:
    # given
    store = _Recording(tmp_path / "st")
    jobs = JobStore(store)
    record = jobs.create(kind="k", task_name="t", queue="q", params={})
    store.log.clear()
    # when
    record.state = JobState.RUNNING
    jobs.save(record)
    # then
    key = jobs.record_key(record.id)
    assert ("sync", None) not in store.log
    assert store.log[store.log.index(("put", key)) + 1] == ("sync", [key])


def test_a_checkpoint_is_written_after_a_sync_and_synced(tmp_path: Path) -> None:
    # given
    store = _Recording(tmp_path / "st")
    jobs = JobStore(store)
    record = jobs.create(kind="k", task_name="t", queue="q", params={})
    store.log.clear()
    # when
    jobs.save_checkpoint(record.id, "c1", b"state")
    # then
    key = jobs.checkpoint_key(record.id, "c1")
    assert store.log == [("sync", None), ("put", key), ("sync", [key])]
    assert jobs.load_checkpoint(record.id, "c1") == b"state"


def test_the_patient_store_hands_sync_on_and_retries_it(tmp_path: Path) -> None:
    # given: a store whose first sync hits an outage
    class Flaky(_Recording):
        def sync(self, keys: Any = None) -> None:
            super().sync(keys)
            if len(self.log) == 1:
                raise UnavailableError("down", code="storage_unavailable")

    inner = Flaky(tmp_path / "st")
    patient = PatientStore(inner, patience_s=10, sleep=lambda _s: None)
    # when: the keys come as an iterator, which the retry must not find empty
    patient.sync(iter(["a"]))
    # then
    assert inner.log == [("sync", ["a"]), ("sync", ["a"])]


def test_the_s3_store_has_nothing_to_sync_but_checks_keys() -> None:
    from shared.storage.s3 import S3ObjectStore

    store = S3ObjectStore(
        S3Settings(
            endpoint_url="https://minio.example:9000",
            bucket="b1",
            access_key_id="k",
            secret_access_key=SecretStr("s"),
        )
    )
    store.sync()
    store.sync(["a/b"])
    with pytest.raises(InvalidInputError):
        store.sync(["../a"])


def test_a_publish_syncs_the_files_before_the_manifest_and_it_before_latest(
    tmp_path: Path,
) -> None:
    # given
    store = _Recording(tmp_path / "st")
    artifacts = ArtifactStore(store)
    # when
    ref = artifacts.publish("m", {"w.bin": b"1", "c.json": b"{}"}, version="v1")
    # then
    latest = "models/m/LATEST"
    assert store.log == [
        ("put", ref.key("w.bin")),
        ("put", ref.key("c.json")),
        ("sync", None),
        ("put", ref.manifest_key),
        ("sync", None),
        ("put", latest),
        ("sync", [latest]),
    ]
