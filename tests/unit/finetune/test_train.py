"""Tiny offline CPU runs: AGDP from a backbone, finetune from AGDP, cancel, resume."""

from __future__ import annotations

import re
import socket
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
import torch

from services.finetune.ml.config import AgdpConfig, FinetuneConfig
from services.finetune.ml.dataset import to_single_class
from services.finetune.ml.materialize import YoloDataFolder, materialize_yolo
from services.finetune.ml.splits import split_train_val
from services.finetune.ml.yolov8.detector import BackboneInit, DetectorInit, build_detector
from services.finetune.ml.yolov8.train import TrainResult, finetune, train_agdp
from shared.ml.hooks import TrainHooks

TINY = {"scale": "n", "batch": 4, "imgsz": 64, "device": "cpu", "workers": 0, "seed": 0}
BACKBONE = re.compile(r"^model\.[0-9]\.")


@dataclass
class Recorder:
    """Collects what a run sends through TrainHooks."""

    stop: bool = False
    progress: list[tuple[float, str, dict[str, float]]] = field(default_factory=list)
    checkpoints: list[dict[str, Any]] = field(default_factory=list)
    stop_calls: int = 0

    def hooks(self, resume_state: dict[str, Any] | None = None) -> TrainHooks:
        return TrainHooks(
            on_progress=self._progress,
            should_stop=self._should_stop,
            on_checkpoint=self.checkpoints.append,
            resume_state=resume_state,
        )

    def _progress(self, percent: float, message: str, metrics: Mapping[str, float]) -> None:
        self.progress.append((percent, message, dict(metrics)))

    def _should_stop(self) -> bool:
        self.stop_calls += 1
        return self.stop


def _folder(make_dataset: Any, tmp: Path, classes: tuple[str, ...], seed: int) -> YoloDataFolder:
    dataset, images = make_dataset(n=8, classes=classes, size=64, seed=seed)
    train, val = split_train_val(dataset, 0.25, seed=0)
    if len(classes) == 1:
        train, val = to_single_class(train), to_single_class(val)
    return materialize_yolo(train, val, images, tmp)


@pytest.fixture(scope="module", autouse=True)
def network_attempts() -> Iterator[list[str]]:
    """Records (and refuses) every DNS lookup or connect made while this module runs."""
    attempts: list[str] = []

    def refuse(*args: Any, **kwargs: Any) -> Any:
        attempts.append(repr(args[:2]))
        raise OSError("network disabled in unit tests")

    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(socket, "getaddrinfo", refuse)
        patch.setattr(socket.socket, "connect", refuse)
        yield attempts


@pytest.fixture(scope="module")
def source_backbone() -> dict[str, torch.Tensor]:
    # an "AGBP" backbone whose BN affine and running statistics differ from any fresh init
    model = build_detector("n", 1, seed=123).model
    generator = torch.Generator().manual_seed(7)
    state = {}
    for name, tensor in model.state_dict().items():
        if BACKBONE.match(name) and tensor.is_floating_point():
            noise = torch.rand(tensor.shape, generator=generator)
            tensor = tensor * (0.5 + noise) if "running_var" in name else tensor + 0.1 * noise
        if BACKBONE.match(name):
            state[name] = tensor.clone()
    return state


@pytest.fixture(scope="module")
def agdp(
    make_dataset: Any,
    tmp_path_factory: pytest.TempPathFactory,
    source_backbone: dict[str, torch.Tensor],
) -> tuple[TrainResult, Recorder]:
    data = _folder(make_dataset, tmp_path_factory.mktemp("agdp-data"), ("rect",), seed=1)
    recorder = Recorder()
    config = AgdpConfig(epochs=1, **TINY)
    work = tmp_path_factory.mktemp("agdp-run")
    result = train_agdp(BackboneInit(source_backbone), data, work, config, recorder.hooks())
    return result, recorder


@pytest.fixture(scope="module")
def two_class_data(make_dataset: Any, tmp_path_factory: pytest.TempPathFactory) -> YoloDataFolder:
    return _folder(make_dataset, tmp_path_factory.mktemp("ft-data"), ("light", "dark"), seed=2)


def test_agdp_one_epoch_reports_progress_and_checkpoints(
    agdp: tuple[TrainResult, Recorder],
) -> None:
    # given a finished 1-epoch AGDP run
    result, recorder = agdp
    # then
    assert result.epochs_completed == 1
    assert not result.canceled
    percent, message, metrics = recorder.progress[0]
    assert (percent, message) == (100.0, "epoch 1/1 done")
    assert {"box_loss", "cls_loss", "dfl_loss", "map50", "map50_95"} <= set(metrics)
    assert recorder.checkpoints
    assert Path(recorder.checkpoints[-1]["path"]).is_file()
    assert recorder.checkpoints[-1]["config"]["freeze"] == 10
    assert result.checkpoint.classes == ("anomaly",)
    assert result.transfer is not None
    assert result.transfer.fraction == 1.0


