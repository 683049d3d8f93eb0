"""The detector-family table: which backbones a family takes, what a config resolves to,
and the 422 (invalid_config) a config gets for a backbone its family does not take."""

from __future__ import annotations

import pytest
from pydantic import ValidationError

from shared.errors import InvalidInputError
from shared.schemas.detector import FinetuneConfig
from shared.schemas.detector_families import (
    DEFAULT_FAMILY,
    FAMILIES,
    agbp_backbone,
    check_backbone,
    detector_family,
)


def test_each_family_takes_only_its_backbone_families() -> None:
    yolo, frcnn = detector_family("yolov8"), detector_family("faster-rcnn")
    assert yolo.takes("yolov8s")
    assert not yolo.takes("resnet50")
    assert frcnn.takes("resnet50")
    assert frcnn.takes("resnet18-test")
    assert not frcnn.takes("yolov8n")
    assert not frcnn.takes("swin_base")
    assert not frcnn.takes("no-such-backbone")


def test_check_backbone_resolves_the_default_and_names_the_choices() -> None:
    assert check_backbone("faster-rcnn", None) == "resnet50"
    assert check_backbone(DEFAULT_FAMILY, None) is None  # YOLOv8: the scale decides
    with pytest.raises(InvalidInputError) as caught:
        check_backbone("faster-rcnn", "yolov8n")
    assert caught.value.code == "backbone_incompatible"
    assert "resnet50" in caught.value.message
    with pytest.raises(InvalidInputError) as unknown:
        detector_family("detr")
    assert unknown.value.code == "unknown_detector"


def test_agbp_pretrains_the_backbone_the_detector_builds_on() -> None:
    assert agbp_backbone("yolov8", "m") == "yolov8m"
    assert agbp_backbone("faster-rcnn", "n") == "resnet50"


@pytest.mark.parametrize(
    "config",
    [
        {"family": "faster-rcnn", "backbone": "swin_base"},
        {"family": "yolov8", "backbone": "resnet50"},
        {"family": "yolov8", "backbone": "yolov8m", "scale": "n"},
        {"family": "unknown"},
    ],
)
def test_a_config_the_family_cannot_build_is_invalid(config: dict[str, str]) -> None:
    with pytest.raises(ValidationError):
        FinetuneConfig.model_validate(config)


def test_a_valid_config_keeps_family_and_backbone_out_of_ultralytics_args() -> None:
    config = FinetuneConfig.model_validate({"family": "yolov8", "backbone": "yolov8s"})
    args = config.ultralytics_args("cpu")
    assert "family" not in args
    assert "backbone" not in args
    assert FinetuneConfig().family == DEFAULT_FAMILY
    assert set(FAMILIES) >= {"yolov8", "faster-rcnn"}
