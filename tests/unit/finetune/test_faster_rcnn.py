"""Faster R-CNN on the backbone table's ResNet: counted start weights, training that learns,
boxes in the caller's pixels, and an ONNX export whose decoded output equals the torch
model's on the same inputs."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

from services.finetune.ml.faster_rcnn import (
    FasterRcnnConfig,
    Sample,
    build_faster_rcnn,
    decode_onnx,
    export_onnx,
    onnx_input,
    predict,
    train_faster_rcnn,
)
from shared.errors import InvalidInputError
from shared.ml.backbones.factory import create_backbone

TINY = "resnet18-test"
CONFIG = FasterRcnnConfig(imgsz=64, anchor_sizes=(8, 16, 32, 64, 128), epochs=1, batch=2)


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
        imgsz=64, anchor_sizes=(8, 16, 32, 64, 128), epochs=12, batch=4, lr=0.02, warmup_iters=4
    )
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
    config = FasterRcnnConfig(imgsz=64, anchor_sizes=(8, 16, 32, 64, 128), epochs=5, batch=4)
    model = build_faster_rcnn(2, config, backbone=TINY)
    # when
    logs = train_faster_rcnn(model, _squares(4), config, on_epoch=lambda log: log.epoch < 2)
    # then
    assert [log.epoch for log in logs] == [1, 2]


def test_the_onnx_export_decodes_to_the_torch_models_boxes(tmp_path: Path) -> None:
    ort = pytest.importorskip("onnxruntime")
    # given a model trained a little, so that it finds boxes
    config = FasterRcnnConfig(
        imgsz=64, anchor_sizes=(8, 16, 32, 64, 128), epochs=6, batch=4, lr=0.02,
        warmup_iters=2, score_thresh=0.0,
    )  # fmt: skip
    samples = _squares(8, seed=1)
    model = build_faster_rcnn(2, config, backbone=TINY)
    train_faster_rcnn(model, samples, config)
    path = export_onnx(model, tmp_path / "frcnn.onnx", config)
    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    for sample in samples[:3]:
        # when
        expected = predict(model, [sample.image], config)[0]
        array, sx, sy = onnx_input(sample.image, config.imgsz)
        got = decode_onnx(session.run(None, {"images": array}), sx, sy)
        # then
        assert len(got) == len(expected)
        for a, b in zip(got, expected, strict=True):
            assert a.class_id == b.class_id
            assert a.score == pytest.approx(b.score, abs=1e-4)
            assert (a.x1, a.y1, a.x2, a.y2) == pytest.approx((b.x1, b.y1, b.x2, b.y2), abs=1e-2)
