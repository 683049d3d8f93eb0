"""MoCo v3 and SimMIM objectives: schedules, loss values, and one finite step each."""

from __future__ import annotations

import math
from typing import Any

import pytest
import torch

from services.pretrain.ml.distill import DistillHead
from services.pretrain.ml.moco import MocoV3DistillObjective, contrastive_loss, momentum_at
from services.pretrain.ml.objectives import LossBalancer
from services.pretrain.ml.simmim import SimMIMDistillObjective, masked_l1, random_patch_mask
from shared.errors import InvalidInputError
from shared.ml.backbones import create_backbone


def _balancer(distill: float, task: float) -> LossBalancer:
    return LossBalancer("fixed", distill_weight=distill, task_weight=task)


def _moco() -> MocoV3DistillObjective:
    torch.manual_seed(0)
    backbone = create_backbone("yolov8n", frozen_stages=2, out_indices=(3, 4))
    return MocoV3DistillObjective(
        backbone, DistillHead(), _balancer(1.0, 1.0), dim=8, hidden_dim=16, temperature=0.2
    )


def test_momentum_follows_a_cosine_from_base_to_one() -> None:
    # when
    values = [momentum_at(s, 10, 0.99) for s in (0, 5, 10)]
    # then
    assert values == pytest.approx([0.99, 0.995, 1.0])


def test_contrastive_loss_matches_hand_value() -> None:
    # given: two orthogonal unit queries equal to their keys
    q = torch.eye(2)
    temperature = 0.5
    # when
    loss = contrastive_loss(q, q.clone(), temperature)
    # then: logits [[2, 0], [0, 2]] -> CE = log(1 + e^-2), times 2T
    assert loss.item() == pytest.approx(math.log(1 + math.exp(-2)) * 2 * temperature, rel=1e-6)


def test_moco_step_gives_finite_losses_and_gradients() -> None:
    # given
    objective: Any = _moco().train()
    batch = {
        "image": torch.randn(2, 3, 64, 64),
        "image2": torch.randn(2, 3, 64, 64),
        "map": torch.rand(2, 1, 64, 64),
        "label": torch.tensor([0, 1]),
    }
    # when
    losses = objective(batch)
    losses["loss"].backward()
    # then
    assert all(torch.isfinite(v) for v in losses.values())
    grads = [p.grad for p in objective.parameters() if p.requires_grad]
    assert all(g is not None and torch.isfinite(g).all() for g in grads)
    assert objective.backbone.model[9].cv2.conv.weight.grad.abs().sum() > 0


def test_momentum_encoder_gets_no_gradient_and_moves_towards_the_online_encoder() -> None:
    # given
    objective: Any = _moco().train()
    with torch.no_grad():
        objective.backbone.model[9].cv2.conv.weight.add_(1.0)
    online = objective.backbone.model[9].cv2.conv.weight.detach().clone()
    ema_before = objective.momentum_backbone.model[9].cv2.conv.weight.detach().clone()
    objective.momentum = 0.5
    # when
    objective._update_momentum_encoder()
    # then
    ema_after = objective.momentum_backbone.model[9].cv2.conv.weight
    assert not ema_after.requires_grad
    assert torch.allclose(ema_after, 0.5 * ema_before + 0.5 * online)


def test_patch_mask_masks_the_ceiling_share_of_mask_patches() -> None:
    # when: 64 px, 32 px mask patches -> 4 per image, ceil(0.6 * 4) = 3 masked
    mask = random_patch_mask(5, 64, mask_patch=32, model_patch=4, ratio=0.6)
    # then: each masked 32 px patch covers 8 x 8 tokens
    assert mask.shape == (5, 16, 16)
    assert mask.sum(dim=(1, 2)).tolist() == [3 * 64.0] * 5


def test_masked_l1_averages_only_masked_pixels() -> None:
    # given: error 1 everywhere except 3 in the masked (top-left) token
    image = torch.zeros(1, 3, 4, 4)
    recon = torch.ones(1, 3, 4, 4)
    recon[:, :, :2, :2] = 3.0
    mask = torch.tensor([[[1.0, 0.0], [0.0, 0.0]]])
    # when
    loss = masked_l1(recon, image, mask, patch=2)
    # then
    assert loss.item() == pytest.approx(3.0, rel=1e-5)


def test_simmim_step_gives_finite_losses_and_gradients() -> None:
    # given
    torch.manual_seed(0)
    backbone = create_backbone("swin-tiny-test", frozen_stages=2, out_indices=(4,))
    objective = SimMIMDistillObjective(backbone, DistillHead("l2"), _balancer(2.0, 1.0)).train()
    batch = {"image": torch.randn(2, 3, 64, 64), "map": torch.rand(2, 1, 64, 64)}
    # when
    losses = objective(batch)
    losses["loss"].backward()
    # then
    assert all(torch.isfinite(v) for v in losses.values())
    assert objective.mask_token.grad is not None
    assert objective.mask_token.grad.abs().sum() > 0
    grads = [p.grad for p in objective.parameters() if p.requires_grad]
    assert all(g is not None and torch.isfinite(g).all() for g in grads)


def test_simmim_refuses_a_non_swin_backbone() -> None:
    with pytest.raises(InvalidInputError, match="Swin"):
        SimMIMDistillObjective(create_backbone("resnet18-test"), DistillHead(), _balancer(1.0, 1.0))
