"""Annotated answers: detection boxes and labels drawn on the request image with OpenCV."""

from __future__ import annotations

from collections.abc import Mapping

import cv2
import numpy as np
import numpy.typing as npt

from services.inference.ml.detections import Detections
from shared.imaging.render import encode_png

# Distinct RGB colours, picked by class id; readable on grey metal surfaces.
PALETTE = (
    (255, 56, 56),
    (56, 168, 255),
    (255, 178, 29),
    (72, 249, 10),
    (207, 56, 255),
    (0, 212, 187),
    (255, 112, 31),
    (146, 204, 23),
    (52, 69, 147),
    (255, 55, 199),
)


def draw_detections(
    image_rgb: npt.NDArray[np.uint8], detections: Detections, names: Mapping[int, str]
) -> npt.NDArray[np.uint8]:
    """A copy of ``image_rgb`` (H, W, 3) with one labelled box per detection."""
    canvas = np.ascontiguousarray(image_rgb.copy())
    height, width = canvas.shape[:2]
    thickness = max(1, round((height + width) / 600))
    scale = max(0.35, thickness / 3)
    for box, score, class_id in zip(
        detections.boxes, detections.scores, detections.class_ids, strict=True
    ):
        colour = PALETTE[int(class_id) % len(PALETTE)]
        x1, y1, x2, y2 = (round(float(v)) for v in box)
        cv2.rectangle(canvas, (x1, y1), (x2, y2), colour, thickness, cv2.LINE_AA)
        label = f"{names.get(int(class_id), str(int(class_id)))} {float(score):.2f}"
        (tw, th), base = cv2.getTextSize(label, cv2.FONT_HERSHEY_SIMPLEX, scale, 1)
        # Label above the box when it fits, else inside its top edge.
        top = y1 - th - base if y1 - th - base >= 0 else y1
        cv2.rectangle(canvas, (x1, top), (x1 + tw, top + th + base), colour, cv2.FILLED)
        cv2.putText(
            canvas,
            label,
            (x1, top + th),
            cv2.FONT_HERSHEY_SIMPLEX,
            scale,
            (255, 255, 255),
            1,
            cv2.LINE_AA,
        )
    return canvas


def render_annotated(
    image_rgb: npt.NDArray[np.uint8], detections: Detections, names: Mapping[int, str]
) -> bytes:
    """``draw_detections`` encoded as PNG."""
    return encode_png(draw_detections(image_rgb, detections, names))
