"""Faster R-CNN on the backbone table's ResNet: counted start weights, training that learns,
boxes in the caller's pixels, and an ONNX export whose decoded output equals the torch
model's on the same inputs."""

from __future__ import annotations

import copy
from pathlib import Path

import numpy as np
import pytest
import torch

from services.finetune.ml.dataset import ScoredBox
from services.finetune.ml.faster_rcnn.checkpoint import (
    FasterRcnnCheckpoint,
    checkpoint_of,
    model_from_checkpoint,
    transfer_detector,
)
from services.finetune.ml.faster_rcnn.data import Sample, read_yolo_split
from services.finetune.ml.faster_rcnn.export import decode_onnx, export_onnx, onnx_input
from services.finetune.ml.faster_rcnn.model import FasterRcnnConfig, build_faster_rcnn, predict
from services.finetune.ml.faster_rcnn.train import Resume, train_faster_rcnn
from shared.errors import InvalidInputError
from shared.ml.backbones.factory import create_backbone

TINY = "resnet18-test"
CONFIG = FasterRcnnConfig(
    imgsz=64, anchor_sizes=(8, 16, 32, 64, 128), epochs=1, batch=2, rois_per_image=32
)


def _squares(count: int, seed: int = 0) -> list[Sample]:
    """Dark 80 x 96 images, each with one bright square (class 0) or bar (class 1)."""
    rng = np.random.default_rng(seed)
    samples = []
    for i in range(count):
        image = rng.integers(0, 40, (80, 96, 3), dtype=np.uint8)
        x, y = int(rng.integers(5, 50)), int(rng.integers(5, 40))
        w, h = (24, 24) if i % 2 == 0 else (36, 12)
        image[y : y + h, x : x + w] = 230
        boxes = np.array([[x, y, x + w, y + h]], np.float32)
        samples.append(Sample(image, boxes, np.array([i % 2], np.int64)))
    return samples


def test_start_weights_are_counted_and_refused_when_they_do_not_fit() -> None:
    # given a ResNet's own weights, and a state dict of another network
    own = create_backbone(TINY).state_dict()
    other = {"model.0.conv.weight": torch.zeros(16, 3, 3, 3)}
    # when
    model = build_faster_rcnn(2, CONFIG, backbone=TINY, weights=own)
    # then every ResNet tensor was filled, and the foreign weights are refused
    report = model.backbone.body.load_report
    assert report is not None
    assert report.matched == report.total > 0
    with pytest.raises(InvalidInputError):
        build_faster_rcnn(2, CONFIG, backbone=TINY, weights=other)


def test_the_same_seed_builds_the_same_model_whatever_ran_before() -> None:
    # given the global generator in two different states
    config = FasterRcnnConfig(imgsz=64, seed=3)
    torch.manual_seed(1)
    first = build_faster_rcnn(2, config, backbone=TINY)
    after_first = torch.rand(1)
    torch.manual_seed(2)
    second = build_faster_rcnn(2, config, backbone=TINY)
    # then the weights are equal, and the caller's random state was not consumed
    for (name, a), (_, b) in zip(
        first.state_dict().items(), second.state_dict().items(), strict=True
    ):
        assert torch.equal(a, b), name
    torch.manual_seed(1)
    assert torch.equal(torch.rand(1), after_first)


def test_the_resnet_keeps_its_frozen_stages() -> None:
    # when
    model = build_faster_rcnn(2, FasterRcnnConfig(imgsz=64, frozen_stages=2), backbone=TINY)
    # then stem, layer1 and layer2 take no gradient; layer3 does
    body = model.backbone.body
    assert not any(p.requires_grad for p in body.layer2.parameters())
    assert all(p.requires_grad for p in body.layer3.parameters())


