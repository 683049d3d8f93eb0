"""YOLOv8 construction and counted weight transfer (backbone, detector, checkpoint file)."""

from __future__ import annotations

import re
from pathlib import Path

import pytest
import torch

from services.finetune.ml.yolov8.checkpoint import DetectorCheckpoint
from services.finetune.ml.yolov8.detector import (
    BackboneInit,
    CheckpointPathInit,
    DetectorInit,
    build_detector,
    detector_from_checkpoint,
)
from shared.errors import InvalidInputError

CLASS_LOGIT = re.compile(r"^model\.22\.cv3\.[0-2]\.2\.(weight|bias)$")


@pytest.fixture(scope="module")
def backbone_n() -> dict[str, torch.Tensor]:
    # stands in for an AGBP artifact: layers 0-9 of a DetectionModel, same key names
    model = build_detector("n", 1, seed=1).model
    return {k: v.clone() for k, v in model.state_dict().items() if re.match(r"model\.\d\.", k)}


def test_build_detector_scales_have_their_sizes() -> None:
    # when
    n = build_detector("n", 6)
    s = build_detector("s", 6)
    # then
    params = [sum(p.numel() for p in d.model.parameters()) for d in (n, s)]
    assert 2.5e6 < params[0] < 3.5e6
    assert 10e6 < params[1] < 12e6
    assert n.classes == ("0", "1", "2", "3", "4", "5")
    assert n.report is None


def test_build_detector_rejects_unknown_scale() -> None:
    # when / then
    with pytest.raises(InvalidInputError, match="scale"):
        build_detector("x", 1)  # type: ignore[arg-type]


def test_backbone_transfer_loads_every_backbone_tensor(backbone_n: dict[str, torch.Tensor]) -> None:
    # given
    source = backbone_n
    # when
    detector = build_detector("n", 6, BackboneInit(source), seed=0)
    # then
    report = detector.report
    assert report is not None
    assert report.loaded == report.total == len(source)
    assert report.skipped == ()
    own = detector.model.state_dict()
    assert all(torch.equal(own[k], v) for k, v in source.items())


def test_backbone_transfer_skips_foreign_keys_and_counts_them(
    backbone_n: dict[str, torch.Tensor],
) -> None:
    # given a source with one head tensor and one unknown tensor added
    source = dict(backbone_n)
    source["model.22.cv2.0.0.conv.weight"] = torch.zeros(1)
    source["model.3.extra"] = torch.zeros(1)
    # when
    report = build_detector("n", 1, BackboneInit(source)).report
    # then
    assert report is not None
    assert report.loaded == report.total - 2
    assert dict(report.skipped) == {
        "model.22.cv2.0.0.conv.weight": "not a backbone key (model.0-9.*)",
        "model.3.extra": "no tensor of that name in the detector",
    }


def test_transfer_below_threshold_raises(backbone_n: dict[str, torch.Tensor]) -> None:
    # given a backbone of another width (as an s-scale one would be): every shape differs
    source = {k: torch.zeros(2 * v.numel() + 1) for k, v in backbone_n.items()}
    # when / then
    with pytest.raises(InvalidInputError, match=r"loaded \d+/\d+") as info:
        build_detector("n", 1, BackboneInit(source))
    assert info.value.code == "weight_transfer_failed"


def test_threshold_is_configurable(backbone_n: dict[str, torch.Tensor]) -> None:
    # given a source of which only ~half of the tensors fit
    source = dict(backbone_n)
    wrong = {k: torch.zeros(3) for k in list(source)[: len(source) // 2]}
    source.update(wrong)
    # when / then
    with pytest.raises(InvalidInputError):
        build_detector("n", 1, BackboneInit(source))
    report = build_detector("n", 1, BackboneInit(source, min_fraction=0.4)).report
    assert report is not None
    assert report.loaded == report.total - len(wrong)


def test_one_class_to_six_classes_reinitialises_only_class_logits() -> None:
    # given a 1-class (AGDP) detector
    agdp = build_detector("n", 1, class_names=("anomaly",), seed=3)
    checkpoint = agdp.to_checkpoint()
    # when
    six = build_detector("n", 6, DetectorInit(checkpoint), seed=4)
    # then exactly the three class-logit convs (weight + bias) keep their fresh init
    report = six.report
    assert report is not None
    assert sorted(name for name, _ in report.skipped) == sorted(
        k for k in checkpoint.state_dict if CLASS_LOGIT.match(k)
    )
    assert len(report.skipped) == 6
    assert report.loaded == report.total - 6 == report.target_total - 6
    own = six.model.state_dict()
    copied = [k for k in checkpoint.state_dict if not CLASS_LOGIT.match(k)]
    assert all(torch.equal(own[k], checkpoint.state_dict[k]) for k in copied)


def test_checkpoint_bytes_round_trip_rebuilds_identical_detector(tmp_path: Path) -> None:
    # given
    detector = build_detector("n", 2, class_names=("a", "b"), seed=5)
    checkpoint = detector.to_checkpoint(metrics={"map50": 0.5}, config={"epochs": 1})
    # when
    loaded = DetectorCheckpoint.load(checkpoint.save(tmp_path / "ckpt.pt"))
    rebuilt = detector_from_checkpoint(loaded)
    # then
    assert (loaded.scale, loaded.classes, loaded.metrics) == ("n", ("a", "b"), {"map50": 0.5})
    assert rebuilt.report is not None
    assert rebuilt.report.fraction == 1.0
    x = torch.rand(1, 3, 64, 64)
    detector.model.eval()
    rebuilt.model.eval()
    with torch.no_grad():
        assert torch.equal(detector.model(x)[0], rebuilt.model(x)[0])


def test_checkpoint_rejects_foreign_bytes() -> None:
    # when / then
    with pytest.raises(InvalidInputError, match="not a agssp-yolov8-detector"):
        DetectorCheckpoint.from_bytes(b"not a checkpoint")


def test_checkpoint_path_init_reads_our_format_and_ultralytics_pt(tmp_path: Path) -> None:
    # given the same weights in our format and in ultralytics' (trusted pickle) layout
    source = build_detector("n", 2, seed=6)
    ours = source.to_checkpoint().save(tmp_path / "ours.pt")
    theirs = tmp_path / "theirs.pt"
    torch.save({"model": source.model, "train_args": {}}, theirs)
    # when
    from_ours = build_detector("n", 2, CheckpointPathInit(ours))
    from_theirs = build_detector("n", 2, CheckpointPathInit(theirs))
    # then
    for built in (from_ours, from_theirs):
        assert built.report is not None
        assert built.report.fraction == 1.0
    with pytest.raises(InvalidInputError, match="does not exist"):
        build_detector("n", 2, CheckpointPathInit(tmp_path / "missing.pt"))
