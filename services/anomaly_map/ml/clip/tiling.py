"""Score images much larger than the CLIP input by overlapping square tiles, then stitch.

A 8000x2000 strip is cut into squares, each scored at the model's input size, and the tile
maps are pasted back into one map at a chosen resolution.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Literal

import numpy as np
import torch
from torch import Tensor

from services.anomaly_map.ml.clip.outputs import AnomalyScorer, MemoryBank
from services.anomaly_map.ml.clip.preprocess import to_rgb, upsample_maps
from shared.errors import InvalidInputError

StitchMode = Literal["max", "mean"]


@dataclass(frozen=True)
class Tile:
    """A square crop in source-image pixels: rows y0..y0+size, columns x0..x0+size."""

    y0: int
    x0: int
    size: int

    @property
    def y1(self) -> int:
        """Exclusive bottom row."""
        return self.y0 + self.size

    @property
    def x1(self) -> int:
        """Exclusive right column."""
        return self.x0 + self.size


@dataclass(frozen=True)
class TiledResult:
    """Stitched output of ``score_tiled``.

    Attributes:
        anomaly_map: (H_out, W_out) stitched map of the scorer's fused map.
        image_score: max of the tile image scores.
        tiles: tiles in scoring order.
        tile_scores: (T,) image score of each tile.
    """

    anomaly_map: Tensor
    image_score: float
    tiles: tuple[Tile, ...]
    tile_scores: Tensor


def _axis_starts(length: int, tile: int, overlap: int) -> list[int]:
    if length <= tile:
        return [0]
    count = math.ceil((length - tile) / (tile - overlap)) + 1
    # Spread the tiles evenly so the last one ends exactly on the border; the real overlap
    # is therefore at least the requested one.
    return [round(i * (length - tile) / (count - 1)) for i in range(count)]


def plan_tiles(height: int, width: int, tile_size: int, overlap: int) -> list[Tile]:
    """Overlapping square tiles covering an image, row-major.

    Args:
        height: image height H in pixels.
        width: image width W in pixels.
        tile_size: tile side; shrunk to min(H, W) so tiles stay square and inside the image.
        overlap: minimum overlap of neighbouring tiles in pixels, < tile side.

    Returns:
        Tiles whose union is the whole image.
    """
    side = min(tile_size, height, width)
    if side < 1 or not 0 <= overlap < side:
        raise InvalidInputError(f"need 0 <= overlap ({overlap}) < tile side ({side})")
    rows = _axis_starts(height, side, overlap)
    cols = _axis_starts(width, side, overlap)
    return [Tile(y0=y, x0=x, size=side) for y in rows for x in cols]


def _span(start: int, end: int, source: int, target: int) -> tuple[int, int]:
    """Map a pixel interval of the source onto the output grid, keeping it non-empty."""
    lo = min(round(start * target / source), target - 1)
    return lo, max(round(end * target / source), lo + 1)


def stitch(
    tile_maps: Tensor,
    tiles: list[Tile],
    image_size: tuple[int, int],
    output_size: tuple[int, int],
    mode: StitchMode = "max",
) -> Tensor:
    """Paste tile maps into one map.

    Args:
        tile_maps: (T, g, g) maps, one per tile.
        tiles: the T tiles in source pixels.
        image_size: source (H, W).
        output_size: stitched (H_out, W_out); tiles are scaled by H_out/H and W_out/W.
        mode: 'max' or 'mean' where tiles overlap.

    Returns:
        (H_out, W_out) float32 map; pixels no tile covers are 0.
    """
    (h, w), (oh, ow) = image_size, output_size
    total = torch.zeros(oh, ow, device=tile_maps.device)
    count = torch.zeros_like(total)
    if mode == "max":
        total.fill_(float("-inf"))
    for tile_map, t in zip(tile_maps.float(), tiles, strict=True):
        y0, y1 = _span(t.y0, t.y1, h, oh)
        x0, x1 = _span(t.x0, t.x1, w, ow)
        patch = upsample_maps(tile_map[None], (y1 - y0, x1 - x0))[0]
        region = total[y0:y1, x0:x1]
        total[y0:y1, x0:x1] = torch.maximum(region, patch) if mode == "max" else region + patch
        count[y0:y1, x0:x1] += 1
    if mode == "mean":
        return torch.where(count > 0, total / count.clamp_min(1), total)
    return torch.where(count > 0, total, torch.zeros_like(total))


def score_tiled(
    scorer: AnomalyScorer,
    image: np.ndarray,
    text: Tensor,
    bank: MemoryBank | None = None,
    *,
    tile_size: int,
    overlap: int,
    batch_size: int = 16,
    output_size: tuple[int, int] | None = None,
    mode: StitchMode = "max",
) -> TiledResult:
    """Score a large image tile by tile and stitch the fused maps.

    Args:
        scorer: a KeadModel or WinClipModel.
        image: uint8 (H, W, 3) RGB (gray/RGBA converted).
        text: (Dj, 2) text features of the image's category.
        bank: optional memory bank of that category.
        tile_size: tile side in source pixels (each tile is resized to the model input).
        overlap: minimum overlap between neighbouring tiles in source pixels.
        batch_size: tiles per scorer call.
        output_size: (H_out, W_out) of the stitched map; default the source size.
        mode: 'max' or 'mean' where tiles overlap.

    Returns:
        Stitched map (H_out, W_out), image score = max over tiles, and per-tile scores.
    """
    rgb = to_rgb(image)
    h, w = rgb.shape[:2]
    tiles = plan_tiles(h, w, tile_size, overlap)
    maps, scores = [], []
    for start in range(0, len(tiles), batch_size):
        batch = tiles[start : start + batch_size]
        crops = [rgb[t.y0 : t.y1, t.x0 : t.x1] for t in batch]
        out = scorer.score(scorer.preprocess(crops), text, bank)
        maps.append(out.anomaly_map)
        scores.append(out.image_score)
    tile_scores = torch.cat(scores)
    stitched = stitch(torch.cat(maps), tiles, (h, w), output_size or (h, w), mode)
    return TiledResult(
        anomaly_map=stitched,
        image_score=float(tile_scores.max()),
        tiles=tuple(tiles),
        tile_scores=tile_scores,
    )
