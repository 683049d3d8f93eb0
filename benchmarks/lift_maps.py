"""Provided map sources of the lift benchmark (``benchmarks.agssp_lift``) and box statistics.

- ``oracle``: the pool's own labels as maps (masks, or boxes filled in), the method's ceiling.
- ``random``: the control for "the maps carry information": per pool image as many boxes as
  the ToCoAD pseudo boxes gave it, sizes drawn from all ToCoAD box sizes, placed uniformly at
  random, filled in as maps. AGBP then distils boxes that are nowhere in particular, and AGDP
  learns to find them, with the same counts and sizes as the real run.

Both are written as a dataset-map output (``<prefix>maps/<stem>.npy`` + ``manifest.json``),
the layout the pipeline's ``maps=provided`` reads. ``box_quality`` scores a source's pseudo
boxes against the pool's true boxes (box precision and recall at IoU 0.3 and 0.5, and which
boxed images truly hold a defect): whether the maps carry information, without any training.
"""

from __future__ import annotations

import io
import json
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image

from shared.schemas.detection_dataset import DATASET_FILE, DetectionDataset, version_prefix
from shared.schemas.pseudo_labels import label_key
from shared.storage.base import ObjectNotFoundError, ObjectStore

YoloBox = tuple[float, float, float, float]  # centre x, centre y, width, height in [0, 1]


def write_maps(
    store: ObjectStore, prefix: str, category: str, maps: Mapping[str, np.ndarray]
) -> None:
    """``maps`` (image key -> 2-D float32 map) as a dataset-map output under ``prefix``."""
    mapping = {}
    for image_key, amap in maps.items():
        buffer = io.BytesIO()
        np.save(buffer, np.asarray(amap, np.float32))
        map_key = f"{prefix}maps/{Path(image_key).stem}.npy"
        store.put_bytes(map_key, buffer.getvalue())
        mapping[image_key] = map_key
    manifest = {"category": category, "count": len(mapping), "maps": mapping, "mode": "provided"}
    store.put_bytes(f"{prefix}manifest.json", json.dumps(manifest).encode())


def grid_map(mask: np.ndarray, grid: int) -> np.ndarray:
    """A full-resolution mask as a (grid, grid) map: box-averaged, then scaled to max 1, so
    every region reaches the pseudo-box threshold however small it became."""
    small = np.asarray(
        Image.fromarray(mask.astype(np.float32)).resize((grid, grid), Image.Resampling.BOX),
        np.float32,
    )
    peak = float(small.max())
    return small / peak if peak > 0 else small


def read_yolo_boxes(store: ObjectStore, labels_prefix: str, stem: str) -> list[YoloBox]:
    """One image's pseudo boxes (YOLO lines); an image without a label file has none."""
    try:
        text = store.get_bytes(label_key(labels_prefix, stem)).decode()
    except ObjectNotFoundError:
        return []
    boxes = []
    for line in text.splitlines():
        parts = line.split()
        if len(parts) == 5:
            xc, yc, w, h = (float(v) for v in parts[1:])
            boxes.append((xc, yc, w, h))
    return boxes


def random_boxes(
    counts: Sequence[int], sizes: Sequence[tuple[float, float]], seed: int, tries: int = 50
) -> list[list[YoloBox]]:
    """Per image ``counts[i]`` boxes with sizes drawn from ``sizes``, centres uniform; a box
    is redrawn (up to ``tries`` times) while it overlaps one already placed, so that filled
    in as a map it stays a box of its own (ToCoAD's boxes passed NMS: they rarely overlap)."""
    rng = np.random.default_rng(seed)
    out = []
    for count in counts:
        boxes: list[YoloBox] = []
        for index in rng.integers(len(sizes), size=count) if sizes else []:
            w, h = sizes[int(index)]
            box = _place(w, h, rng)
            for _ in range(tries):
                if not any(_overlap(box, other) for other in boxes):
                    break
                box = _place(w, h, rng)
            boxes.append(box)
        out.append(boxes)
    return out


def _place(w: float, h: float, rng: np.random.Generator) -> YoloBox:
    xc = float(rng.uniform(w / 2, 1 - w / 2)) if w < 1 else 0.5
    yc = float(rng.uniform(h / 2, 1 - h / 2)) if h < 1 else 0.5
    return xc, yc, w, h


