"""WinCLIP mode: window geometry, harmonic aggregation and a run on the tiny CLIP."""

from __future__ import annotations

from typing import Any

import pytest
import torch
from torch import Tensor

from services.anomaly_map.ml.clip.backbone import ClipBundle
from services.anomaly_map.ml.clip.outputs import KeadOutput
from services.anomaly_map.ml.clip.prompts import CategoryDescription
from services.anomaly_map.ml.kead.scorer import KeadModel
from services.anomaly_map.ml.winclip.scorer import (
    WinClipConfig,
    WinClipModel,
    coverage_matrix,
    harmonic_aggregate,
    window_indices,
)
from shared.errors import InvalidInputError

DESCRIPTION = CategoryDescription("plate", "steel plate", ("{} without any flaw",), ())


@pytest.fixture(scope="module")
def model(tiny_bundle: ClipBundle) -> WinClipModel:
    return WinClipModel(tiny_bundle)


@pytest.fixture(scope="module")
def text(model: WinClipModel) -> Tensor:
    return model.text_features(DESCRIPTION)


def test_windows_of_side_two_on_a_three_grid() -> None:
    # given / when
    windows = window_indices(3, 2)

    # then
    expected = [[0, 1, 3, 4], [1, 2, 4, 5], [3, 4, 6, 7], [4, 5, 7, 8]]
    assert windows.tolist() == expected


def test_window_count_with_a_stride() -> None:
    # given / when
    windows = window_indices(14, 3, stride=2)

    # then: tops at 0, 2, ..., 10 on both axes; the last window ends at row 12, column 12
    assert tuple(windows.shape) == (36, 9)
    assert windows[-1].tolist()[-1] == 12 * 14 + 12


def test_a_window_larger_than_the_grid_is_rejected() -> None:
    # given / when / then
    with pytest.raises(InvalidInputError, match="exceeds"):
        window_indices(3, 4)


def test_harmonic_aggregation_by_hand() -> None:
    # given: 2x2 windows on a 3x3 grid
    coverage = coverage_matrix(window_indices(3, 2), 9)
    scores = torch.tensor([[1.0, 0.5, 0.5, 0.25]])

    # when
    per_patch = harmonic_aggregate(scores, coverage)

    # then
    assert per_patch[0, 0].item() == pytest.approx(1.0)  # only window 0
    assert per_patch[0, 1].item() == pytest.approx(2 / 3)  # windows 0, 1
    assert per_patch[0, 4].item() == pytest.approx(4 / 9)  # all four windows
    assert per_patch[0, 8].item() == pytest.approx(0.25)  # only window 3


def test_uncovered_patches_score_zero() -> None:
    # given: 2x2 windows with stride 2 on a 5x5 grid leave the last row and column uncovered
    coverage = coverage_matrix(window_indices(5, 2, stride=2), 25)

    # when
    per_patch = harmonic_aggregate(torch.ones(1, 4), coverage).view(5, 5)

    # then
    assert per_patch[:4, :4].tolist() == [[1.0] * 4] * 4
    assert per_patch[4].tolist() == [0.0] * 5
    assert per_patch[:, 4].tolist() == [0.0] * 5


def test_zero_shot_output_has_the_kead_type_and_shapes(
    model: WinClipModel, tiny_images: Tensor, text: Tensor
) -> None:
    # given / when
    out = model.score(tiny_images, text)

    # then
    assert isinstance(out, KeadOutput)
    assert out.anomaly_map.shape == (3, 5, 5)
    assert out.image_score.shape == (3,)
    assert out.few_shot_map is None
    assert bool(((out.anomaly_map > 0) & (out.anomaly_map < 1)).all())


def test_window_embeddings_equal_a_stock_forward_of_the_token_subset(
    model: WinClipModel, tiny_bundle: ClipBundle, tiny_images: Tensor
) -> None:
    # given
    visual: Any = tiny_bundle.visual
    with torch.no_grad():
        tokens = visual.conv1(tiny_images[:1]).flatten(2).transpose(1, 2)
        tokens = torch.cat([visual.class_embedding.expand(1, 1, -1), tokens], dim=1)
        tokens = tokens + visual.positional_embedding
        window = [0, 1, 5, 6]  # top-left 2x2 window of the 5x5 grid
        subset = torch.cat([tokens[:, :1], tokens[:, 1:][:, window]], dim=1)
        expected = visual.ln_post(visual.transformer(visual.ln_pre(subset))[:, 0]) @ visual.proj

        # when
        feats = model.encode(tiny_images[:1])

    # then
    assert [tuple(w.shape) for w in feats.windows] == [(1, 16, 32), (1, 9, 32)]
    torch.testing.assert_close(feats.windows[0][:, 0], expected, rtol=1e-4, atol=1e-5)


def test_few_shot_mode_runs_and_averages_with_zero_shot(
    model: WinClipModel, tiny_bundle: ClipBundle, tiny_images: Tensor, text: Tensor
) -> None:
    # given
    bank = model.build_memory_bank(tiny_images[1:])

    # when
    out = model.score(tiny_images, text, bank)

    # then
    assert [tuple(level.shape) for level in bank.levels] == [(50, 32), (32, 32), (18, 32)]
    assert out.few_shot_map is not None
    torch.testing.assert_close(out.anomaly_map, (out.zero_shot_map + out.few_shot_map) / 2)
    expected = (out.zero_shot_image_score + out.few_shot_map.flatten(1).amax(dim=1)) / 2
    torch.testing.assert_close(out.image_score, expected)
    torch.testing.assert_close(out.few_shot_map[1:], torch.zeros(2, 5, 5), atol=1e-5, rtol=0)


def test_a_kead_bank_is_refused(
    model: WinClipModel, tiny_bundle: ClipBundle, tiny_images: Tensor, text: Tensor
) -> None:
    # given
    bank = KeadModel(tiny_bundle).build_memory_bank(tiny_images[:1])

    # when / then
    with pytest.raises(InvalidInputError, match="rebuild"):
        model.score(tiny_images, text, bank)


def test_window_batching_does_not_change_the_result(
    tiny_bundle: ClipBundle, model: WinClipModel, tiny_images: Tensor, text: Tensor
) -> None:
    # given
    small_batches = WinClipModel(tiny_bundle, WinClipConfig(window_batch_size=7))

    # when
    out = small_batches.score(tiny_images, text)

    # then
    torch.testing.assert_close(out.anomaly_map, model.score(tiny_images, text).anomaly_map)
