"""Tiling of large images: tile geometry, stitching and tile-wise scoring."""

from __future__ import annotations

import itertools
from collections.abc import Sequence

import numpy as np
import pytest
import torch
from torch import Tensor

from services.anomaly_map.ml.clip.backbone import ClipBundle
from services.anomaly_map.ml.clip.outputs import KeadOutput, MemoryBank
from services.anomaly_map.ml.clip.preprocess import preprocess
from services.anomaly_map.ml.clip.prompts import CategoryDescription
from services.anomaly_map.ml.clip.tiling import Tile, plan_tiles, score_tiled, stitch
from services.anomaly_map.ml.kead.scorer import KeadModel
from shared.errors import InvalidInputError


class MeanIntensityScorer:
    """Fake scorer: every tile's map and score are its mean intensity in [0, 1]."""

    image_size = 8
    grid_size = 2

    def preprocess(self, images: Sequence[np.ndarray]) -> Tensor:
        return preprocess(images, size=8, mean=(0.0, 0.0, 0.0), std=(1.0, 1.0, 1.0))

    def text_features(self, description: CategoryDescription) -> Tensor:
        return torch.zeros(4, 2)

    def build_memory_bank(self, ref_images: Tensor) -> MemoryBank:
        raise NotImplementedError

    def score(self, images: Tensor, text: Tensor, bank: MemoryBank | None = None) -> KeadOutput:
        mean = images.mean(dim=(1, 2, 3))
        maps = mean[:, None, None].expand(-1, 2, 2)
        return KeadOutput(maps, maps, None, mean, mean)


def test_a_long_strip_is_cut_into_evenly_spread_square_tiles() -> None:
    # given / when
    tiles = plan_tiles(2000, 8000, tile_size=2000, overlap=200)

    # then
    assert [(t.y0, t.x0, t.size) for t in tiles] == [
        (0, x, 2000) for x in (0, 1500, 3000, 4500, 6000)
    ]


def test_tiles_cover_the_image_with_at_least_the_requested_overlap() -> None:
    # given
    height, width, overlap = 700, 1900, 64

    # when
    tiles = plan_tiles(height, width, tile_size=512, overlap=overlap)

    # then
    covered = np.zeros((height, width), dtype=bool)
    for t in tiles:
        covered[t.y0 : t.y1, t.x0 : t.x1] = True
        assert t.y1 <= height
        assert t.x1 <= width
    assert covered.all()
    xs = sorted({t.x0 for t in tiles})
    assert all(b - a <= 512 - overlap for a, b in itertools.pairwise(xs))


def test_a_small_image_gets_one_tile_of_its_short_side() -> None:
    # given / when
    tiles = plan_tiles(300, 300, tile_size=1000, overlap=50)

    # then
    assert tiles == [Tile(0, 0, 300)]


def test_overlap_must_be_smaller_than_the_tile() -> None:
    # given / when / then
    with pytest.raises(InvalidInputError, match="overlap"):
        plan_tiles(100, 400, tile_size=100, overlap=100)


@pytest.mark.parametrize(("mode", "overlap_value"), [("max", 3.0), ("mean", 2.0)])
def test_stitching_reduces_overlaps(mode: str, overlap_value: float) -> None:
    # given: two 10-px tiles overlapping on columns 6..9 of a 10x16 image
    tiles = [Tile(0, 0, 10), Tile(0, 6, 10)]
    maps = torch.stack([torch.full((2, 2), 1.0), torch.full((2, 2), 3.0)])

    # when
    stitched = stitch(maps, tiles, (10, 16), (10, 16), mode)  # type: ignore[arg-type]

    # then
    expected = torch.full((10, 16), 3.0)
    expected[:, :6] = 1.0
    expected[:, 6:10] = overlap_value
    torch.testing.assert_close(stitched, expected)


def test_stitching_places_a_tile_at_the_scaled_position() -> None:
    # given: the second of two tiles is hot; output at half resolution
    tiles = [Tile(0, 0, 100), Tile(0, 100, 100)]
    maps = torch.stack([torch.zeros(3, 3), torch.ones(3, 3)])

    # when
    stitched = stitch(maps, tiles, (100, 200), (50, 100))

    # then
    expected = torch.zeros(50, 100)
    expected[:, 50:] = 1.0
    torch.testing.assert_close(stitched, expected)


def test_score_tiled_takes_the_max_tile_score_and_stitches_the_map() -> None:
    # given: a 100x300 image, bright only in columns 250..299
    image = np.zeros((100, 300, 3), dtype=np.uint8)
    image[:, 250:] = 255

    # when
    result = score_tiled(
        MeanIntensityScorer(),
        image,
        torch.zeros(4, 2),
        tile_size=100,
        overlap=20,
        batch_size=3,
        output_size=(10, 30),
    )

    # then
    assert [t.x0 for t in result.tiles] == [0, 67, 133, 200]
    assert result.image_score == pytest.approx(0.5, abs=0.02)
    assert result.anomaly_map.shape == (10, 30)
    assert result.anomaly_map[:, 20:].min().item() == pytest.approx(0.5, abs=0.02)
    assert result.anomaly_map[:, :13].max().item() == 0.0


def test_score_tiled_runs_a_real_scorer(tiny_bundle: ClipBundle) -> None:
    # given
    model = KeadModel(tiny_bundle)
    text = model.text_features(CategoryDescription("strip", "steel strip", (), ()))
    image = np.random.default_rng(0).integers(0, 256, size=(60, 200), dtype=np.uint8)

    # when
    result = score_tiled(model, image, text, tile_size=60, overlap=10, output_size=(30, 100))

    # then
    assert result.anomaly_map.shape == (30, 100)
    assert len(result.tiles) == 4
    assert result.image_score == pytest.approx(result.tile_scores.max().item())
