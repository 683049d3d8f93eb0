"""The AGBP job use case on a local-folder store: publish, weights that load, cancel, resume."""

from __future__ import annotations

import io
import json
import logging
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
import torch
import yaml

from services.pretrain.config import PretrainSettings
from services.pretrain.ml.runner import AgbpTrainer
from services.pretrain.stores.synthetic import write_synthetic_source
from services.pretrain.usecases.agbp_jobs import ThrottledCancel, run_agbp_job
from shared.config import CommonSettings, PathSettings
from shared.jobs.runner import RunnerOptions, run_job
from shared.jobs.store import JobStore
from shared.ml.backbones import create_backbone
from shared.schemas.artifacts import ArtifactRef
from shared.schemas.jobs import JobRecord, JobState
from shared.storage.artifacts import ArtifactStore
from shared.storage.base import ObjectStore
from shared.storage.filesystem import FileObjectStore

MAP_JOB = "20260101T120000-1a2b3c4d"
CONFIG = {
    "backbone": "yolov8n",
    "epochs": 1,
    "batch_size": 4,
    "input_size": 64,
    "resize_base": 64,
    "amp": False,
    "checkpoint_every": 0,
    "num_workers": 0,
}


class WorkerLost(BaseException):
    """Stands for a worker killed mid-job (the runner lets it through, leaving RUNNING)."""


def _write_data(store: ObjectStore) -> None:
    # Two categories of 4 images (2 steps of 4 per epoch), plus one image without a map.
    for category in ("pipe", "billet"):
        write_synthetic_source(
            store,
            images_prefix=f"img/{category}/",
            output_prefix=f"maps/{category}/{MAP_JOB}/",
            category=category,
            count=4,
            size=(64, 48),
            grid=4,
            job_id=MAP_JOB,
        )
    store.put_bytes("img/pipe/lonely.png", store.get_bytes("img/pipe/pipe_0000.png"))


def _params(**config: Any) -> dict[str, Any]:
    sources = [
        {"category": c, "images_prefix": f"img/{c}/", "maps_prefix": f"maps/{c}/{MAP_JOB}/"}
        for c in ("pipe", "billet")
    ]
    return {"sources": sources, "config": CONFIG | config, "artifact_name": "agbp-yolov8n"}


def _settings(tmp: Path, checkpoint_min_interval_s: float = 0.0) -> PretrainSettings:
    """Every epoch checkpointed unless asked otherwise: the tests kill and cancel between."""
    return PretrainSettings(
        common=CommonSettings(paths=PathSettings(home=tmp / "home")),
        checkpoint_min_interval_s=checkpoint_min_interval_s,
    )


def _run(
    jobs: JobStore,
    settings: PretrainSettings,
    params: dict[str, Any],
    *,
    job_id: str | None = None,
    worker: str = "w1",
) -> JobRecord:
    if job_id is None:
        job_id = jobs.create(
            kind="agbp", task_name="pretrain.agbp", queue="pretrain", params=params
        ).id
    options = RunnerOptions(worker=worker, lease_ttl_s=1e-6, reraise=(WorkerLost,))
    return run_job(
        job_id, jobs, lambda ctx: run_agbp_job(ctx, settings, AgbpTrainer(settings.device)), options
    )


@pytest.fixture(scope="module")
def finished(tmp_path_factory: pytest.TempPathFactory) -> tuple[JobRecord, ObjectStore, Path]:
    """One 1-epoch AGBP job run to completion (shared: training is the slow part)."""
    torch.set_num_threads(1)
    tmp = tmp_path_factory.mktemp("agbp")
    store = FileObjectStore(tmp / "store")
    _write_data(store)
    settings = _settings(tmp)
    record = _run(JobStore(store), settings, _params())
    return record, store, settings.cache_root()


def _ref(record: JobRecord) -> ArtifactRef:
    return ArtifactRef(name="agbp-yolov8n", version=record.id)


def test_a_finished_job_publishes_one_version_named_by_the_job_id(
    finished: tuple[JobRecord, ObjectStore, Path],
) -> None:
    # given
    record, store, _ = finished
    # then
    assert record.state == JobState.SUCCEEDED, record.error
    assert record.artifacts == [f"agbp-yolov8n:{record.id}"]
    assert ArtifactStore(store).versions("agbp-yolov8n") == [record.id]
    files = ArtifactStore(store).manifest(_ref(record)).files
    assert set(files) == {
        "backbone.pt",
        "config.yaml",
        "metrics.json",
        "loss_curve.csv",
        "loss_curve.png",
    }


