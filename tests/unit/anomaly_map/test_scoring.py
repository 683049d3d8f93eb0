"""Temperature, few-shot distance, fusion and image-score arithmetic on hand-sized tensors."""

from __future__ import annotations

import math

import pytest
import torch

from services.anomaly_map.ml.clip.scoring import (
    anomaly_probability,
    combine_image_score,
    few_shot_distance,
    fuse_maps,
    harmonic_mean,
)

# Columns [normal, anomalous]; the anomalous column is deliberately not unit length.
TEXT = torch.tensor([[1.0, 0.0], [0.0, 2.0]])


def test_probability_uses_cosine_over_the_fixed_temperature() -> None:
    # given: cos to normal 0.6, cos to anomalous 0.8
    features = torch.tensor([[3.0, 4.0]])

    # when
    p = anomaly_probability(features, TEXT, temperature=0.07)

    # then: softmax([0.6, 0.8] / 0.07)[1]
    expected = 1.0 / (1.0 + math.exp((0.6 - 0.8) / 0.07))
    assert p.item() == pytest.approx(expected, rel=1e-5)
    assert p.item() == pytest.approx(0.945686, rel=1e-5)


def test_a_larger_temperature_flattens_the_probability() -> None:
    # given
    features = torch.tensor([[3.0, 4.0]])

    # when
    p = anomaly_probability(features, TEXT, temperature=1.0)

    # then
    assert p.item() == pytest.approx(1.0 / (1.0 + math.exp(-0.2)), rel=1e-5)


def test_probability_keeps_leading_dimensions() -> None:
    # given
    features = torch.ones(2, 5, 2)

    # when
    p = anomaly_probability(features, TEXT, temperature=0.07)

    # then
    assert p.shape == (2, 5)
    torch.testing.assert_close(p, torch.full((2, 5), 0.5))


def test_few_shot_distance_is_half_the_nearest_cosine_distance() -> None:
    # given
    features = torch.tensor([[1.0, 0.0], [0.0, 3.0]])
    bank = torch.tensor([[0.0, 1.0], [1.0, 1.0]])

    # when
    distance = few_shot_distance(features, bank, chunk_size=1)

    # then: row 0 nearest is [1, 1] (cos 1/sqrt 2), row 1 matches [0, 1] exactly
    expected = torch.tensor([0.5 * (1 - 1 / math.sqrt(2)), 0.0])
    torch.testing.assert_close(distance, expected)


def test_farthest_reduction_follows_the_paper_wording() -> None:
    # given
    features = torch.tensor([[1.0, 0.0], [0.0, 3.0]])
    bank = torch.tensor([[0.0, 1.0], [1.0, 1.0]])

    # when
    distance = few_shot_distance(features, bank, reduction="farthest", scale=1.0)

    # then
    expected = torch.tensor([1.0, 1 - 1 / math.sqrt(2)])
    torch.testing.assert_close(distance, expected)


@pytest.mark.parametrize(("mode", "expected"), [("sum", [0.3, 0.7]), ("mean", [0.15, 0.35])])
def test_fusion_modes(mode: str, expected: list[float]) -> None:
    # given
    zero = torch.tensor([[[0.2, 0.4]]])
    few = torch.tensor([[[0.1, 0.3]]])

    # when
    fused = fuse_maps(zero, few, mode)  # type: ignore[arg-type]

    # then
    torch.testing.assert_close(fused, torch.tensor([[expected]]))


@pytest.mark.parametrize(
    ("mode", "expected"), [("average_fused_max", 0.6), ("sum_few_shot_max", 0.8)]
)
def test_image_score_modes(mode: str, expected: float) -> None:
    # given: s0 0.5, fused max 0.7, few-shot max 0.3
    s0 = torch.tensor([0.5])
    fused = torch.tensor([[[0.3, 0.7]]])
    few = torch.tensor([[[0.1, 0.3]]])

    # when
    score = combine_image_score(s0, fused, few, mode)  # type: ignore[arg-type]

    # then
    assert score.item() == pytest.approx(expected)


def test_harmonic_mean_and_its_zero_case() -> None:
    # given
    values = torch.tensor([[1.0, 0.0], [0.5, 0.5], [0.25, 0.5]])

    # when
    mean = harmonic_mean(values, dim=0)

    # then
    assert mean[0].item() == pytest.approx(3 / 7)
    assert mean[1].item() == pytest.approx(0.0, abs=1e-9)
