"""Backbone factory: detector-compatible keys, loud weight loading, shapes, frozen stages."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
import torch
from torch import nn

from shared.errors import InvalidInputError
from shared.ml.backbones import create_backbone, detector_state_dict, load_weights
from shared.ml.backbones.timm_backbones import SwinBackbone


@pytest.fixture(autouse=True)
def _one_thread() -> None:
    torch.set_num_threads(1)


@pytest.fixture(scope="module")
def detector_state() -> dict[str, torch.Tensor]:
    from ultralytics.nn.tasks import DetectionModel

    torch.manual_seed(1)
    detector: Any = DetectionModel("yolov8n.yaml", verbose=False)  # type: ignore[no-untyped-call]
    return detector.state_dict()  # type: ignore[no-any-return]


def test_yolov8n_keys_are_a_subset_of_detector_keys_with_equal_shapes(
    detector_state: dict[str, torch.Tensor],
) -> None:
    # given
    backbone = create_backbone("yolov8n")
    # when
    own = backbone.state_dict()
    # then
    assert set(own) <= set(detector_state)
    assert all(own[k].shape == detector_state[k].shape for k in own)
    assert {k.split(".")[1] for k in own} == {str(i) for i in range(10)}


def test_yolov8n_backbone_weights_load_into_a_detector_without_renaming() -> None:
    from ultralytics.nn.tasks import DetectionModel

    # given
    weights = detector_state_dict(create_backbone("yolov8n"))
    detector: Any = DetectionModel("yolov8n.yaml", verbose=False)  # type: ignore[no-untyped-call]
    # when
    result = detector.load_state_dict(weights, strict=False)
    # then
    assert result.unexpected_keys == []
    assert torch.equal(
        detector.state_dict()["model.9.cv2.conv.weight"], weights["model.9.cv2.conv.weight"]
    )


def test_loading_a_detector_state_dict_reports_every_tensor_matched(
    detector_state: dict[str, torch.Tensor],
) -> None:
    # given
    backbone = create_backbone("yolov8n")
    expected_total = sum(1 for k in backbone.state_dict() if not k.endswith("num_batches_tracked"))
    # when
    report = load_weights(backbone, detector_state)
    # then
    assert (report.matched, report.total) == (expected_total, expected_total)
    assert report.missing == ()
    assert torch.equal(
        backbone.state_dict()["model.4.m.0.cv1.conv.weight"],
        detector_state["model.4.m.0.cv1.conv.weight"],
    )


def test_create_backbone_keeps_the_load_report(detector_state: dict[str, torch.Tensor]) -> None:
    # when
    backbone = create_backbone("yolov8n", weights=detector_state)
    # then
    assert backbone.load_report is not None
    assert backbone.load_report.ratio == 1.0


def test_loading_weights_that_match_too_few_tensors_is_refused(
    detector_state: dict[str, torch.Tensor],
) -> None:
    # given: only layers 0..4 of 10 (well under 90 % of the tensors)
    partial = {k: v for k, v in detector_state.items() if int(k.split(".")[1]) <= 4}
    backbone = create_backbone("yolov8n")
    # when / then
    with pytest.raises(InvalidInputError, match="matched"):
        load_weights(backbone, partial)


def test_a_refused_load_leaves_the_backbone_untouched(
    detector_state: dict[str, torch.Tensor],
) -> None:
    # given
    partial = {k: v for k, v in detector_state.items() if k.startswith("model.0.")}
    backbone = create_backbone("yolov8n")
    before = backbone.state_dict()["model.0.conv.weight"].clone()
    # when
    with pytest.raises(InvalidInputError):
        load_weights(backbone, partial)
    # then
    assert torch.equal(backbone.state_dict()["model.0.conv.weight"], before)


def test_weights_nested_under_backbone_in_a_checkpoint_file_load(tmp_path: Path) -> None:
    # given: the layout of our AGBP checkpoints ({"backbone": state_dict, ...})
    source = create_backbone("yolov8n")
    path = tmp_path / "agbp.pt"
    torch.save({"backbone": source.state_dict(), "step": 3}, path)
    target = create_backbone("yolov8n")
    # when
    report = load_weights(target, path)
    # then
    assert report.ratio == 1.0
    assert torch.equal(
        target.state_dict()["model.8.cv2.conv.weight"],
        source.state_dict()["model.8.cv2.conv.weight"],
    )


def test_shape_mismatched_tensors_are_counted_not_loaded(
    detector_state: dict[str, torch.Tensor],
) -> None:
    # given: a yolov8s state dict has the same keys but wider tensors
    wide = create_backbone("yolov8s").state_dict()
    backbone = create_backbone("yolov8n")
    # when
    report = load_weights(backbone, wide, min_match=0.0)
    # then
    assert len(report.shape_mismatch) > 0
    assert report.matched + len(report.shape_mismatch) <= report.total


def test_weights_file_with_ddp_prefixes_loads(tmp_path: Path) -> None:
    # given
    source = create_backbone("yolov8n")
    path = tmp_path / "weights.pt"
    torch.save({"module." + k: v for k, v in source.state_dict().items()}, path)
    target = create_backbone("yolov8n")
    # when
    report = load_weights(target, path)
    # then
    assert report.ratio == 1.0
    assert torch.equal(
        target.state_dict()["model.0.conv.weight"], source.state_dict()["model.0.conv.weight"]
    )


def test_pickled_module_file_is_refused(tmp_path: Path) -> None:
    # given: a whole module, as ultralytics checkpoints store it (code, not data)
    path = tmp_path / "model.pt"
    torch.save(nn.Linear(2, 2), path)
    # when / then
    with pytest.raises(InvalidInputError, match="state_dict"):
        load_weights(create_backbone("yolov8n"), path)


def test_yolov8s_stage_outputs_at_224() -> None:
    # given
    backbone = create_backbone("yolov8s", out_indices=(2, 3, 4)).eval()
    # when
    with torch.no_grad():
        feats = backbone(torch.zeros(2, 3, 224, 224))
    # then
    assert [tuple(f.shape) for f in feats] == [(2, 128, 28, 28), (2, 256, 14, 14), (2, 512, 7, 7)]
    assert backbone.out_channels == (128, 256, 512)
    assert backbone.strides == (8, 16, 32)


def test_resnet50_default_outputs_at_224() -> None:
    # given
    backbone = create_backbone("resnet50").eval()
    # when
    with torch.no_grad():
        feats = backbone(torch.zeros(1, 3, 224, 224))
    # then
    assert [tuple(f.shape) for f in feats] == [(1, 1024, 14, 14), (1, 2048, 7, 7)]


def test_swin_base_last_stage_at_192() -> None:
    # given
    backbone = create_backbone("swin_base", img_size=192).eval()
    # when
    with torch.no_grad():
        feats = backbone(torch.zeros(1, 3, 192, 192))
    # then
    assert [tuple(f.shape) for f in feats] == [(1, 1024, 6, 6)]


def test_frozen_stages_have_no_trainable_parameters() -> None:
    # when
    backbone = create_backbone("yolov8n", frozen_stages=2)
    # then: stem + stages 1, 2 are layers 0..4
    frozen = {int(n.split(".")[1]) for n, p in backbone.named_parameters() if not p.requires_grad}
    trainable = {int(n.split(".")[1]) for n, p in backbone.named_parameters() if p.requires_grad}
    assert frozen == {0, 1, 2, 3, 4}
    assert trainable == {5, 6, 7, 8, 9}


def test_frozen_stages_stay_in_eval_mode_after_train() -> None:
    # given
    backbone: Any = create_backbone("yolov8n", frozen_stages=2)
    # when
    backbone.train()
    # then
    assert [backbone.model[i].training for i in range(10)] == [False] * 5 + [True] * 5


def test_frozen_resnet_stem_keeps_batchnorm_statistics_in_train_mode() -> None:
    # given
    backbone: Any = create_backbone("resnet18-test", frozen_stages=0).train()
    before = backbone.bn1.running_mean.clone()
    # when
    backbone(torch.randn(2, 3, 64, 64) * 5 + 3)
    # then
    assert torch.equal(backbone.bn1.running_mean, before)
    assert backbone.layer1.training


def test_swin_masked_forward_with_empty_mask_equals_plain_forward() -> None:
    # given
    torch.manual_seed(0)
    backbone = create_backbone("swin-tiny-test").eval()
    assert isinstance(backbone, SwinBackbone)
    x = torch.randn(1, 3, 64, 64)
    token = torch.randn(1, 1, 1, 16)
    # when
    with torch.no_grad():
        plain = backbone(x)[-1]
        unmasked = backbone.forward_masked(x, torch.zeros(1, 16, 16), token)[-1]
        masked = backbone.forward_masked(x, torch.ones(1, 16, 16), token)[-1]
    # then
    assert torch.allclose(plain, unmasked)
    assert not torch.allclose(plain, masked)


def test_unknown_backbone_name_lists_the_choices() -> None:
    with pytest.raises(InvalidInputError, match="yolov8s"):
        create_backbone("yolov9")


def test_out_indices_outside_stages_are_refused() -> None:
    with pytest.raises(InvalidInputError, match="out_indices"):
        create_backbone("resnet18-test", out_indices=(5,))


def test_detector_export_is_refused_for_resnet() -> None:
    with pytest.raises(InvalidInputError, match="YOLOv8"):
        detector_state_dict(create_backbone("resnet18-test"))