def test_the_artifact_records_config_losses_and_lineage(
    finished: tuple[JobRecord, ObjectStore, Path],
) -> None:
    # given
    record, store, _ = finished
    artifacts = ArtifactStore(store)
    # when
    config = yaml.safe_load(artifacts.get_file_bytes(_ref(record), "config.yaml"))
    metrics = json.loads(artifacts.get_file_bytes(_ref(record), "metrics.json"))
    curve = artifacts.get_file_bytes(_ref(record), "loss_curve.csv").decode().splitlines()
    lineage = artifacts.manifest(_ref(record)).metadata
    # then: resolved config (recipe values filled, classes = categories)
    assert config["num_classes"] == 2
    assert config["stages"] == [3, 4]
    assert metrics["steps"] == 2
    assert [h["epoch"] for h in metrics["history"]] == [1.0]
    assert curve[0].startswith("epoch,lr,loss,distill,task")
    assert len(curve) == 2
    assert lineage["job_id"] == record.id
    assert [s["map_job_id"] for s in lineage["sources"]] == [MAP_JOB, MAP_JOB]
    assert [s["category"] for s in lineage["sources"]] == ["pipe", "billet"]


def test_the_job_record_holds_the_pairing_report_and_epoch_losses(
    finished: tuple[JobRecord, ObjectStore, Path],
) -> None:
    record, _, _ = finished
    pipe = record.outputs["pairing"][0]
    assert pipe["images_without_maps_examples"] == ["img/pipe/lonely.png"]
    assert record.outputs["pairs"] == 8
    assert {"loss", "distill", "task"} <= set(record.metrics)


def test_the_local_cache_is_removed_when_the_job_ends(
    finished: tuple[JobRecord, ObjectStore, Path],
) -> None:
    record, _, cache_root = finished
    assert not (cache_root / record.id).exists()


def test_backbone_weights_load_fully_into_the_backbone_and_an_ultralytics_detector(
    finished: tuple[JobRecord, ObjectStore, Path], tmp_path: Path
) -> None:
    from ultralytics.nn.tasks import DetectionModel

    # given
    record, store, _ = finished
    path = tmp_path / "backbone.pt"
    path.write_bytes(ArtifactStore(store).get_file_bytes(_ref(record), "backbone.pt"))
    weights = torch.load(path, weights_only=True)
    # when
    backbone = create_backbone("yolov8n", weights=path)
    detector = DetectionModel("yolov8n.yaml", ch=3, nc=1, verbose=False)  # type: ignore[no-untyped-call]
    own = detector.state_dict()
    matched = [k for k, v in weights.items() if k in own and own[k].shape == v.shape]
    # then
    report = backbone.load_report
    assert report is not None
    assert report.matched == report.total
    assert len(matched) == len(weights)
    assert len(weights) > 100


def _store_that(tmp: Path, action: Callable[[FileObjectStore, str], None]) -> FileObjectStore:
    class Hooked(FileObjectStore):
        def put_bytes(
            self, key: str, data: bytes, content_type: str = "application/octet-stream"
        ) -> None:
            super().put_bytes(key, data, content_type)
            if "/checkpoints/" in key:
                action(self, key)

    return Hooked(tmp / "store")


def test_cancel_mid_training_ends_canceled_and_publishes_nothing(tmp_path: Path) -> None:
    # given: the cancel flag appears as soon as the first checkpoint is written
    def cancel(store: FileObjectStore, key: str) -> None:
        FileObjectStore.put_bytes(store, key.split("checkpoints/")[0] + "cancel", b"now")

    store = _store_that(tmp_path, cancel)
    _write_data(store)
    # when
    record = _run(JobStore(store), _settings(tmp_path), _params(epochs=3, checkpoint_every=1))
    # then
    assert record.state == JobState.CANCELED
    assert store.list("models/") == []


@pytest.mark.parametrize(("interval_s", "saved_steps"), [(0.0, [2, 4, 6]), (3600.0, [6])])
def test_end_of_epoch_checkpoints_keep_the_least_interval_but_the_last_is_always_saved(
    tmp_path: Path, interval_s: float, saved_steps: list[int]
) -> None:
    # given: a 3-epoch job of two steps per epoch, its checkpoint writes counted
    written: list[str] = []

    def seen(store: FileObjectStore, key: str) -> None:
        written.append(key)

    store = _store_that(tmp_path, seen)
    _write_data(store)
    settings = _settings(tmp_path, checkpoint_min_interval_s=interval_s)
    # when
    record = _run(JobStore(store), settings, _params(epochs=3))
    # then
    assert record.state == JobState.SUCCEEDED, record.error
    assert len(written) == len(saved_steps)
    assert record.metrics["checkpoint_step"] == saved_steps[-1]


