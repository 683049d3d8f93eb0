"""Losses: pixel focal loss for D (tocoad-spec §5), Dice option, SimSiam loss (§6)."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor


def focal_loss(logits: Tensor, mask: Tensor, alpha: float = 0.5, gamma: float = 2.0) -> Tensor:
    """Per-pixel two-class focal loss, averaged over all pixels.

    FL = -a_t (1 - p_t)^gamma log p_t with a_t = alpha on anomalous pixels, 1 - alpha on normal.

    Args:
        logits: (B, 2, H, W) raw scores (normal, anomalous).
        mask: (B, H, W) ground truth in {0, 1}.
        alpha: weight of the anomalous class (tocoad-spec §5: 0.5).
        gamma: focusing exponent (tocoad-spec §5: 2).

    Returns:
        Scalar loss.
    """
    target = mask.long().unsqueeze(1)
    # log_softmax instead of DRAEM's log(softmax + 1e-5): exact and stable, so the loss matches
    # the closed form (with gamma 0 and alpha 0.5 it is exactly half the cross-entropy).
    log_pt = F.log_softmax(logits.float(), dim=1).gather(1, target).squeeze(1)
    alpha_t = torch.where(mask > 0.5, alpha, 1.0 - alpha)
    return (-alpha_t * (1.0 - log_pt.exp()).pow(gamma) * log_pt).mean()


def dice_loss(logits: Tensor, mask: Tensor, eps: float = 1.0) -> Tensor:
    """Soft Dice on the anomaly probability; (B, 2, H, W), (B, H, W) -> scalar."""
    prob = logits.float().softmax(dim=1)[:, 1]
    inter = (prob * mask).sum(dim=(1, 2))
    total = prob.sum(dim=(1, 2)) + mask.sum(dim=(1, 2))
    return (1.0 - (2.0 * inter + eps) / (total + eps)).mean()


def simsiam_loss(p1: Tensor, z1: Tensor, p2: Tensor, z2: Tensor) -> Tensor:
    """Symmetric negative cosine with stop-gradient on the targets (SimSiam).

    Args:
        p1: (B, d) predictor output of view 1.
        z1: (B, d) projector output of view 1.
        p2: (B, d) predictor output of view 2.
        z2: (B, d) projector output of view 2.

    Returns:
        Scalar in [-1, 1]; -1 when the predictions match the (detached) targets.
    """
    left = F.cosine_similarity(p1, z2.detach(), dim=-1).mean()
    right = F.cosine_similarity(p2, z1.detach(), dim=-1).mean()
    return -0.5 * (left + right)
