"""The Faster R-CNN export check asks whether ONNX Runtime does the torch model's job on val
images: an honest export passes with its figures recorded, a wrong decode fails in words."""

from __future__ import annotations

from pathlib import Path

import cv2
import pytest

from services.finetune.ml.dataset import Box, DetectionDataset, ImageRecord
from services.finetune.ml.faster_rcnn.export import export_onnx
from services.finetune.ml.faster_rcnn.model import FasterRcnnConfig, build_faster_rcnn, predict
from services.finetune.ml.faster_rcnn.onnx_check import OnnxAgreement, onnx_agreement
from services.finetune.ml.faster_rcnn.train import train_faster_rcnn
from tests.unit.finetune.test_faster_rcnn import TINY, _squares

pytest.importorskip("onnxruntime")
CONFIG = FasterRcnnConfig(
    imgsz=64, anchor_sizes=(8, 16, 32, 64, 128), epochs=6, batch=4, lr=0.02,
    warmup_iters=2, score_thresh=0.0, rois_per_image=32,
)  # fmt: skip


@pytest.fixture(scope="module")
def trained(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, DetectionDataset, dict]:
    """A Faster R-CNN trained a little on squares and bars, its export, the val images on
    disk and the torch model's own boxes on them."""
    root = tmp_path_factory.mktemp("frcnn-check")
    samples = _squares(8, seed=1)
    model = build_faster_rcnn(2, CONFIG, backbone=TINY)
    train_faster_rcnn(model, samples, CONFIG)
    onnx = export_onnx(model, root / "model.onnx", CONFIG)
    records = []
    for i, sample in enumerate(samples):
        cv2.imwrite(str(root / f"{i}.png"), cv2.cvtColor(sample.image, cv2.COLOR_RGB2BGR))
        boxes = [
            Box(x1=float(b[0]), y1=float(b[1]), x2=float(b[2]), y2=float(b[3]), class_id=int(c))
            for b, c in zip(sample.boxes, sample.labels, strict=True)
        ]
        h, w = sample.image.shape[:2]
        records.append(ImageRecord(file_name=f"{i}.png", width=w, height=h, boxes=boxes))
    val = DetectionDataset(classes=["square", "bar"], images=records)
    found = predict(model, [s.image for s in samples], CONFIG)
    torch_boxes = {r.file_name: boxes for r, boxes in zip(records, found, strict=True)}
    return onnx, val, torch_boxes


def test_an_honest_export_passes_with_its_figures(trained: tuple) -> None:
    onnx, val, torch_boxes = trained
    # when
    agreement = onnx_agreement(onnx, val, onnx.parent, CONFIG.imgsz, torch_boxes)
    # then the boxes sit where torch put them and both runtimes score alike
    assert agreement.problems() == []
    assert agreement.images == len(val.images)
    assert agreement.median_box_px < 0.1
    assert agreement.map50_onnx == pytest.approx(agreement.map50_torch, abs=1e-6)
    assert agreement.as_doc()["matches"] is True


def test_boxes_moved_by_a_wrong_decode_fail_the_check(trained: tuple) -> None:
    onnx, val, torch_boxes = trained
    # given "torch" boxes that a decode with the wrong scale would give (every box doubled)
    shifted = {
        name: [b.model_copy(update={"x1": b.x1 * 2, "x2": b.x2 * 2}) for b in boxes]
        for name, boxes in torch_boxes.items()
    }
    # when
    agreement = onnx_agreement(onnx, val, onnx.parent, CONFIG.imgsz, shifted)
    # then the median box moved, and the check says so
    assert agreement.median_box_px > 1.0
    assert any("median box moved" in p for p in agreement.problems())


def test_a_map_gap_fails_even_when_most_boxes_agree() -> None:
    # given runtimes whose boxes agree but whose val mAP@0.5 differs by 5 points
    agreement = OnnxAgreement(
        images=100, median_box_px=0.0, max_box_px=9.0, unmatched_boxes=3,
        map50_torch=0.40, map50_onnx=0.35, map50_95_torch=0.2, map50_95_onnx=0.2,
    )  # fmt: skip
    # then
    assert agreement.problems() == ["mAP@0.5 0.350 on ONNX Runtime against 0.400 on torch"]
    assert agreement.as_doc()["matches"] is False


def test_boxes_with_no_partner_count_and_stay_out_of_the_json() -> None:
    agreement = OnnxAgreement(
        images=1, median_box_px=float("inf"), max_box_px=0.0, unmatched_boxes=1,
        map50_torch=0.0, map50_onnx=0.0, map50_95_torch=0.0, map50_95_onnx=0.0,
    )  # fmt: skip
    assert agreement.as_doc()["median_box_px"] is None
    assert agreement.problems() == ["the median box moved inf px"]