def test_a_job_whose_worker_died_resumes_from_its_checkpoint(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    # given: the worker dies right after the end-of-epoch-1 checkpoint
    died: list[str] = []

    def die(store: FileObjectStore, key: str) -> None:
        if not died:
            died.append(key)
            raise WorkerLost

    store = _store_that(tmp_path, die)
    _write_data(store)
    jobs, settings = JobStore(store), _settings(tmp_path)
    with pytest.raises(WorkerLost):
        _run(jobs, settings, _params(epochs=2))
    [lost] = jobs.list()
    epoch_one = dict(lost.metrics)
    # when another worker takes the job over
    with caplog.at_level(logging.INFO, logger="services.pretrain"):
        record = _run(jobs, settings, _params(epochs=2), job_id=lost.id, worker="w2")
    # then
    assert lost.state == JobState.RUNNING
    assert record.state == JobState.SUCCEEDED, record.error
    assert record.resumed == 1
    assert "resuming AGBP from step 2" in caplog.text
    history = record.outputs["history"]
    assert [h["epoch"] for h in history] == [1.0, 2.0]
    assert history[0]["loss"] == pytest.approx(epoch_one["loss"])
    assert ArtifactStore(store).versions("agbp-yolov8n") == [lost.id]


def test_start_weights_outside_the_model_folder_are_refused(tmp_path: Path) -> None:
    # given
    store = FileObjectStore(tmp_path / "store")
    _write_data(store)
    params = _params() | {"start_weights": {"path": "/etc/hostname"}}
    # when
    record = _run(JobStore(store), _settings(tmp_path), params)
    # then
    assert record.state == JobState.FAILED
    assert record.error_code == "start_weights_outside_model_dir"


def test_start_weights_from_a_published_artifact_are_used(
    finished: tuple[JobRecord, ObjectStore, Path], tmp_path: Path
) -> None:
    # given: a new job starting from the finished job's artifact, on the same store
    record, store, _ = finished
    params = _params() | {"start_weights": {"artifact": str(_ref(record))}}
    params["artifact_name"] = "agbp-yolov8n-second"
    # when
    second = _run(JobStore(store), _settings(tmp_path), params)
    # then
    assert second.state == JobState.SUCCEEDED, second.error
    lineage = ArtifactStore(store).manifest(
        ArtifactRef(name="agbp-yolov8n-second", version=second.id)
    )
    assert lineage.metadata["start_weights"] == {"artifact": str(_ref(record)), "path": None}


def test_a_source_without_any_pair_fails_the_job_with_unpaired_data(tmp_path: Path) -> None:
    # given
    store = FileObjectStore(tmp_path / "store")
    _write_data(store)
    params = _params()
    params["sources"][1]["maps_prefix"] = "maps/nowhere/"
    # when
    record = _run(JobStore(store), _settings(tmp_path), params)
    # then
    assert record.state == JobState.FAILED
    assert record.error_code == "unpaired_data"
    assert "billet" in (record.error or "")


def test_checkpoints_hold_only_tensors_and_plain_types(
    finished: tuple[JobRecord, ObjectStore, Path],
) -> None:
    # given
    record, store, _ = finished
    # when
    raw = JobStore(store).load_checkpoint(record.id, "agbp.pt")
    # then: loadable without unpickling arbitrary objects
    assert raw is not None
    state = torch.load(io.BytesIO(raw), weights_only=True)
    assert state["step"] == 2


def test_a_config_the_api_could_not_check_fails_the_job_with_invalid_config(
    tmp_path: Path,
) -> None:
    # given: a job queued by an API without the training stack
    store = FileObjectStore(tmp_path / "store")
    _write_data(store)
    # when
    record = _run(JobStore(store), _settings(tmp_path), _params(epochs=0))
    # then
    assert record.state == JobState.FAILED
    assert record.error_code == "invalid_config"
    assert "epochs" in (record.error or "")


class FakeClock:
    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


def test_the_cancel_flag_is_read_at_most_once_per_interval_and_after_a_checkpoint() -> None:
    # given: a flag that counts its reads and rises at the third
    reads: list[float] = []
    clock = FakeClock()

    def read() -> bool:
        reads.append(clock.now)
        return len(reads) >= 3

    cancel = ThrottledCancel(read, interval_s=1.0, clock=clock)
    # when / then: the first step reads; steps within the interval do not
    assert not cancel()
    clock.now += 0.5
    assert not cancel()
    assert reads == [100.0]
    clock.now += 0.5  # the interval has passed
    assert not cancel()
    assert reads == [100.0, 101.0]
    cancel.check_next()  # a checkpoint was saved: the next step reads at once
    clock.now += 0.1
    assert cancel()
    assert reads == [100.0, 101.0, 101.1]
    clock.now += 0.1
    assert cancel()  # stays stopped without reading again
    assert len(reads) == 3