def _overlap(a: YoloBox, b: YoloBox) -> bool:
    return abs(a[0] - b[0]) < (a[2] + b[2]) / 2 and abs(a[1] - b[1]) < (a[3] + b[3]) / 2


def boxes_mask(boxes: Sequence[YoloBox], side: int) -> np.ndarray:
    """(side, side) mask of YOLO boxes filled in (the map's own square layout)."""
    mask = np.zeros((side, side), np.float32)
    for xc, yc, w, h in boxes:
        x1, x2 = int((xc - w / 2) * side), int(np.ceil((xc + w / 2) * side))
        y1, y2 = int((yc - h / 2) * side), int(np.ceil((yc + h / 2) * side))
        mask[max(0, y1) : max(y1 + 1, y2), max(0, x1) : max(x1 + 1, x2)] = 1.0
    return mask


def stage_random(
    store: ObjectStore,
    pool_keys: Sequence[str],
    tocoad_labels: str,
    *,
    category: str,
    prefix: str = "bench/random/",
    grid: int = 64,
    seed: int = 0,
) -> dict[str, Any]:
    """Write the random-box maps (see the module docstring); returns their box statistics."""
    found = [read_yolo_boxes(store, tocoad_labels, Path(k).stem) for k in pool_keys]
    sizes = [(w, h) for boxes in found for _, _, w, h in boxes]
    drawn = random_boxes([len(b) for b in found], sizes, seed)
    # Boxes are drawn in relative coordinates, so a (4 grid)-side mask is fine enough.
    maps = {
        key: grid_map(boxes_mask(boxes, 4 * grid), grid)
        for key, boxes in zip(pool_keys, drawn, strict=True)
    }
    write_maps(store, prefix, category, maps)
    return count_stats([len(b) for b in drawn])


def label_stats(store: ObjectStore, labels_prefix: str, pool_keys: Sequence[str]) -> dict[str, Any]:
    """Share of pool images given pseudo boxes, and boxes per image, of one pseudo-label run."""
    counts = [len(read_yolo_boxes(store, labels_prefix, Path(k).stem)) for k in pool_keys]
    return count_stats(counts)


def count_stats(counts: Sequence[int]) -> dict[str, Any]:
    """``images``, ``images_with_boxes``, ``share_with_boxes`` and ``boxes_per_image``."""
    images = len(counts)
    with_boxes = sum(1 for c in counts if c > 0)
    return {
        "images": images,
        "images_with_boxes": with_boxes,
        "share_with_boxes": round(with_boxes / images, 4) if images else 0.0,
        "boxes_per_image": round(sum(counts) / images, 3) if images else 0.0,
    }


def truth_share(masks: Mapping[str, np.ndarray]) -> float:
    """Share of the pool's images that hold a labelled defect."""
    return round(sum(1 for m in masks.values() if m.max() > 0) / max(1, len(masks)), 4)


# -- pseudo boxes against the pool's truth (known to the benchmark only) --------------------
QUALITY_IOUS = (0.3, 0.5)


def yolo_box(x1: float, y1: float, x2: float, y2: float, width: int, height: int) -> YoloBox:
    """Pixel corners as a YOLO box (centre and size relative to the image)."""
    return ((x1 + x2) / 2 / width, (y1 + y2) / 2 / height, (x2 - x1) / width, (y2 - y1) / height)


def box_iou(a: YoloBox, b: YoloBox) -> float:
    """Intersection over union of two YOLO boxes of one image (scale-free: relative
    coordinates give the same IoU as pixels)."""
    ax1, ay1, ax2, ay2 = a[0] - a[2] / 2, a[1] - a[3] / 2, a[0] + a[2] / 2, a[1] + a[3] / 2
    bx1, by1, bx2, by2 = b[0] - b[2] / 2, b[1] - b[3] / 2, b[0] + b[2] / 2, b[1] + b[3] / 2
    inter = max(0.0, min(ax2, bx2) - max(ax1, bx1)) * max(0.0, min(ay2, by2) - max(ay1, by1))
    union = a[2] * a[3] + b[2] * b[3] - inter
    return inter / union if union > 0 else 0.0


