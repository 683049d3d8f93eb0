"""Score arithmetic shared by KeAD and WinCLIP: text probabilities, few-shot distance, fusion."""

from __future__ import annotations

from typing import Literal

import torch
import torch.nn.functional as F
from torch import Tensor

FewShotReduction = Literal["nearest", "farthest"]
FusionMode = Literal["sum", "mean"]
ImageScoreMode = Literal["average_fused_max", "sum_few_shot_max"]

_EPS = 1e-12


def anomaly_probability(features: Tensor, text: Tensor, temperature: float) -> Tensor:
    """Softmax probability of the anomalous class (agssp-spec §1.6).

    Args:
        features: (..., Dj) image, window or patch embeddings (any norm).
        text: (Dj, 2) class text features, columns [normal, anomalous] (any norm).
        temperature: logits are cosine / temperature (0.07, not the model's logit scale).

    Returns:
        (...) probabilities in (0, 1).
    """
    cosine = F.normalize(features.float(), dim=-1) @ F.normalize(text.float(), dim=0)
    return (cosine / temperature).softmax(dim=-1)[..., 1]


def few_shot_distance(
    features: Tensor,
    bank: Tensor,
    *,
    scale: float = 0.5,
    reduction: FewShotReduction = "nearest",
    chunk_size: int = 4096,
) -> Tensor:
    """Scaled cosine distance of each feature to the memory bank (agssp-spec §1.7).

    Args:
        features: (N, Dj) test embeddings.
        bank: (M, Dj) reference embeddings.
        scale: factor on the distance (0.5 maps 1 - cos into [0, 1]).
        reduction: 'nearest' (code: min over the bank) or 'farthest' (the paper's wording,
            "maximum cosine distance"; agssp-spec §6.1.1).
        chunk_size: rows of ``features`` compared at once, to bound memory (N x M sims).

    Returns:
        (N,) distances.
    """
    bank_n = F.normalize(bank.float(), dim=-1)
    out = []
    for chunk in torch.split(F.normalize(features.float(), dim=-1), chunk_size):
        similarity = chunk @ bank_n.T
        best = similarity.amax(dim=-1) if reduction == "nearest" else similarity.amin(dim=-1)
        out.append(scale * (1.0 - best))
    return torch.cat(out)


def fuse_maps(zero_shot: Tensor, few_shot: Tensor, mode: FusionMode = "sum") -> Tensor:
    """Combine zero- and few-shot maps: 'sum' (code, range [0, 2]) or 'mean'."""
    fused = zero_shot + few_shot
    return fused if mode == "sum" else fused / 2


def combine_image_score(
    zero_shot_score: Tensor,
    fused_map: Tensor,
    few_shot_map: Tensor,
    mode: ImageScoreMode = "average_fused_max",
) -> Tensor:
    """Image score from s0 and the maps (agssp-spec §1.8, §6.1.2).

    Args:
        zero_shot_score: (B,) s0.
        fused_map: (B, G, G) fused map M.
        few_shot_map: (B, G, G) few-shot map Mf.
        mode: 'average_fused_max' (code): (s0 + max M) / 2; 'sum_few_shot_max' (paper):
            s0 + max Mf.

    Returns:
        (B,) image scores.
    """
    if mode == "average_fused_max":
        return (zero_shot_score + fused_map.flatten(1).amax(dim=1)) / 2
    return zero_shot_score + few_shot_map.flatten(1).amax(dim=1)


def harmonic_mean(values: Tensor, dim: int = 0) -> Tensor:
    """Harmonic mean along ``dim``; zeros give zero instead of a division error."""
    return values.shape[dim] / (1.0 / values.clamp_min(_EPS)).sum(dim=dim)