def test_training_lowers_the_loss_and_boxes_land_in_image_pixels() -> None:
    # given
    samples = _squares(8)
    config = FasterRcnnConfig(
        imgsz=64, anchor_sizes=(8, 16, 32, 64, 128), epochs=12, batch=4, lr=0.02, warmup_iters=4,
        rois_per_image=32,
    )  # fmt: skip
    model = build_faster_rcnn(2, config, backbone=TINY)
    # when
    logs = train_faster_rcnn(model, samples, config)
    found = predict(model, [s.image for s in samples[:2]], config)
    # then
    assert logs[-1].losses["loss"] < 0.7 * logs[0].losses["loss"]
    assert len(found) == 2
    for boxes in found:
        for box in boxes:
            assert 0 <= box.x1 < box.x2 <= 96 + 1e-3
            assert 0 <= box.y1 < box.y2 <= 80 + 1e-3
            assert box.class_id in (0, 1)


def test_an_on_epoch_hook_can_stop_training() -> None:
    # given
    config = FasterRcnnConfig(
        imgsz=64, anchor_sizes=(8, 16, 32, 64, 128), epochs=5, batch=4, rois_per_image=32
    )
    model = build_faster_rcnn(2, config, backbone=TINY)
    # when
    logs = train_faster_rcnn(model, _squares(4), config, on_epoch=lambda log: log.epoch < 2)
    # then
    assert [log.epoch for log in logs] == [1, 2]


def test_a_cancel_stops_within_the_epoch_and_drops_its_partial_losses() -> None:
    # given 3 batches an epoch, and a cancel asked for before the fifth batch
    config = FasterRcnnConfig(
        imgsz=64, anchor_sizes=(8, 16, 32, 64, 128), epochs=5, batch=2, rois_per_image=32
    )
    model = build_faster_rcnn(2, config, backbone=TINY)
    asked = []

    def should_stop() -> bool:
        asked.append(True)
        return len(asked) >= 5

    # when
    logs = train_faster_rcnn(model, _squares(6), config, should_stop=should_stop)
    # then only the whole first epoch is logged, and no batch ran after the cancel
    assert [log.epoch for log in logs] == [1]
    assert len(asked) == 5
    assert not model.training


def test_the_onnx_export_decodes_to_the_torch_models_boxes(tmp_path: Path) -> None:
    ort = pytest.importorskip("onnxruntime")
    # given a model trained a little, so that it finds boxes
    config = FasterRcnnConfig(
        imgsz=64, anchor_sizes=(8, 16, 32, 64, 128), epochs=6, batch=4, lr=0.02,
        warmup_iters=2, score_thresh=0.0, rois_per_image=32,
    )  # fmt: skip
    samples = _squares(8, seed=1)
    model = build_faster_rcnn(2, config, backbone=TINY)
    train_faster_rcnn(model, samples, config)
    path = export_onnx(model, tmp_path / "frcnn.onnx", config)
    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    confident = 0
    for sample in samples[:3]:
        # when
        expected = predict(model, [sample.image], config)[0]
        array, sx, sy = onnx_input(sample.image, config.imgsz)
        got = decode_onnx(session.run(None, {"images": array}), sx, sy)
        # then every confident box of either runtime has its twin in the other; the tail
        # of near-zero scores is not compared box for box, because float noise that
        # differs between CPUs reorders the last proposals there
        for ours, theirs in ((got, expected), (expected, got)):
            for box in [b for b in ours if b.score >= CONFIDENT]:
                confident += 1
                twin = _twin(box, theirs)
                assert twin is not None, f"no twin for {box}"
                assert twin.score == pytest.approx(box.score, abs=1e-3)
    assert confident > 0, "the trained model found no confident box to compare"


CONFIDENT = 0.05


def _twin(box: ScoredBox, others: list[ScoredBox]) -> ScoredBox | None:
    """The same-class box of `others` whose corners all lie within 0.05 px of `box`'s."""
    for other in others:
        corners = zip(
            (box.x1, box.y1, box.x2, box.y2),
            (other.x1, other.y1, other.x2, other.y2),
            strict=True,
        )
        if other.class_id == box.class_id and all(abs(a - b) <= 0.05 for a, b in corners):
            return other
    return None