def matched_boxes(pseudo: Sequence[YoloBox], truth: Sequence[YoloBox], iou: float) -> int:
    """Pseudo boxes matched one-to-one to truth boxes at IoU >= ``iou``: greedily, each pseudo
    box in file order (the suite writes them strongest first) takes the free truth box it
    overlaps most."""
    free = list(truth)
    matched = 0
    for box in pseudo:
        overlaps = [box_iou(box, t) for t in free]
        best = int(np.argmax(overlaps)) if overlaps else -1
        if best >= 0 and overlaps[best] >= iou:
            free.pop(best)
            matched += 1
    return matched


def _ratio(part: int, whole: int) -> float | None:
    return round(part / whole, 4) if whole else None


def box_quality(
    pseudo: Sequence[Sequence[YoloBox]],
    truth: Sequence[Sequence[YoloBox]],
    ious: Sequence[float] = QUALITY_IOUS,
) -> dict[str, Any]:
    """How well one source's pseudo boxes find the pool's true boxes, image by image.

    Per IoU threshold t (key ``iou<100 t>``): ``precision`` = matched / pseudo boxes, ``recall``
    = matched / true boxes (``matched_boxes``). Per image: ``boxed_images_with_defects`` =
    share of images given boxes that truly hold a defect, ``defect_images_boxed`` = share of
    images holding a defect that were given boxes. None where the denominator is 0.
    """
    pairs = list(zip(pseudo, truth, strict=True))
    n_pseudo = sum(len(p) for p, _ in pairs)
    n_truth = sum(len(t) for _, t in pairs)
    boxed = [bool(t) for p, t in pairs if p]
    defective = [bool(p) for p, t in pairs if t]
    out: dict[str, Any] = {
        "pseudo_boxes": n_pseudo,
        "true_boxes": n_truth,
        "boxed_images": len(boxed),
        "boxed_images_with_defects": _ratio(sum(boxed), len(boxed)),
        "defect_images_boxed": _ratio(sum(defective), len(defective)),
    }
    for iou in ious:
        matched = sum(matched_boxes(p, t, iou) for p, t in pairs)
        out[f"iou{round(100 * iou)}"] = {
            "matched": matched,
            "precision": _ratio(matched, n_pseudo),
            "recall": _ratio(matched, n_truth),
        }
    return out


def labels_quality(
    store: ObjectStore,
    labels_prefix: str,
    pool_keys: Sequence[str],
    truth: Sequence[Sequence[YoloBox]],
) -> dict[str, Any]:
    """``box_quality`` of one pseudo-label run's boxes against the pool's ``truth``."""
    found = [read_yolo_boxes(store, labels_prefix, Path(k).stem) for k in pool_keys]
    return box_quality(found, truth)


def pool_truth(store: ObjectStore, ref: str, pool_keys: Sequence[str]) -> list[list[YoloBox]]:
    """The pool's true boxes per image (pool order; a key's file name is the data set's), from
    the stored labelled data set ``ref`` (``name:version``): the benchmark knows them, the
    suite never reads them."""
    name, version = ref.split(":", 1)
    raw = store.get_bytes(version_prefix(name, version) + DATASET_FILE)
    by_name = {im.file_name: im for im in DetectionDataset.model_validate_json(raw).images}
    truth = []
    for key in pool_keys:
        image = by_name[Path(key).name]
        truth.append(
            [yolo_box(b.x1, b.y1, b.x2, b.y2, image.width, image.height) for b in image.boxes]
        )
    return truth


def box_record(
    store: ObjectStore,
    made: Mapping[str, Any],
    pool_keys: Sequence[str],
    truth: Sequence[Sequence[YoloBox]],
) -> dict[str, Any]:
    """One source's ``pseudo_boxes`` entry: counts, the gate (its reference fields included),
    the sides of the labelled defects, and the boxes' quality against the pool's truth."""
    return {
        **label_stats(store, made["labels"], pool_keys),
        **made["gate"],
        "labelled_defects": made.get("labelled_defects"),
        "quality": labels_quality(store, made["labels"], pool_keys, truth),
    }