def test_agdp_trains_on_the_given_backbone_not_a_fresh_one(
    agdp: tuple[TrainResult, Recorder], source_backbone: dict[str, torch.Tensor]
) -> None:
    # given the saved (EMA, fp16) weights after one epoch with the backbone frozen
    state = agdp[0].checkpoint.state_dict
    fresh = build_detector("n", 1, seed=0).model.state_dict()  # what a lost transfer gives
    # then every backbone tensor still equals the source (up to fp16 storage) ...
    for name, tensor in source_backbone.items():
        if tensor.is_floating_point():
            torch.testing.assert_close(state[name], tensor.float(), rtol=1e-3, atol=1e-3)
    conv = "model.4.m.0.cv1.conv.weight"
    assert not torch.allclose(state[conv], fresh[conv], atol=1e-2)
    # ... while the trainable head moved away from its initialisation
    head = "model.22.cv3.0.2.bias"
    assert not torch.allclose(state[head], fresh[head], atol=1e-4)


def test_finetune_from_agdp_copies_all_but_class_logits(
    agdp: tuple[TrainResult, Recorder],
    two_class_data: YoloDataFolder,
    tmp_path: Path,
) -> None:
    # given the 1-class AGDP checkpoint and a 2-class dataset
    recorder = Recorder()
    # when
    result = finetune(
        DetectorInit(agdp[0].checkpoint),
        two_class_data,
        tmp_path,
        FinetuneConfig(epochs=1, **TINY),
        recorder.hooks(),
    )
    # then
    assert result.transfer is not None
    skipped = sorted(name for name, _ in result.transfer.skipped)
    assert len(skipped) == 6
    assert all(".cv3." in n and n.endswith((".2.weight", ".2.bias")) for n in skipped)
    assert result.checkpoint.classes == ("light", "dark")
    assert result.best_pt.is_file()
    assert result.epochs_completed == 1
    assert recorder.progress[-1][1] == "final evaluation of best.pt"


def test_should_stop_cancels_after_one_batch_and_run_resumes(
    two_class_data: YoloDataFolder, tmp_path: Path
) -> None:
    # given a 3-epoch run whose cancel flag is already set
    recorder = Recorder(stop=True)
    config = FinetuneConfig(epochs=3, **TINY)
    # when
    canceled = finetune(None, two_class_data, tmp_path / "a", config, recorder.hooks())
    # then it stopped inside epoch 1 and still wrote last.pt
    assert canceled.canceled
    assert canceled.epochs_completed == 1
    assert recorder.stop_calls == 1
    assert len(recorder.progress) == 1
    assert canceled.last_pt.is_file()
    assert len(recorder.checkpoints) == 1
    # when the job comes back with the checkpoint it was handed
    again = Recorder()
    resume_state = {"path": recorder.checkpoints[-1]["path"]}
    resumed = finetune(None, two_class_data, tmp_path / "b", config, again.hooks(resume_state))
    # then it finishes the remaining epochs only
    assert not resumed.canceled
    assert resumed.epochs_completed == 3
    assert [m["epoch"] for _, _, m in again.progress[:-1]] == [2.0, 3.0]


def test_val_every_validates_only_due_epochs_and_the_last(
    two_class_data: YoloDataFolder, tmp_path: Path
) -> None:
    # given a 5-epoch finetune that validates every 2nd epoch
    recorder = Recorder()
    config = FinetuneConfig(epochs=5, val_every=2, **TINY)
    # when
    result = finetune(None, two_class_data, tmp_path, config, recorder.hooks())
    # then epochs 2, 4 and the last carry val metrics; 1 and 3 report none (not a stale copy)
    epochs = {int(m["epoch"]): m for _, message, m in recorder.progress if "epoch" in m}
    assert sorted(epochs) == [1, 2, 3, 4, 5]
    assert [e for e, m in sorted(epochs.items()) if "map50" in m] == [2, 4, 5]
    assert all("box_loss" in m for m in epochs.values())
    assert result.epochs_completed == 5
    assert result.best_pt.is_file()
    # and ultralytics' results.csv keeps one column set, the skipped epochs' val as nan
    lines = (tmp_path / "run" / "results.csv").read_text().splitlines()
    assert len({line.count(",") for line in lines}) == 1
    assert len(lines) == 6
    header = lines[0].split(",")
    column = header.index("metrics/mAP50(B)")
    assert [lines[e].split(",")[column] for e in (1, 3)] == ["nan", "nan"]
    assert lines[2].split(",")[column] != "nan"


def test_no_run_tried_to_reach_the_network(
    agdp: tuple[TrainResult, Recorder], network_attempts: list[str]
) -> None:
    # given the runs above (AMP check, fonts, hub, telemetry would all need DNS)
    # then
    assert network_attempts == []