def test_a_resumed_run_ends_where_the_uninterrupted_one_does() -> None:
    # given two identical models
    config = FasterRcnnConfig(
        imgsz=64, anchor_sizes=(8, 16, 32, 64, 128), epochs=2, batch=2, rois_per_image=32
    )
    samples = _squares(4, seed=3)
    torch.manual_seed(0)
    whole = build_faster_rcnn(2, config, backbone=TINY)
    cut = copy.deepcopy(whole)
    # when one trains both epochs and the other stops after the first, then resumes
    train_faster_rcnn(whole, samples, config)
    first = train_faster_rcnn(cut, samples, config, on_epoch=lambda log: False)
    assert first[-1].optimiser is not None
    rest = train_faster_rcnn(cut, samples, config, resume=Resume(1, first[-1].optimiser))
    # then the resumed run trained epoch 2 only and ends with the same tensors
    assert [log.epoch for log in rest] == [2]
    for key, value in whole.state_dict().items():
        torch.testing.assert_close(cut.state_dict()[key], value, msg=key)


def test_a_checkpoint_round_trips_and_rebuilds_the_same_model() -> None:
    model = build_faster_rcnn(2, CONFIG, backbone=TINY)
    checkpoint = checkpoint_of(model, ["a", "b"], TINY, CONFIG, {"epochs": 1})
    again = FasterRcnnCheckpoint.from_bytes(checkpoint.to_bytes())
    assert again.classes == ("a", "b")
    assert again.architecture() == CONFIG
    rebuilt = model_from_checkpoint(again)
    for key, value in model.state_dict().items():
        assert torch.equal(rebuilt.state_dict()[key], value), key
    with pytest.raises(InvalidInputError):
        FasterRcnnCheckpoint.from_bytes(b"not a checkpoint")


def test_a_detector_transfer_counts_and_leaves_the_class_layers_fresh() -> None:
    # given a one-class detector (AGDP) and a three-class target
    source = build_faster_rcnn(1, CONFIG, backbone=TINY).state_dict()
    target = build_faster_rcnn(3, CONFIG, backbone=TINY)
    # when
    report = transfer_detector(target, source, min_fraction=0.9)
    # then every tensor but the predictor's four class-shaped ones moved
    assert report.loaded == report.total - 4
    assert {key for key, _ in report.skipped} == {
        "roi_heads.box_predictor.cls_score.weight", "roi_heads.box_predictor.cls_score.bias",
        "roi_heads.box_predictor.bbox_pred.weight", "roi_heads.box_predictor.bbox_pred.bias",
    }  # fmt: skip
    moved = [k for k in source if k.startswith(("backbone.fpn.", "rpn.", "roi_heads.box_head."))]
    assert moved
    for key in moved:
        assert torch.equal(target.state_dict()[key], source[key]), key
    # and a source that mostly does not fit is refused, copying nothing
    with pytest.raises(InvalidInputError) as caught:
        transfer_detector(target, {"x": torch.zeros(1)}, min_fraction=0.9)
    assert caught.value.code == "transfer_too_small"


def test_a_yolo_folder_reads_back_as_samples_in_pixels(tmp_path: Path) -> None:
    # given one 96 x 80 image with a box at (10, 20)-(40, 60), class 1, in YOLO txt
    (tmp_path / "images" / "train").mkdir(parents=True)
    (tmp_path / "labels" / "train").mkdir(parents=True)
    image = np.zeros((80, 96, 3), np.uint8)
    image[..., 0] = 200  # red in RGB
    cv2 = pytest.importorskip("cv2")
    cv2.imwrite(str(tmp_path / "images" / "train" / "a.png"), image[..., ::-1])
    cx, cy, w, h = 25 / 96, 40 / 80, 30 / 96, 40 / 80
    (tmp_path / "labels" / "train" / "a.txt").write_text(f"1 {cx} {cy} {w} {h}\n")
    # when
    [sample] = read_yolo_split(tmp_path, "train")
    # then
    assert sample.image.shape == (80, 96, 3)
    assert sample.image[0, 0, 0] == 200
    np.testing.assert_allclose(sample.boxes, [[10, 20, 40, 60]], atol=1e-3)
    assert sample.labels.tolist() == [1]
