"""The compute side of a pseudo-label job (agssp-spec §3), handed to the use case by the worker.

``services.pretrain.usecases.pseudo_label_jobs`` stays free of cv2 so the API can import it;
everything that needs cv2 runs through a ``BoxLabeler``.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import cv2
import numpy as np
from numpy.typing import NDArray

from services.pretrain.ml.gate import GateDecision, decide_gate
from services.pretrain.ml.pseudo_boxes import (
    ImageBoxes,
    area_ratios,
    coco_annotations,
    coco_categories,
    coco_image,
    extract_boxes,
    render_overlay,
    threshold_of_maxima,
    yolo_lines,
)
from services.pretrain.params import PseudoLabelParams
from shared.imaging.render import encode_png

OVERLAY_MAX_SIDE = 1024


class BoxLabeler:
    """Threshold, boxes, YOLO lines, overlays, COCO entries and area ratios of one category."""

    def threshold(self, maxima: Sequence[float], c: float) -> float:
        """T_c = mean over the category's maps of each map's max, minus ``c`` (§3 step 1)."""
        return threshold_of_maxima(maxima, c=c)

    def gate(
        self,
        scores: Sequence[float | None],
        source: str,
        params: PseudoLabelParams,
        reference: Sequence[float | None] | None = None,
    ) -> GateDecision:
        """Image-level gate of the pool from one score per image (``ml.gate``), checked by
        labelled defect images' scores when ``reference`` is given."""
        return decide_gate(params, scores, source, reference)

    def label(
        self,
        amap: NDArray[np.float32],
        size: tuple[int, int],
        threshold: float,
        params: PseudoLabelParams,
        image_score: float | None,
        file_name: str,
        score_gate: float | None = None,
    ) -> tuple[ImageBoxes, str]:
        """Boxes of one (width, height) image and its YOLO label file's text.

        With ``score_gate`` set, an image whose ``image_score`` is below it (or unknown) gets
        none (the job's gate threshold, ``ml.gate``).
        """
        width, height = size
        boxes = extract_boxes(
            amap,
            width,
            height,
            threshold,
            regions=params.regions,
            top_k=params.top_k,
            iou_threshold=params.nms,
            min_area=params.min_area,
            image_score=image_score,
            score_gate=score_gate,
        )
        text = "".join(line + "\n" for line in yolo_lines(boxes, width, height))
        return ImageBoxes(file_name, width, height, tuple(boxes), params.category), text

    def overlay_png(self, image: NDArray[np.uint8], item: ImageBoxes) -> bytes:
        """PNG of the (H, W, 3) image with its boxes, at most ``OVERLAY_MAX_SIDE`` a side."""
        return encode_png(_fit(render_overlay(image, item.boxes)))

    def coco_categories(self) -> list[dict[str, Any]]:
        """The COCO document's ``categories``."""
        return coco_categories()

    def coco_entries(
        self, item: ImageBoxes, image_id: int, first_annotation_id: int
    ) -> tuple[dict[str, Any], list[dict[str, Any]]]:
        """One image's COCO ``images`` entry and its ``annotations`` (ids from the given one)."""
        return coco_image(item, image_id), coco_annotations(item, image_id, first_annotation_id)

    def area_ratios(self, item: ImageBoxes) -> list[float]:
        """Box area / image area of each box of the image (the summary's statistics)."""
        return area_ratios(item)


def _fit(image: NDArray[np.uint8]) -> NDArray[np.uint8]:
    scale = OVERLAY_MAX_SIDE / max(image.shape[:2])
    if scale >= 1:
        return image
    size = (max(round(image.shape[1] * scale), 1), max(round(image.shape[0] * scale), 1))
    return np.asarray(cv2.resize(image, size, interpolation=cv2.INTER_AREA), dtype=np.uint8)
