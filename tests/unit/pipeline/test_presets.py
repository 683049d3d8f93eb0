"""A preset's step configs: the request's seed and overrides on top, the AGBP backbone of the
detector family, and a family's own values where the default recipe does not suit it."""

from __future__ import annotations

import pytest

from services.pipeline.usecases.presets import PRESETS, step_config

pytestmark = pytest.mark.unit


def test_yolo_steps_take_the_preset_recipe_with_the_seed_and_overrides() -> None:
    config = step_config("cpu-demo", "finetune", "n", 7, {"epochs": 3})
    assert config == {**PRESETS["cpu-demo"].finetune, "seed": 7, "epochs": 3}
    assert "family" not in config


def test_faster_rcnn_gets_its_smoke_recipe_and_family_in_every_detector_step() -> None:
    finetune = step_config("cpu-demo", "finetune", "n", 0, {}, detector="faster-rcnn")
    agdp = step_config("cpu-demo", "agdp", "n", 0, {}, detector="faster-rcnn")
    assert finetune["family"] == agdp["family"] == "faster-rcnn"
    assert finetune["epochs"] < PRESETS["cpu-demo"].finetune["epochs"]
    assert agdp["batch"] == 4
    assert agdp["imgsz"] == PRESETS["cpu-demo"].agdp["imgsz"]  # the rest of the recipe kept


def test_agbp_trains_the_backbone_the_family_builds_on() -> None:
    assert step_config("cpu", "agbp", "s", 0, {})["backbone"] == "yolov8s"
    assert step_config("cpu", "agbp", "s", 0, {}, detector="faster-rcnn")["backbone"] == "resnet50"


def test_request_overrides_win_over_family_values() -> None:
    config = step_config("cpu-demo", "finetune", "n", 0, {"epochs": 1}, detector="faster-rcnn")
    assert config["epochs"] == 1
