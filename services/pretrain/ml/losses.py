"""AGBP distillation losses: feature attention maps against resized anomaly maps.

agssp-spec §4.2-4.3. Everything here is a pure function of tensors.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Literal

import torch.nn.functional as F
from torch import Tensor

LossKind = Literal["cosine", "l2"]
ResizeMode = Literal["chained", "direct"]

# Clamp on vector norms; the reference L2 loss has none and returns NaN for an all-zero map
# (agssp-spec §6.2), which with this clamp becomes a finite loss instead.
NORM_EPS = 1e-12


def attention_map(feature: Tensor) -> Tensor:
    """Sum of squares over channels (paper eq. 6), no normalisation.

    Args:
        feature: (B, C, h, w).

    Returns:
        (B, 1, h, w).
    """
    return feature.pow(2).sum(dim=1, keepdim=True)


def resize_targets(
    target: Tensor, sizes: Sequence[tuple[int, int]], mode: ResizeMode = "chained"
) -> list[Tensor]:
    """Resize the anomaly map to every output size with bilinear interpolation.

    Args:
        target: (B, 1, H, W) map after augmentation.
        sizes: (h_j, w_j) of each distilled output, in output order.
        mode: ``"chained"`` resizes each result again for the next size, as the reference
            head does (agssp-spec §4.2 quirk, the default); ``"direct"`` resizes the
            original map to every size.

    Returns:
        One (B, 1, h_j, w_j) map per size.
    """
    resized: list[Tensor] = []
    current = target
    for size in sizes:
        source = current if mode == "chained" else target
        # align_corners False and no antialias, as the reference head (agssp-spec §4.2).
        current = F.interpolate(source, size=size, mode="bilinear", align_corners=False)
        resized.append(current)
    return resized


def cosine_distill_loss(attention: Tensor, target: Tensor, eps: float = NORM_EPS) -> Tensor:
    """Batch mean of ``2 - 2 cos(a_b, m_b)`` over flattened maps (agssp-spec §4.3).

    Args:
        attention: (B, 1, h, w) attention map.
        target: (B, 1, h, w) resized anomaly map.
        eps: lower clamp of each vector's norm.

    Returns:
        Scalar in [0, 4].
    """
    a_hat, m_hat = _unit_vectors(attention, target, eps)
    return (2.0 - 2.0 * (a_hat * m_hat).sum(dim=1)).mean()


def l2_distill_loss(attention: Tensor, target: Tensor, eps: float = NORM_EPS) -> Tensor:
    """Squared distance of L2-normalised maps, summed over positions, mean over the batch.

    Equal to ``cosine_distill_loss`` for non-zero inputs (||a - m||^2 = 2 - 2 cos for unit
    vectors). Unlike the reference L2Loss, norms are clamped at ``eps``. The reference's loss
    weight (2.0) is applied by the caller, not here.

    Args:
        attention: (B, 1, h, w) attention map.
        target: (B, 1, h, w) resized anomaly map.
        eps: lower clamp of each vector's norm.

    Returns:
        Scalar in [0, 4].
    """
    a_hat, m_hat = _unit_vectors(attention, target, eps)
    return (a_hat - m_hat).pow(2).sum() / attention.shape[0]


def distill_loss(
    features: Sequence[Tensor],
    target: Tensor,
    *,
    kind: LossKind = "cosine",
    resize: ResizeMode = "chained",
) -> Tensor:
    """Plain sum over outputs of the per-output loss (agssp-spec §4.2, no layer averaging).

    Args:
        features: backbone outputs (B, C_j, h_j, w_j).
        target: (B, 1, H, W) anomaly map in the input's geometry.
        kind: ``"cosine"`` or ``"l2"``.
        resize: ``"chained"`` (reference) or ``"direct"``; see ``resize_targets``.

    Returns:
        Scalar loss, unweighted.
    """
    loss_fn = cosine_distill_loss if kind == "cosine" else l2_distill_loss
    sizes = [(int(f.shape[-2]), int(f.shape[-1])) for f in features]
    # float32 even under AMP: squares summed over hundreds of channels overflow fp16.
    targets = resize_targets(target.float(), sizes, resize)
    losses = [loss_fn(attention_map(f.float()), t) for f, t in zip(features, targets, strict=True)]
    total = losses[0]
    for loss in losses[1:]:
        total = total + loss
    return total


def _unit_vectors(attention: Tensor, target: Tensor, eps: float) -> tuple[Tensor, Tensor]:
    if attention.shape != target.shape:
        raise ValueError(f"attention {tuple(attention.shape)} != target {tuple(target.shape)}")
    a = attention.flatten(start_dim=1)
    m = target.flatten(start_dim=1)
    return F.normalize(a, dim=1, eps=eps), F.normalize(m, dim=1, eps=eps)
