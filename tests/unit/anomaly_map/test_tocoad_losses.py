"""ToCoAD losses: focal loss (tocoad-spec §5) and the SimSiam objective (§6)."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F

from services.anomaly_map.ml.tocoad.losses import focal_loss, simsiam_loss


def test_focal_loss_matches_hand_computed_values() -> None:
    # given: pixel 0 is anomalous with p_t = 0.5; pixel 1 is normal with p_t = 3/4
    logits = torch.tensor([[0.0, math.log(3.0)], [0.0, 0.0]]).view(1, 2, 1, 2)
    mask = torch.tensor([[[1.0, 0.0]]])

    # when
    loss = focal_loss(logits, mask, alpha=0.25, gamma=2.0)

    # then: FL = -a_t (1 - p_t)^2 log p_t, a_t = 0.25 anomalous / 0.75 normal, mean of 2 pixels
    anomalous = -0.25 * (1 - 0.5) ** 2 * math.log(0.5)
    normal = -0.75 * (1 - 0.75) ** 2 * math.log(0.75)
    assert loss.item() == pytest.approx((anomalous + normal) / 2, rel=1e-5)


def test_focal_loss_with_gamma_zero_and_alpha_half_is_half_cross_entropy() -> None:
    # given
    torch.manual_seed(0)
    logits = torch.randn(2, 2, 4, 4) * 3
    mask = (torch.rand(2, 4, 4) > 0.5).float()

    # when
    loss = focal_loss(logits, mask, alpha=0.5, gamma=0.0)

    # then
    assert loss.item() == pytest.approx(0.5 * F.cross_entropy(logits, mask.long()).item(), rel=1e-5)


def test_focal_loss_down_weights_confident_pixels() -> None:
    # given: the same correct pixel, once barely and once very confidently classified
    mask = torch.zeros(1, 1, 1)
    unsure = torch.tensor([0.2, 0.0]).view(1, 2, 1, 1)
    confident = torch.tensor([4.0, 0.0]).view(1, 2, 1, 1)

    # when
    ratio_focal = focal_loss(confident, mask) / focal_loss(unsure, mask)
    ratio_ce = focal_loss(confident, mask, gamma=0.0) / focal_loss(unsure, mask, gamma=0.0)

    # then
    assert ratio_focal < ratio_ce


def test_simsiam_loss_is_symmetric_in_the_two_views() -> None:
    # given
    torch.manual_seed(0)
    p1, z1, p2, z2 = (torch.randn(4, 8) for _ in range(4))

    # when
    forward = simsiam_loss(p1, z1, p2, z2)
    swapped = simsiam_loss(p2, z2, p1, z1)

    # then
    assert forward.item() == pytest.approx(swapped.item(), abs=1e-6)


def test_simsiam_loss_sends_no_gradient_through_the_targets() -> None:
    # given
    torch.manual_seed(0)
    p1, z1, p2, z2 = (torch.randn(4, 8, requires_grad=True) for _ in range(4))

    # when
    torch.autograd.backward(simsiam_loss(p1, z1, p2, z2))

    # then
    assert p1.grad is not None
    assert p2.grad is not None
    assert z1.grad is None
    assert z2.grad is None
