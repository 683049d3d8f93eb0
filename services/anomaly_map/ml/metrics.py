"""Anomaly-detection metrics: image AUROC, pixel AUROC and AUPRO (FPR-limited, normalised)."""

from __future__ import annotations

import numpy as np
import torch
from scipy import ndimage
from sklearn.metrics import roc_auc_score

from shared.errors import InvalidInputError

ArrayOrTensor = np.ndarray | torch.Tensor

# 8-connected regions, as the MVTec AD evaluation code labels ground-truth defects.
_EIGHT_CONNECTED = np.ones((3, 3), dtype=bool)


def _numpy(values: ArrayOrTensor) -> np.ndarray:
    if isinstance(values, torch.Tensor):
        return values.detach().float().cpu().numpy()
    return np.asarray(values)


def _auroc(labels: np.ndarray, scores: np.ndarray) -> float:
    if labels.shape != scores.shape:
        raise InvalidInputError(f"labels {labels.shape} and scores {scores.shape} differ in shape")
    if labels.all() or not labels.any():
        raise InvalidInputError("AUROC needs both normal and anomalous samples")
    return float(roc_auc_score(labels, scores))


def image_auroc(labels: ArrayOrTensor, scores: ArrayOrTensor) -> float:
    """AUROC of image scores (N,) against binary labels (N,), 1 = anomalous."""
    return _auroc(_numpy(labels).astype(bool).ravel(), _numpy(scores).ravel())


def pixel_auroc(masks: ArrayOrTensor, maps: ArrayOrTensor) -> float:
    """AUROC over all pixels of maps (N, H, W) against binary masks (N, H, W)."""
    return _auroc(_numpy(masks).astype(bool).ravel(), _numpy(maps).ravel())


def _pro_weights(masks: np.ndarray) -> np.ndarray:
    """Per pixel: 1 / (region size * number of regions) inside defects, 0 outside."""
    weights = np.zeros(masks.shape, dtype=np.float64)
    regions = 0
    for i, mask in enumerate(masks):
        labelled, count = ndimage.label(mask, structure=_EIGHT_CONNECTED)
        sizes = np.bincount(labelled.ravel())
        inside = labelled > 0
        weights[i][inside] = 1.0 / sizes[labelled[inside]]
        regions += count
    if regions == 0:
        raise InvalidInputError("AUPRO needs at least one anomalous region")
    return weights / regions


def _value_at(x: np.ndarray, y: np.ndarray, limit: float) -> float:
    """y on the polyline (x, y) at x = limit; x is non-decreasing and spans [0, 1]."""
    above = int(np.searchsorted(x, limit, side="right"))
    if above == len(x):
        return float(y[-1])
    lo = above - 1
    t = (limit - x[lo]) / (x[above] - x[lo])
    return float(y[lo] + t * (y[above] - y[lo]))


def aupro(masks: ArrayOrTensor, maps: ArrayOrTensor, *, fpr_limit: float = 0.3) -> float:
    """Area under the per-region-overlap curve up to ``fpr_limit``, divided by ``fpr_limit``.

    Exact over every distinct score threshold: the PRO at a threshold is the mean, over all
    8-connected ground-truth regions of all images, of the fraction of the region at or above
    it; the FPR is the fraction of normal pixels at or above it.

    Args:
        masks: (N, H, W) binary ground truth.
        maps: (N, H, W) anomaly maps at the same resolution.
        fpr_limit: integration limit on the false-positive rate, in (0, 1].

    Returns:
        Normalised AUPRO in [0, 1].
    """
    gt, scores = _numpy(masks).astype(bool), _numpy(maps).astype(np.float64)
    if gt.shape != scores.shape or gt.ndim != 3:
        raise InvalidInputError(f"masks {gt.shape} and maps {scores.shape} must both be (N, H, W)")
    if not 0 < fpr_limit <= 1 or gt.all():
        raise InvalidInputError("AUPRO needs normal pixels and 0 < fpr_limit <= 1")
    pro_weight = _pro_weights(gt).ravel()
    fpr_weight = (~gt).ravel() / np.count_nonzero(~gt)
    flat = scores.ravel()
    order = np.argsort(-flat, kind="stable")
    sorted_scores = flat[order]
    # Only the last position of each run of tied scores is a reachable threshold.
    ends = np.flatnonzero(np.r_[sorted_scores[1:] != sorted_scores[:-1], True])
    fpr = np.r_[0.0, np.cumsum(fpr_weight[order])[ends]]
    pro = np.r_[0.0, np.cumsum(pro_weight[order])[ends]]
    keep = fpr <= fpr_limit
    fpr_cut = np.r_[fpr[keep], fpr_limit]
    pro_cut = np.r_[pro[keep], _value_at(fpr, pro, fpr_limit)]
    return float(np.trapezoid(pro_cut, fpr_cut) / fpr_limit)
