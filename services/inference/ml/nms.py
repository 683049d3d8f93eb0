"""Decode a YOLOv8 detect head output and run class-wise NMS in numpy.

Mirrors ``ultralytics.utils.nms.non_max_suppression`` (best class per box, strict ``>`` on
conf and IoU, class offsets of ``max_wh``) so an ONNX deployment needs no torch at run time.
"""

from __future__ import annotations

import numpy as np
from numpy.typing import NDArray

from services.inference.ml.detections import DetectParams


def nms(
    boxes: NDArray[np.float32],
    scores: NDArray[np.float32],
    iou_threshold: float,
    max_keep: int | None = None,
) -> NDArray[np.int64]:
    """Greedy NMS with the semantics of ``torchvision.ops.nms``.

    Ties in score keep input order (stable sort); a box is dropped when its IoU with a kept
    box is strictly greater than ``iou_threshold``; a NaN IoU (two empty boxes) drops nothing.

    Args:
        boxes: (N, 4) xyxy.
        scores: (N,).
        iou_threshold: Suppression threshold.
        max_keep: Stop after this many kept boxes; same prefix as an unbounded run.

    Returns:
        (K,) indices into ``boxes`` of the kept boxes, highest score first.
    """
    order = np.argsort(-scores, kind="stable")
    x1, y1, x2, y2 = (boxes[:, k] for k in range(4))
    areas = (x2 - x1) * (y2 - y1)
    keep: list[int] = []
    limit = len(order) if max_keep is None else max_keep
    with np.errstate(divide="ignore", invalid="ignore"):
        while order.size and len(keep) < limit:
            i, rest = order[0], order[1:]
            keep.append(int(i))
            w = np.maximum(0, np.minimum(x2[i], x2[rest]) - np.maximum(x1[i], x1[rest]))
            h = np.maximum(0, np.minimum(y2[i], y2[rest]) - np.maximum(y1[i], y1[rest]))
            inter = w * h
            iou = inter / (areas[i] + areas[rest] - inter)
            order = rest[~(iou > iou_threshold)]
    return np.asarray(keep, dtype=np.int64)


def xywh_to_xyxy(xywh: NDArray[np.float32]) -> NDArray[np.float32]:
    """(N, 4) centre-size boxes to (N, 4) corner boxes."""
    half = xywh[:, 2:] / 2
    return np.concatenate([xywh[:, :2] - half, xywh[:, :2] + half], axis=1)


def decode_and_nms(
    pred: NDArray[np.float32], params: DetectParams
) -> tuple[NDArray[np.float32], NDArray[np.float32], NDArray[np.int64]]:
    """Turn one image's raw head output into final detections in network-input pixels.

    Args:
        pred: (4 + nc, N) float32; rows are ``cx, cy, w, h`` then per-class scores in [0, 1].
        params: Thresholds and filters.

    Returns:
        boxes (K, 4) float32 xyxy, scores (K,) float32, class_ids (K,) int64; best first,
        ``K <= params.max_det``.
    """
    pred = pred.astype(np.float32, copy=False)
    cls_scores = pred[4:]
    best = cls_scores.max(axis=0)
    cand = np.flatnonzero(best > params.conf)
    conf = best[cand]
    class_ids = cls_scores[:, cand].argmax(axis=0).astype(np.int64)
    if params.classes is not None:
        wanted = np.isin(class_ids, np.asarray(params.classes, dtype=np.int64))
        cand, conf, class_ids = cand[wanted], conf[wanted], class_ids[wanted]
    if len(cand) > params.max_nms:
        top = np.argsort(-conf, kind="stable")[: params.max_nms]
        cand, conf, class_ids = cand[top], conf[top], class_ids[top]
    boxes = xywh_to_xyxy(np.ascontiguousarray(pred[:4, cand].T))
    if not len(cand):
        return boxes, conf, class_ids
    # One NMS for all classes: shifting each class by max_wh pixels keeps classes apart,
    # exactly as ultralytics does (so float32 rounding at large offsets matches too).
    offset = class_ids.astype(np.float32) * np.float32(0 if params.agnostic else params.max_wh)
    keep = nms(boxes + offset[:, None], conf, params.iou, params.max_det)
    return boxes[keep], conf[keep], class_ids[keep]
