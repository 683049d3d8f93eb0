"""Batched detector inference over a dataset's images, returning boxes in our format.

Pre- and post-processing are ultralytics' own (LetterBox, non_max_suppression,
scale_boxes) so results match its predictor; inputs are letterboxed to one square size so
that any images batch together.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from pathlib import Path
from typing import cast

import numpy as np
import torch

from services.finetune.ml.dataset import DetectionDataset, ScoredBox
from services.finetune.ml.evaluate import EvalResult, evaluate_detections
from services.finetune.ml.image_files import read_bgr
from services.finetune.ml.yolov8.detector import Detector
from shared.ml.device import resolve_device

# (B, 3, S, S) float in [0, 1] -> raw head output (B, 4 + num_classes, anchors).
RawForward = Callable[[torch.Tensor], torch.Tensor]


def letterbox_batch(images_bgr: Sequence[np.ndarray], imgsz: int) -> torch.Tensor:
    """Letterbox BGR uint8 images (H, W, 3) to (B, 3, imgsz, imgsz) RGB float in [0, 1]."""
    from ultralytics.data.augment import LetterBox

    letterbox = LetterBox(new_shape=(imgsz, imgsz), auto=False, stride=32)
    boxed = np.stack([cast(np.ndarray, letterbox(image=image)) for image in images_bgr])
    chw = np.ascontiguousarray(boxed[..., ::-1].transpose(0, 3, 1, 2))  # BGR->RGB, HWC->CHW
    return torch.from_numpy(chw).float() / 255.0


def postprocess(
    raw: torch.Tensor,
    original_shapes: Sequence[tuple[int, int]],
    imgsz: int,
    conf: float,
    iou: float,
    max_det: int = 300,
) -> list[list[ScoredBox]]:
    """NMS on raw output (B, 4 + nc, anchors) and mapping back to each original (H, W)."""
    from ultralytics.utils.nms import non_max_suppression
    from ultralytics.utils.ops import scale_boxes

    kept = non_max_suppression(raw, conf_thres=conf, iou_thres=iou, max_det=max_det)
    results = []
    for det, shape in zip(kept, original_shapes, strict=True):
        det[:, :4] = scale_boxes((imgsz, imgsz), det[:, :4], shape)
        results.append(
            [
                ScoredBox(x1=x1, y1=y1, x2=x2, y2=y2, score=score, class_id=int(cls))
                for x1, y1, x2, y2, score, cls in det.cpu().tolist()
                if x2 > x1 and y2 > y1
            ]
        )
    return results


def predict_dataset(
    detector: Detector,
    dataset: DetectionDataset,
    images_dir: Path,
    conf: float = 0.001,
    iou: float = 0.7,
    imgsz: int = 640,
    batch: int = 8,
    device: str = "auto",
) -> dict[str, list[ScoredBox]]:
    """Run ``detector`` over every image of ``dataset`` (files in ``images_dir``).

    Defaults follow the evaluation setting of agssp-spec §5.1 (score 0.001, NMS IoU 0.7,
    at most 300 boxes per image).

    Returns:
        ``file name -> boxes`` in original-image pixel coordinates.

    Raises:
        InvalidInputError: an image is missing or cannot be decoded.
    """
    torch_device = resolve_device(device)
    model = detector.model.to(torch_device).eval()

    def forward(x: torch.Tensor) -> torch.Tensor:
        with torch.inference_mode():
            out = model(x.to(torch_device))
        return cast(torch.Tensor, out[0] if isinstance(out, tuple | list) else out)

    return predict_with(forward, dataset, images_dir, conf, iou, imgsz, batch)


def evaluate_detector(
    detector: Detector,
    dataset: DetectionDataset,
    images_dir: Path,
    imgsz: int = 640,
    batch: int = 8,
    device: str = "auto",
) -> EvalResult:
    """COCO mAP of ``detector`` on ``dataset`` (§5.4 "COCO bbox mAP@0.5 and @0.5:0.95").

    ultralytics' own validation (the metrics of a training run) interpolates precision
    differently; report this function's figures when comparing with the paper.
    """
    predictions = predict_dataset(
        detector, dataset, images_dir, imgsz=imgsz, batch=batch, device=device
    )
    return evaluate_detections(dataset, predictions)


def predict_with(
    forward: RawForward,
    dataset: DetectionDataset,
    images_dir: Path,
    conf: float,
    iou: float,
    imgsz: int,
    batch: int,
) -> dict[str, list[ScoredBox]]:
    """:func:`predict_dataset` for any raw forward function (torch module, ONNX session)."""
    predictions: dict[str, list[ScoredBox]] = {}
    names = [im.file_name for im in dataset.images]
    for start in range(0, len(names), batch):
        chunk = names[start : start + batch]
        images = [read_bgr(images_dir / name) for name in chunk]
        raw = forward(letterbox_batch(images, imgsz))
        shapes = [image.shape[:2] for image in images]
        for name, boxes in zip(chunk, postprocess(raw, shapes, imgsz, conf, iou), strict=True):
            predictions[name] = boxes
    return predictions
