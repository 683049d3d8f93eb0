"""Tiled detection for frames much larger than the network input (small defects, large frames).

A frame is cut into overlapping tiles of the network's own size, so nothing is downscaled;
each tile is detected on its own, its boxes are shifted back into frame pixels, and the
pieces of one object cut by a tile border are merged into one box. Merging is greedy
non-maximum *merging*, not NMS, with two rules for a pair of same-class boxes that intersect:
their intersection over the smaller box (IoS) is high (the same object seen twice in the
overlap; IoU would miss a whole object versus its cut piece), or one of them ends on an
inner tile edge and the two line up across it (their extents perpendicular to the cut
overlap by more than half the smaller one: the halves of a border-crossing object share
only the tile overlap, too little for any area ratio). Merged boxes are the union of the
pieces with the best score.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
from numpy.typing import NDArray

from services.inference.ml.detections import Detections


@dataclass(frozen=True)
class Tile:
    """One tile: rows ``y0:y1`` and columns ``x0:x1`` of the frame."""

    y0: int
    x0: int
    y1: int
    x1: int


def _starts(length: int, tile: int, step: int) -> list[int]:
    if length <= tile:
        return [0]
    count = math.ceil((length - tile) / step) + 1
    # Spread the tiles evenly so the last one ends exactly at the border (no thin sliver).
    return [round(i * (length - tile) / (count - 1)) for i in range(count)]


def tile_grid(image_hw: tuple[int, int], tile_hw: tuple[int, int], overlap: float) -> list[Tile]:
    """Overlapping tiles that cover a frame, row by row.

    Args:
        image_hw: Frame (height, width).
        tile_hw: Tile (height, width), the network input; a frame smaller than a tile on an
            axis gets one tile spanning it there.
        overlap: Fraction of a tile shared with its neighbour, in [0, 0.9]; the actual overlap
            is at least this (tiles are spread evenly to end at the border).

    Returns:
        Tiles in reading order; every frame pixel lies in at least one.
    """
    if not 0.0 <= overlap <= 0.9:
        raise ValueError(f"overlap must be in [0, 0.9], got {overlap}")
    (h, w), (th, tw) = image_hw, tile_hw
    step_y, step_x = max(1, int(th * (1 - overlap))), max(1, int(tw * (1 - overlap)))
    return [
        Tile(y0, x0, min(y0 + th, h), min(x0 + tw, w))
        for y0 in _starts(h, th, step_y)
        for x0 in _starts(w, tw, step_x)
    ]


def crop(image: NDArray[np.uint8], tile: Tile) -> NDArray[np.uint8]:
    """The tile's pixels, contiguous (OpenCV and the letterbox expect it)."""
    return np.ascontiguousarray(image[tile.y0 : tile.y1, tile.x0 : tile.x1])


def merge_tiles(
    parts: Sequence[Detections],
    tiles: Sequence[Tile],
    image_hw: tuple[int, int],
    *,
    ios_threshold: float = 0.5,
    max_det: int = 300,
    agnostic: bool = False,
) -> Detections:
    """Shift per-tile detections into frame pixels and merge duplicates and cut pieces.

    Args:
        parts: One ``Detections`` per tile, in tile pixels.
        tiles: The tiles, same order.
        image_hw: Frame (height, width).
        ios_threshold: Boxes of one class whose intersection over the smaller box exceeds
            this are one object.
        max_det: Most detections kept after merging, best score first.
        agnostic: Merge across classes too.

    Returns:
        Detections in frame pixels, best score first.
    """
    if len(parts) != len(tiles):
        raise ValueError(f"{len(parts)} detection sets for {len(tiles)} tiles")
    if not parts:
        return Detections.empty(image_hw)
    shifts = [np.array([t.x0, t.y0, t.x0, t.y0], np.float32) for t in tiles]
    boxes = np.concatenate([p.boxes + s for p, s in zip(parts, shifts, strict=True)])
    scores = np.concatenate([p.scores for p in parts])
    class_ids = np.concatenate([p.class_ids for p in parts])
    cuts = np.concatenate([_cut_edges(p, t, image_hw) for p, t in zip(parts, tiles, strict=True)])
    merged_boxes, merged_scores, merged_ids = _merge(
        boxes, scores, class_ids, cuts, ios_threshold, agnostic=agnostic
    )
    return Detections(
        merged_boxes[:max_det], merged_scores[:max_det], merged_ids[:max_det], image_hw
    )


