"""Pseudo-defect boxes from KeAD anomaly maps (agssp-spec §3) and their export formats.

Per-category threshold, resize, binarise, regions, area filter, box score, top-k and a
correct xyxy NMS; YOLO lines, a COCO dict, per-category summaries and an overlay.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import Any, Literal

import cv2
import numpy as np
from numpy.typing import NDArray

THRESHOLD_OFFSET = 0.1  # c of paper eq. 9-10
TOP_K = 10
NMS_IOU = 0.8
Regions = Literal["contours", "components"]


@dataclass(frozen=True)
class Box:
    """Axis-aligned box in pixels; ``x2``/``y2`` exclusive (width = x2 - x1)."""

    x1: int
    y1: int
    x2: int
    y2: int
    score: float

    @property
    def width(self) -> int:
        """Width in pixels."""
        return self.x2 - self.x1

    @property
    def height(self) -> int:
        """Height in pixels."""
        return self.y2 - self.y1


def category_threshold(maps: Iterable[NDArray[np.floating]], c: float = THRESHOLD_OFFSET) -> float:
    """T_c = mean over the category's maps of each map's maximum, minus ``c``.

    The maximum of the low-res map equals that of its bilinear upsampling, so the raw
    (G, G) maps suffice (agssp-spec §3 step 1).

    Raises:
        ValueError: no map given.
    """
    return threshold_of_maxima([float(np.max(m)) for m in maps], c)


def threshold_of_maxima(maxima: Sequence[float], c: float = THRESHOLD_OFFSET) -> float:
    """T_c from each map's maximum alone (what a job streaming its maps keeps of them).

    Raises:
        ValueError: no maximum given.
    """
    if not maxima:
        raise ValueError("category_threshold needs at least one map")
    return float(np.mean(maxima)) - c


def min_box_area(height: int, width: int) -> int:
    """Smallest kept region area: max((H // 100) * (W // 100), 10) pixels (§3 step 6)."""
    return max((height // 100) * (width // 100), 10)


def extract_boxes(
    amap: NDArray[np.floating],
    width: int,
    height: int,
    threshold: float,
    *,
    regions: Regions = "contours",
    top_k: int = TOP_K,
    iou_threshold: float = NMS_IOU,
    min_area: int | None = None,
    image_score: float | None = None,
    score_gate: float | None = None,
) -> list[Box]:
    """Boxes of one image from its anomaly map.

    Args:
        amap: (G, G) raw map.
        width: original image width W.
        height: original image height H.
        threshold: the category's T_c.
        regions: ``"contours"`` (external contours, the code's choice; area by
            ``cv2.contourArea``) or ``"components"`` (8-connected components as the paper;
            area = pixel count).
        top_k: boxes kept after sorting by score, before NMS.
        iou_threshold: NMS drops a box whose IoU with a kept one is >= this.
        min_area: region area floor; default ``min_box_area(H, W)``.
        image_score: the image-level anomaly score, used only with ``score_gate``.
        score_gate: when set, an image gets boxes only if ``image_score >= score_gate`` (an
            unknown or NaN score fails); the paper's gating, off by default like the code
            (agssp-spec §6.4.3; ``services.pretrain.ml.gate`` chooses it).

    Returns:
        Boxes by descending score.
    """
    if score_gate is not None and not (image_score is not None and image_score >= score_gate):
        return []
    # cv2 INTER_LINEAR uses half-pixel centres, as the reference script.
    resized = cv2.resize(amap.astype(np.float32), (width, height), interpolation=cv2.INTER_LINEAR)
    binary = np.where(resized > threshold, 255, 0).astype(np.uint8)
    floor = min_box_area(height, width) if min_area is None else min_area
    rects = _regions(binary, floor, regions)
    boxes = [
        Box(x, y, x + w, y + h, float(resized[y : y + h, x : x + w].max())) for x, y, w, h in rects
    ]
    boxes.sort(key=lambda b: b.score, reverse=True)
    return nms(boxes[:top_k], iou_threshold)


def _regions(
    binary: NDArray[np.uint8], floor: int, regions: Regions
) -> list[tuple[int, int, int, int]]:
    if regions == "contours":
        contours, _ = cv2.findContours(binary, cv2.RETR_EXTERNAL, cv2.CHAIN_APPROX_SIMPLE)
        rects = []
        for contour in contours:
            if cv2.contourArea(contour) >= floor:
                x, y, w, h = cv2.boundingRect(contour)
                rects.append((int(x), int(y), int(w), int(h)))
        return rects
    count, _, stats, _ = cv2.connectedComponentsWithStats(binary, connectivity=8)
    return [
        (
            int(s[cv2.CC_STAT_LEFT]),
            int(s[cv2.CC_STAT_TOP]),
            int(s[cv2.CC_STAT_WIDTH]),
            int(s[cv2.CC_STAT_HEIGHT]),
        )
        for s in stats[1:count]
        if s[cv2.CC_STAT_AREA] >= floor
    ]


def box_iou(a: Box, b: Box) -> float:
    """Intersection over union of two boxes (continuous xyxy coordinates)."""
    inter_w = max(0, min(a.x2, b.x2) - max(a.x1, b.x1))
    inter_h = max(0, min(a.y2, b.y2) - max(a.y1, b.y1))
    inter = inter_w * inter_h
    union = a.width * a.height + b.width * b.height - inter
    return inter / union if union > 0 else 0.0


def nms(boxes: Sequence[Box], iou_threshold: float = NMS_IOU) -> list[Box]:
    """Greedy NMS by score; a box is dropped when IoU with a kept box is >= the threshold.

    Correct xyxy IoU, replacing the reference's mis-indexed one (agssp-spec §3 step 10).
    """
    kept: list[Box] = []
    for box in sorted(boxes, key=lambda b: b.score, reverse=True):
        if all(box_iou(box, other) < iou_threshold for other in kept):
            kept.append(box)
    return kept


def yolo_lines(boxes: Iterable[Box], width: int, height: int) -> list[str]:
    """``0 xc yc w h`` per box, normalised by the image size, 6 decimals (class 0 = anomaly)."""
    return [
        f"0 {(b.x1 + b.width / 2) / width:.6f} {(b.y1 + b.height / 2) / height:.6f} "
        f"{b.width / width:.6f} {b.height / height:.6f}"
        for b in boxes
    ]


@dataclass(frozen=True)
class ImageBoxes:
    """Boxes of one image with what the exports need to know about it."""

    file_name: str
    width: int
    height: int
    boxes: tuple[Box, ...]
    category: str = ""


def build_coco(images: Iterable[ImageBoxes]) -> dict[str, Any]:
    """COCO detection dict; images without boxes stay as background images.

    One category, id 0, name "anomaly": the id equals the YOLO class index and what the
    reference's yolo2coco conversion produced for mmyolo (agssp-spec §3 step 13), so labels
    mean the same in both formats. Image and annotation ids start at 1.
    """
    coco: dict[str, Any] = {"images": [], "annotations": [], "categories": coco_categories()}
    for image_id, item in enumerate(images, start=1):
        coco["images"].append(coco_image(item, image_id))
        coco["annotations"].extend(coco_annotations(item, image_id, len(coco["annotations"]) + 1))
    return coco


def coco_categories() -> list[dict[str, Any]]:
    """The COCO ``categories`` of a pseudo-label set: one, id 0 = YOLO class 0 (§3 step 13)."""
    return [{"id": 0, "name": "anomaly", "supercategory": "defect"}]


def coco_image(item: ImageBoxes, image_id: int) -> dict[str, Any]:
    """The COCO ``images`` entry of one image."""
    return {"id": image_id, "file_name": item.file_name, "width": item.width, "height": item.height}


def coco_annotations(item: ImageBoxes, image_id: int, first_id: int) -> list[dict[str, Any]]:
    """The COCO ``annotations`` of one image's boxes, numbered from ``first_id``."""
    return [
        {
            "id": first_id + offset,
            "image_id": image_id,
            "category_id": 0,
            "bbox": [box.x1, box.y1, box.width, box.height],
            "area": box.width * box.height,
            "iscrowd": 0,
            "score": box.score,
        }
        for offset, box in enumerate(item.boxes)
    ]


def area_ratios(item: ImageBoxes) -> list[float]:
    """Box area / image area of each of the image's boxes (what the summary describes)."""
    return [box.width * box.height / (item.width * item.height) for box in item.boxes]


@dataclass(frozen=True)
class CategorySummary:
    """Box statistics of one category; area ratios are box area / image area."""

    images: int
    images_with_boxes: int
    share_with_boxes: float
    boxes_per_image: float
    mean_area_ratio: float
    median_area_ratio: float
    min_area_ratio: float
    max_area_ratio: float


def summarize(images: Iterable[ImageBoxes]) -> dict[str, CategorySummary]:
    """Per-category summary (``ImageBoxes.category``) for a quick sanity check of thresholds."""
    by_category: dict[str, list[ImageBoxes]] = {}
    for item in images:
        by_category.setdefault(item.category, []).append(item)
    return {name: _summary(items) for name, items in sorted(by_category.items())}


def _summary(items: list[ImageBoxes]) -> CategorySummary:
    ratios = [ratio for item in items for ratio in area_ratios(item)]
    with_boxes = sum(1 for i in items if i.boxes)
    stats = (np.mean(ratios), np.median(ratios), min(ratios), max(ratios)) if ratios else (0.0,) * 4
    return CategorySummary(
        images=len(items),
        images_with_boxes=with_boxes,
        share_with_boxes=with_boxes / len(items),
        boxes_per_image=len(ratios) / len(items),
        mean_area_ratio=float(stats[0]),
        median_area_ratio=float(stats[1]),
        min_area_ratio=float(stats[2]),
        max_area_ratio=float(stats[3]),
    )


def render_overlay(
    image: NDArray[np.uint8],
    boxes: Iterable[Box],
    *,
    color: tuple[int, int, int] = (255, 0, 0),
    thickness: int = 2,
    show_scores: bool = True,
) -> NDArray[np.uint8]:
    """Copy of ``image`` (H, W, 3) with the boxes drawn (colour in the image's channel order)."""
    canvas = np.ascontiguousarray(image, dtype=np.uint8).copy()
    for box in boxes:
        cv2.rectangle(canvas, (box.x1, box.y1), (box.x2 - 1, box.y2 - 1), color, thickness)
        if show_scores:
            origin = (box.x1, max(box.y1 - 3, 10))
            cv2.putText(canvas, f"{box.score:.2f}", origin, cv2.FONT_HERSHEY_SIMPLEX, 0.4, color, 1)
    return canvas
