"""``agssp store put|get|ls`` and ``agssp jobs wait|follow`` on a local-folder store."""

from __future__ import annotations

from collections.abc import Iterator
from datetime import timedelta
from pathlib import Path

import pytest
from typer.testing import CliRunner

from agssp.follow import EXIT_FAILED, EXIT_TIMEOUT, eta_s, follow, render_line
from agssp.main import app
from agssp.store import plan_download, plan_upload, sanitize_segment, upload
from shared.errors import InvalidInputError
from shared.jobs.store import JobStore
from shared.schemas.jobs import JobState, utcnow
from shared.storage.filesystem import FileObjectStore


@pytest.fixture
def home(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[Path]:
    from shared.config import get_common_settings

    for name in ("S3_ENDPOINT_URL", "REDIS_URL", "STORAGE_ROOT", "STORAGE_BACKEND"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("AGSSP_HOME", str(tmp_path / "home"))
    get_common_settings.cache_clear()
    yield tmp_path / "home"
    get_common_settings.cache_clear()


def _tree(root: Path) -> Path:
    (root / "line-3" / "sub").mkdir(parents=True)
    (root / "line-3" / "a.jpg").write_bytes(b"a" * 10)
    (root / "line-3" / "sub" / "b.png").write_bytes(b"b" * 20)
    (root / "line-3" / ".hidden").write_bytes(b"x")
    return root / "line-3"


def test_put_then_get_round_trips_a_folder_and_skips_what_is_there(
    home: Path, tmp_path: Path
) -> None:
    # given a folder with a nested file and a hidden one
    folder = _tree(tmp_path)
    runner = CliRunner()
    # when uploaded twice and downloaded
    first = runner.invoke(app, ["store", "put", str(folder), "lines/l3"])
    second = runner.invoke(app, ["store", "put", str(folder), "lines/l3/"])
    got = runner.invoke(app, ["store", "get", "lines/l3/", str(tmp_path / "back")])
    # then relative paths are kept, hidden files left, the second upload writes nothing
    assert first.exit_code == 0, first.output
    assert "2 written, 0 already there" in first.output
    assert "0 written, 2 already there" in second.output
    assert got.exit_code == 0, got.output
    assert (tmp_path / "back" / "sub" / "b.png").read_bytes() == b"b" * 20
    assert not (tmp_path / "back" / ".hidden").exists()
    assert f"store: folder {home / 'store'}" in first.output


def test_names_that_are_not_keys_are_refused_or_renamed(tmp_path: Path) -> None:
    # given a file name with spaces and brackets
    (tmp_path / "in").mkdir()
    (tmp_path / "in" / "cam 1 (left).jpg").write_bytes(b"x")
    # when / then
    with pytest.raises(InvalidInputError, match="--rename"):
        plan_upload(tmp_path / "in", "raw")
    renamed = plan_upload(tmp_path / "in", "raw", rename=True)
    assert [t.key for t in renamed] == ["raw/cam_1__left_.jpg"]
    assert sanitize_segment("..") == "_"


def test_force_rewrites_and_a_single_key_downloads_to_a_file(tmp_path: Path) -> None:
    # given one stored file
    store = FileObjectStore(tmp_path / "store")
    (tmp_path / "f.txt").write_bytes(b"one")
    transfers = plan_upload(tmp_path / "f.txt", "docs")
    assert upload(store, transfers, force=False, threads=2) == 1
    # when the local file changes size, it is written again even without force
    (tmp_path / "f.txt").write_bytes(b"three")
    assert upload(store, transfers, force=False, threads=2) == 1
    assert upload(store, transfers, force=True, threads=2) == 1
    # then a single key goes to the named file; an empty prefix is an error
    [one] = plan_download(store, "docs/f.txt", tmp_path / "copy.txt")
    assert one.path == tmp_path / "copy.txt"
    with pytest.raises(InvalidInputError, match="nothing is stored"):
        plan_download(store, "nope/", tmp_path)


def test_follow_prints_each_change_and_returns_the_exit_code(tmp_path: Path) -> None:
    # given a job that advances on every poll, then fails
    jobs = JobStore(FileObjectStore(tmp_path / "store"))
    record = jobs.create(kind="agbp", task_name="t", queue="q", params={})
    steps = [
        {"state": JobState.RUNNING, "started_at": utcnow(), "progress": 10.0, "message": "epoch 1"},
        {"progress": 10.0},  # no change: no line
        {"progress": 60.0, "message": "epoch 2"},
        {"state": JobState.FAILED, "error": "boom", "error_code": "train_failed"},
    ]
    lines: list[str] = []

    def sleep(_: float) -> None:
        jobs.update(record.id, **steps.pop(0))

    # when
    code = follow(jobs, record.id, lines.append, sleep=sleep)
    # then
    assert code == EXIT_FAILED
    assert len(lines) == 4
    assert "PENDING" in lines[0]
    assert "epoch 2" in lines[2]
    assert "#" * 18 + "-" * 12 in lines[2]
    assert "error train_failed: boom" in lines[3]


def test_wait_times_out_with_124(tmp_path: Path) -> None:
    # given a job that never moves and a clock that jumps
    jobs = JobStore(FileObjectStore(tmp_path / "store"))
    record = jobs.create(kind="agbp", task_name="t", queue="q", params={})
    ticks = iter([0.0, 5.0, 11.0])
    lines: list[str] = []
    # when
    code = follow(
        jobs,
        record.id,
        lines.append,
        timeout_s=10,
        quiet=True,
        clock=lambda: next(ticks),
        sleep=lambda _: None,
    )
    # then
    assert code == EXIT_TIMEOUT
    assert lines[-1].startswith("timed out after 10s")


def test_eta_prefers_the_jobs_own_estimate_then_extrapolates(tmp_path: Path) -> None:
    # given a job at 25 % after 30 s
    jobs = JobStore(FileObjectStore(tmp_path / "store"))
    start = utcnow()
    record = jobs.create(kind="k", task_name="t", queue="q", params={}).model_copy(
        update={"state": JobState.RUNNING, "started_at": start, "progress": 25.0}
    )
    # when / then: 30 s for 25 % -> 90 s left; the job's own figure wins; ended jobs have none
    assert eta_s(record, start + timedelta(seconds=30)) == pytest.approx(90.0)
    with_own = record.model_copy(update={"metrics": {"eta_s": 12.0}})
    assert eta_s(with_own) == 12.0
    assert "eta 12s" in render_line(with_own)
    assert eta_s(record.model_copy(update={"state": JobState.SUCCEEDED})) is None