_EDGE_PX = 1.0  # a box within this of an inner tile edge was cut by it


def _cut_edges(part: Detections, tile: Tile, image_hw: tuple[int, int]) -> NDArray[np.bool_]:
    """(N, 2): whether each box ends on an inner vertical (x) / horizontal (y) tile edge."""
    b, (h, w) = part.boxes, image_hw
    tw, th = tile.x1 - tile.x0, tile.y1 - tile.y0
    cut_x = ((b[:, 0] <= _EDGE_PX) & (tile.x0 > 0)) | ((b[:, 2] >= tw - _EDGE_PX) & (tile.x1 < w))
    cut_y = ((b[:, 1] <= _EDGE_PX) & (tile.y0 > 0)) | ((b[:, 3] >= th - _EDGE_PX) & (tile.y1 < h))
    return np.stack([cut_x, cut_y], axis=1)


def _merge(
    boxes: NDArray[np.float32],
    scores: NDArray[np.float32],
    class_ids: NDArray[np.int64],
    cuts: NDArray[np.bool_],
    threshold: float,
    *,
    agnostic: bool,
) -> tuple[NDArray[np.float32], NDArray[np.float32], NDArray[np.int64]]:
    """Greedy merge, best score first, repeated until no pair of kept boxes merges any more.

    Repeating matters: a union of two pieces may now line up with a third piece (a box
    over a tile corner is cut in four).
    """
    order = np.argsort(-scores, kind="stable")
    boxes, scores, class_ids = boxes[order].copy(), scores[order], class_ids[order]
    cuts = cuts[order].copy()
    while True:
        keep, absorbed = _merge_pass(boxes, class_ids, cuts, threshold, agnostic)
        boxes, scores, class_ids, cuts = boxes[keep], scores[keep], class_ids[keep], cuts[keep]
        if not absorbed:
            return boxes, scores, class_ids


def _partners(
    boxes: NDArray[np.float32],
    cuts: NDArray[np.bool_],
    i: int,
    rest: NDArray[np.int64],
    threshold: float,
) -> NDArray[np.int64]:
    """Which of ``rest`` are the same object as box ``i`` (the two rules of the module)."""
    b, others = boxes[i], boxes[rest]
    iw = np.minimum(b[2], others[:, 2]) - np.maximum(b[0], others[:, 0])
    ih = np.minimum(b[3], others[:, 3]) - np.maximum(b[1], others[:, 1])
    inter = np.maximum(iw, 0) * np.maximum(ih, 0)
    area_i = (b[2] - b[0]) * (b[3] - b[1])
    areas = (others[:, 2] - others[:, 0]) * (others[:, 3] - others[:, 1])
    ios = inter / np.maximum(np.minimum(area_i, areas), 1e-9)
    min_w = np.maximum(np.minimum(b[2] - b[0], others[:, 2] - others[:, 0]), 1e-9)
    min_h = np.maximum(np.minimum(b[3] - b[1], others[:, 3] - others[:, 1]), 1e-9)
    cut_x = cuts[i, 0] | cuts[rest, 0]
    cut_y = cuts[i, 1] | cuts[rest, 1]
    across_x = cut_x & (ih / min_h > 0.5)  # a vertical cut: the rows must line up
    across_y = cut_y & (iw / min_w > 0.5)
    same = (inter > 0) & ((ios > threshold) | across_x | across_y)
    return np.asarray(rest[same], dtype=np.int64)


def _merge_pass(
    boxes: NDArray[np.float32],
    class_ids: NDArray[np.int64],
    cuts: NDArray[np.bool_],
    threshold: float,
    agnostic: bool,
) -> tuple[NDArray[np.int64], bool]:
    """One pass; grows ``boxes`` and ``cuts`` in place. Returns kept indices, whether any merged."""
    alive = np.ones(len(boxes), dtype=bool)
    absorbed = False
    for i in range(len(boxes)):
        if not alive[i]:
            continue
        rest = np.flatnonzero(alive)
        rest = rest[rest > i]
        if not agnostic:
            rest = rest[class_ids[rest] == class_ids[i]]
        hits = _partners(boxes, cuts, i, rest, threshold) if len(rest) else rest
        if len(hits):
            group = np.concatenate([[i], hits])
            boxes[i] = [*boxes[group, :2].min(axis=0), *boxes[group, 2:].max(axis=0)]
            cuts[i] = cuts[group].any(axis=0)
            alive[hits] = False
            absorbed = True
    return np.flatnonzero(alive).astype(np.int64), absorbed
