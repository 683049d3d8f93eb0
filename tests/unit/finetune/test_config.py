"""Training configs: unknown keys refused, recipe defaults, mapping onto ultralytics args."""

from __future__ import annotations

from pathlib import Path

import pytest
from pydantic import ValidationError

from services.finetune.ml.config import AgdpConfig, FinetuneConfig
from services.finetune.ml.materialize import YoloDataFolder
from services.finetune.ml.yolov8.checkpoint import DetectorCheckpoint
from services.finetune.ml.yolov8.detector import DetectorInit
from services.finetune.ml.yolov8.train import finetune
from shared.errors import InvalidInputError


def test_unknown_and_out_of_range_keys_are_refused() -> None:
    # when / then
    with pytest.raises(ValidationError, match="extra_forbidden"):
        FinetuneConfig(lr=0.1)  # type: ignore[call-arg]
    with pytest.raises(ValidationError, match="multiple of 32"):
        FinetuneConfig(imgsz=100)
    with pytest.raises(ValidationError):
        FinetuneConfig(scale="x")  # type: ignore[arg-type]


def test_recipe_defaults_follow_the_spec() -> None:
    # when
    agdp, fine = AgdpConfig(), FinetuneConfig()
    # then agssp-spec §5.2 / §5.4
    assert (agdp.freeze, agdp.epochs, agdp.lr0, agdp.close_mosaic) == (10, 10, 0.01, 0)
    assert (fine.freeze, fine.epochs, fine.lr0, fine.patience) == (0, 500, 0.0025, 100)
    assert fine.select_metric == "map50"
    assert fine.seed == agdp.seed == 2024


def test_ultralytics_args_rename_and_force_offline_safe_values() -> None:
    # when
    args = FinetuneConfig(aug_scale=0.3, time_hours=2.0).ultralytics_args("cpu")
    # then the model scale never leaks into the augmentation 'scale' argument
    assert args["scale"] == 0.3
    assert args["time"] == 2.0
    assert args["plots"] is False
    assert args["device"] == "cpu"
    assert {"select_metric", "aug_scale", "time_hours"}.isdisjoint(args)


def test_finetune_refuses_a_checkpoint_of_another_scale(tmp_path: Path) -> None:
    # given an s-scale checkpoint and an n-scale config
    checkpoint = DetectorCheckpoint(scale="s", classes=("anomaly",), state_dict={})
    data = YoloDataFolder(tmp_path, tmp_path / "data.yaml", ("a",), 1, 1)
    # when / then
    with pytest.raises(InvalidInputError, match="YOLOv8-s, config asks for n"):
        finetune(DetectorInit(checkpoint), data, tmp_path, FinetuneConfig(scale="n"))


def test_min_steps_sets_the_epochs_from_the_train_images() -> None:
    config = FinetuneConfig(epochs=10, batch=8, min_steps=2700)
    assert config.for_train_images(56).epochs == 386  # 7 steps an epoch
    assert config.for_train_images(5000).epochs == 10  # 625 steps an epoch: 10 suffice
    assert config.for_train_images(0) is config
    assert FinetuneConfig(epochs=10).for_train_images(56) == FinetuneConfig(epochs=10)
    assert FinetuneConfig(batch=1, min_steps=10**8).for_train_images(1).epochs == 10_000
    assert "min_steps" not in config.ultralytics_args("cpu")
