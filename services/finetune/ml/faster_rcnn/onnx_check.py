"""Does a Faster R-CNN's ONNX export do the job its torch model does? Checked on val images.

A box-for-box check cannot pass on a trained two-stage detector: the FPN features of the two
runtimes agree to about 1e-5, and so do the first RPN proposals, but the tail of the 1000
proposals kept before RoI pooling differs by float noise (ties in objectness reorder it), and
a few final boxes follow. On NEU-DET a trained ResNet-50 model's top-5 boxes moved by up to
9 px on 3 of 12 images. So the check asks what the export is for: on the same images, the
typical box is where torch put it (median distance to the nearest same-class box), and
mAP@0.5 and mAP@0.5:0.95 agree within a tolerance. A wrong decode, scale or class offset
moves every box and fails the median; noise in the tail moves a few and passes.
"""

from __future__ import annotations

import statistics
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from services.finetune.ml.dataset import DetectionDataset, ScoredBox
from services.finetune.ml.evaluate import evaluate_detections
from services.finetune.ml.faster_rcnn.data import read_rgb
from services.finetune.ml.faster_rcnn.export import decode_onnx, onnx_input

MEDIAN_BOX_PX = 1.0  # the typical box moves by less than a pixel between the runtimes
# mAP points (absolute, 0-1 scale) the runtimes may differ by: the proposal tail's noise
# moved NEU-DET val mAP@0.5 by well under this; a broken export loses most of it
MAP_TOLERANCE = 0.02
CHECK_IMAGES = 200  # val images the check runs ONNX Runtime on (one image per call)


@dataclass(frozen=True)
class OnnxAgreement:
    """How ONNX Runtime's detections compare with torch's on ``images`` val images."""

    images: int
    median_box_px: float  # infinite when over half the boxes have no same-class partner
    max_box_px: float  # over the boxes that have a partner
    unmatched_boxes: int  # boxes with no same-class box from the other runtime on the image
    map50_torch: float
    map50_onnx: float
    map50_95_torch: float
    map50_95_onnx: float

    def problems(self) -> list[str]:
        """What fails the check, in words; empty when the export does the job."""
        found = []
        if self.median_box_px > MEDIAN_BOX_PX:
            found.append(f"the median box moved {self.median_box_px:.3g} px")
        for name, a, b in (
            ("mAP@0.5", self.map50_torch, self.map50_onnx),
            ("mAP@0.5:0.95", self.map50_95_torch, self.map50_95_onnx),
        ):
            if abs(a - b) > MAP_TOLERANCE:
                found.append(f"{name} {b:.3f} on ONNX Runtime against {a:.3f} on torch")
        return found

    def as_doc(self) -> dict[str, Any]:
        """The figures for ``metrics.json`` (``matches`` says whether the check passed)."""
        doc = {k: (None if v == float("inf") else v) for k, v in asdict(self).items()}
        return {**doc, "matches": not self.problems()}


def onnx_agreement(
    onnx: Path,
    subset: DetectionDataset,
    images_dir: Path,
    imgsz: int,
    torch_boxes: Mapping[str, Sequence[ScoredBox]],
    max_dets: int = 100,
) -> OnnxAgreement:
    """Run ``onnx`` on the first ``CHECK_IMAGES`` of ``subset`` and compare with
    ``torch_boxes`` (by file name, the torch model's own predictions on those images)."""
    import onnxruntime as ort

    checked = subset.model_copy(update={"images": subset.images[:CHECK_IMAGES]})
    session = ort.InferenceSession(str(onnx), providers=["CPUExecutionProvider"])
    name = session.get_inputs()[0].name
    onnx_boxes: dict[str, list[ScoredBox]] = {}
    for image in checked.images:
        tensor, sx, sy = onnx_input(read_rgb(images_dir / image.file_name), imgsz)
        onnx_boxes[image.file_name] = decode_onnx(session.run(None, {name: tensor}), sx, sy)
    expected = {im.file_name: list(torch_boxes[im.file_name]) for im in checked.images}
    distances = _distances(expected, onnx_boxes)
    ours = evaluate_detections(checked, expected, max_dets=max_dets)
    theirs = evaluate_detections(checked, onnx_boxes, max_dets=max_dets)
    return OnnxAgreement(
        images=len(checked.images),
        median_box_px=statistics.median(distances) if distances else 0.0,
        max_box_px=max((d for d in distances if d != float("inf")), default=0.0),
        unmatched_boxes=sum(d == float("inf") for d in distances),
        map50_torch=ours.map50,
        map50_onnx=theirs.map50,
        map50_95_torch=ours.map50_95,
        map50_95_onnx=theirs.map50_95,
    )


def _distances(
    a: Mapping[str, Sequence[ScoredBox]], b: Mapping[str, Sequence[ScoredBox]]
) -> list[float]:
    """Per box of either runtime, the distance (px, worst coordinate) to the nearest box of
    the same class from the other on the same image; infinite where the other has none."""
    found: list[float] = []
    for file_name, boxes in a.items():
        others = b[file_name]
        found += [_nearest(box, others) for box in boxes]
        found += [_nearest(box, boxes) for box in others]
    return found


def _nearest(box: ScoredBox, others: Sequence[ScoredBox]) -> float:
    same = [o for o in others if o.class_id == box.class_id]
    return min((_distance(box, o) for o in same), default=float("inf"))


def _distance(a: ScoredBox, b: ScoredBox) -> float:
    return max(abs(a.x1 - b.x1), abs(a.y1 - b.y1), abs(a.x2 - b.x2), abs(a.y2 - b.y2))
