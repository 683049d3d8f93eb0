"""Distillation losses against hand-computed values (agssp-spec §4.2-4.3)."""

from __future__ import annotations

import math

import pytest
import torch

from services.pretrain.ml.distill import DistillHead, distill_defaults
from services.pretrain.ml.losses import (
    attention_map,
    cosine_distill_loss,
    distill_loss,
    l2_distill_loss,
    resize_targets,
)


def _feature() -> torch.Tensor:
    # (1, 2, 1, 2): channel 0 = [1, 2], channel 1 = [2, 0] -> attention [5, 4]
    return torch.tensor([[[[1.0, 2.0]], [[2.0, 0.0]]]])


def test_attention_is_the_channel_sum_of_squares() -> None:
    # when
    attention = attention_map(_feature())
    # then
    assert attention.shape == (1, 1, 1, 2)
    assert attention.flatten().tolist() == [5.0, 4.0]


def test_cosine_loss_matches_hand_value() -> None:
    # given: a = (5, 4), m = (1, 0): cos = 5 / sqrt(41)
    attention = torch.tensor([[[[5.0, 4.0]]]])
    target = torch.tensor([[[[1.0, 0.0]]]])
    # when
    loss = cosine_distill_loss(attention, target)
    # then
    assert loss.item() == pytest.approx(2 - 10 / math.sqrt(41), rel=1e-6)


def test_l2_loss_matches_hand_value() -> None:
    # given: a_hat = (5, 4) / sqrt(41), m_hat = (1, 0)
    attention = torch.tensor([[[[5.0, 4.0]]]])
    target = torch.tensor([[[[1.0, 0.0]]]])
    # when
    loss = l2_distill_loss(attention, target)
    # then: (5/sqrt(41) - 1)^2 + 16/41
    assert loss.item() == pytest.approx((5 / math.sqrt(41) - 1) ** 2 + 16 / 41, rel=1e-6)


def test_l2_of_unit_vectors_equals_two_minus_two_cosine() -> None:
    # given
    torch.manual_seed(0)
    attention = torch.rand(4, 1, 7, 7)
    target = torch.rand(4, 1, 7, 7)
    # when
    l2 = l2_distill_loss(attention, target)
    cosine = cosine_distill_loss(attention, target)
    # then
    assert l2.item() == pytest.approx(cosine.item(), rel=1e-5)


def test_cosine_loss_is_a_batch_mean() -> None:
    # given: identical pair (loss 0) and orthogonal pair (loss 2)
    attention = torch.tensor([[[[1.0, 0.0]]], [[[1.0, 0.0]]]])
    target = torch.tensor([[[[1.0, 0.0]]], [[[0.0, 1.0]]]])
    # when
    loss = cosine_distill_loss(attention, target)
    # then
    assert loss.item() == pytest.approx(1.0)


def test_l2_loss_of_an_all_zero_map_is_finite() -> None:
    # given: the reference L2Loss divides by a zero norm here (NaN)
    attention = torch.rand(2, 1, 3, 3)
    target = torch.zeros(2, 1, 3, 3)
    # when
    loss = l2_distill_loss(attention, target)
    # then: m_hat = 0 so the loss is ||a_hat||^2 = 1 per sample
    assert loss.item() == pytest.approx(1.0, rel=1e-6)


def test_chained_resize_passes_through_the_first_size() -> None:
    # given: 4x4 map, hot corner pixel only
    target = torch.zeros(1, 1, 4, 4)
    target[0, 0, 0, 0] = 1.0
    # when
    chained = resize_targets(target, [(2, 2), (1, 1)], "chained")
    direct = resize_targets(target, [(2, 2), (1, 1)], "direct")
    # then: 4->2 averages 2x2 blocks (corner block 0.25); 2->1 averages those (1/16);
    # 4->1 directly samples the centre, which does not see the corner (0)
    assert chained[0][0, 0, 0, 0].item() == pytest.approx(0.25)
    assert chained[1].item() == pytest.approx(1 / 16)
    assert direct[1].item() == pytest.approx(0.0)


def test_distill_loss_sums_the_per_output_losses() -> None:
    # given
    torch.manual_seed(0)
    features = [torch.rand(2, 3, 4, 4), torch.rand(2, 5, 2, 2)]
    target = torch.rand(2, 1, 8, 8)
    t4, t2 = resize_targets(target, [(4, 4), (2, 2)], "chained")
    expected = cosine_distill_loss(attention_map(features[0]), t4) + cosine_distill_loss(
        attention_map(features[1]), t2
    )
    # when
    loss = distill_loss(features, target, kind="cosine", resize="chained")
    # then
    assert loss.item() == pytest.approx(expected.item(), rel=1e-6)


def test_distill_head_is_zero_when_attention_follows_the_map() -> None:
    # given: one channel equal to sqrt(map), so its attention equals the map
    target = torch.rand(2, 1, 4, 4) + 0.1
    features = [target.sqrt()]
    # when
    loss = DistillHead("l2", "direct")(features, target)
    # then
    assert loss.item() == pytest.approx(0.0, abs=1e-6)


def test_spec_defaults_per_backbone_family() -> None:
    # when
    csp, resnet, swin = (distill_defaults(n) for n in ("yolov8s", "resnet50", "swin_base"))
    # then
    assert (csp.stages, csp.frozen_stages, csp.loss, csp.weight) == ((3, 4), 2, "cosine", 1.0)
    assert (resnet.stages, resnet.loss) == ((3, 4), "cosine")
    assert (swin.stages, swin.frozen_stages, swin.loss, swin.weight) == ((4,), 2, "l2", 2.0)
