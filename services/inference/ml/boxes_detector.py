"""Detection on exports whose graph ends in final boxes: ``boxes``, ``labels``, ``scores``.

The layout ``boxes-labels-scores`` (``shared.schemas.detector_families``): one image
(1, 3, S, S) float in [0, 1], resized to S x S without letterbox (bilinear, as the training
did), in; boxes (N, 4) xyxy in that square, labels (N,) with 0 the background, and scores
(N,) out, already thresholded and suppressed per class by the graph. Here the boxes are
scaled back to the image, clipped, and filtered by the request's ``DetectParams``; NMS runs
once more only where the request asks for class-agnostic suppression or a stricter IoU than
the graph's.
"""

from __future__ import annotations

import ast
from collections.abc import Mapping, Sequence
from types import MappingProxyType
from typing import Any

import cv2
import numpy as np
from numpy.typing import NDArray

from services.inference.ml.detections import (
    Detections,
    DetectParams,
    Image,
    as_rgb,
    params_per_image,
)
from services.inference.ml.nms import nms
from shared.errors import InvalidInputError

GRAPH_IOU = 0.5  # torchvision's box_nms_thresh, applied inside the exported graph
OUTPUTS = ("boxes", "labels", "scores")


class BoxesOnnxDetector:
    """Runs a ``boxes-labels-scores`` export on an open session (``open_session``).

    Args:
        session: the graph's ONNX Runtime or OpenVINO session.
        names: class names; default from the export's ``names`` metadata.

    Raises:
        InvalidInputError: the graph's inputs or outputs are not this layout's, or it
            names no input size and no classes.
    """

    def __init__(self, session: Any, names: Mapping[int, str] | None = None) -> None:
        self._session = session
        self._metadata: dict[str, str] = dict(session.get_modelmeta().custom_metadata_map)
        inputs, outputs = session.get_inputs(), session.get_outputs()
        if len(inputs) != 1 or tuple(o.name for o in outputs) != OUTPUTS:
            raise InvalidInputError(
                f"expected one input and outputs {OUTPUTS}, got {[o.name for o in outputs]}"
            )
        self._input_name: str = inputs[0].name
        self._imgsz = _imgsz(inputs[0].shape, self._metadata.get("imgsz"))
        found = _literal(self._metadata.get("names"), "names")
        if names is None and not isinstance(found, dict):
            raise InvalidInputError("the export names no classes and none were given")
        self._names = (
            dict(names) if names is not None else {int(k): str(v) for k, v in found.items()}
        )

    @property
    def names(self) -> Mapping[int, str]:
        """Class id to class name (read-only)."""
        return MappingProxyType(self._names)

    @property
    def metadata(self) -> Mapping[str, str]:
        """The export's raw ONNX metadata."""
        return MappingProxyType(self._metadata)

    @property
    def imgsz(self) -> tuple[int, int]:
        """The square (height, width) images are resized to."""
        return self._imgsz

    def detect(
        self,
        images: Sequence[Image],
        params: DetectParams | Sequence[DetectParams] = DetectParams(),
    ) -> list[Detections]:
        """Detect objects in each image (one graph run per image).

        Returns:
            One ``Detections`` per image in input order, boxes in that image's pixels.
        """
        per_image = params_per_image(params, len(images))
        return [self._one(as_rgb(im), p) for im, p in zip(images, per_image, strict=True)]

    def _one(self, rgb: Image, params: DetectParams) -> Detections:
        h, w = rgb.shape[:2]
        side_h, side_w = self._imgsz
        resized = cv2.resize(rgb, (side_w, side_h), interpolation=cv2.INTER_LINEAR)
        batch = np.ascontiguousarray(resized.transpose(2, 0, 1)[None], dtype=np.float32) / 255.0
        boxes, labels, scores = self._session.run(list(OUTPUTS), {self._input_name: batch})
        scale = np.array([side_w / w, side_h / h, side_w / w, side_h / h], np.float32)
        boxes = np.asarray(boxes, np.float32).reshape(-1, 4) / scale
        boxes = np.clip(boxes, 0, np.array([w, h, w, h], np.float32))
        classes = np.asarray(labels, np.int64).reshape(-1) - 1  # 0 is the background
        kept = _filtered(boxes, np.asarray(scores, np.float32).reshape(-1), classes, params)
        return Detections(*kept, (h, w))


def _filtered(
    boxes: NDArray[np.float32],
    scores: NDArray[np.float32],
    classes: NDArray[np.int64],
    params: DetectParams,
) -> tuple[NDArray[np.float32], NDArray[np.float32], NDArray[np.int64]]:
    """The request's score threshold, class filter, extra NMS and ``max_det``, best first."""
    wanted = (scores > params.conf) & (classes >= 0)
    if params.classes is not None:
        wanted &= np.isin(classes, np.asarray(params.classes, dtype=np.int64))
    boxes, scores, classes = boxes[wanted], scores[wanted], classes[wanted]
    if len(scores) and (params.agnostic or params.iou < GRAPH_IOU):
        offset = classes.astype(np.float32) * np.float32(0 if params.agnostic else params.max_wh)
        keep = nms(boxes + offset[:, None], scores, params.iou, params.max_det)
    else:
        keep = np.argsort(-scores, kind="stable")[: params.max_det]
    return boxes[keep], scores[keep], classes[keep]


def _literal(raw: str | None, key: str) -> Any:
    if raw is None:
        return None
    try:  # literal_eval evaluates literals only, never code
        return ast.literal_eval(raw)
    except (ValueError, SyntaxError) as exc:
        raise InvalidInputError(f"bad {key!r} in ONNX metadata: {raw!r}") from exc


def _imgsz(shape: Sequence[Any], meta: str | None) -> tuple[int, int]:
    """The input side: the graph's fixed shape, else its ``imgsz`` metadata."""
    if len(shape) != 4:
        raise InvalidInputError(f"expected an input (1, 3, S, S), got {shape}")
    h, w = shape[2], shape[3]
    if isinstance(h, int) and isinstance(w, int):
        return h, w
    size = _literal(meta, "imgsz")
    if isinstance(size, int):
        return size, size
    if isinstance(size, list | tuple) and len(size) == 2:
        return int(size[0]), int(size[1])
    raise InvalidInputError("the export has a dynamic input size and no 'imgsz' metadata")
