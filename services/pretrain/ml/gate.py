"""Image-level gate of pseudo boxes: which pool images may get boxes at all.

agssp-spec §3 step 2 and §6.4.3: the paper (sec. 4.2) calls images scoring below a threshold
normal but never gives it; the code draws boxes on every image whose map exceeds T_c. Modes:
``off`` (the code), ``fixed`` (the caller's threshold) and ``auto``, calibrated on the pool's
own image scores without labels:

1. finite scores only; fewer than ``MIN_POOL`` or constant scores: no gate;
2. a two-component 1-D Gaussian mixture by EM (mclust's conjugate prior on the variances,
   fixed quantile starts: deterministic), on the scores or on their logs, whichever gives
   the raw scores the higher likelihood;
3. it counts as normal + defective images only if it beats one Gaussian by BIC, its density
   has two modes, Ashman's D >= 2, and the smaller component holds >= 2 % and >= 3 images;
4. then the gate is the score where the high component's posterior rises to 0.5, and its
   weight is the estimated defect share; otherwise no image is gated and the reason says why.

Labelled defects check it (issue 21; our decision, the paper gives no threshold): with image
scores of the labelled set's defect images (``check_with_reference``), a gate that keeps less
than ``gate_min_labelled_recall`` of them is lowered to the score that keeps that share, and a
pool the mixture calls one population is gated at that score. It needs no label of the pool.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass, replace
from typing import Any, Literal

import numpy as np
from numpy.typing import NDArray

from services.pretrain.params import (
    GATE_MIN_LABELLED_RECALL,
    GATE_MIN_SEPARATION,
    GATE_MIN_WEIGHT,
    GateMode,
    PseudoLabelParams,
)

Transform = Literal["identity", "log"]
MIN_POOL = 8  # fewer finite scores than this cannot tell a mixture from noise
MIN_COMPONENT_IMAGES = 3  # a population of one or two images is an outlier, not a mode
MIN_REFERENCES = 5  # fewer labelled defect scores than this cannot place a quantile
# Fixed EM starts (low, high quantile of the values): deterministic, and one of them lies near
# the split whether defects are a few percent, a quarter or most of the pool.
_STARTS = ((0.25, 0.75), (0.1, 0.9), (0.5, 0.98), (0.02, 0.5))
_ITERATIONS = 500
_TOLERANCE = 1e-10
_LOG_2PI = math.log(2.0 * math.pi)

Floats = NDArray[np.float64]


@dataclass(frozen=True)
class Mixture:
    """Two 1-D Gaussians, index 0 the low-mean one, fitted by EM in the ``transform`` space."""

    weights: tuple[float, float]
    means: tuple[float, float]
    stds: tuple[float, float]
    log_likelihood: float

    @property
    def separation(self) -> float:
        """Ashman's D = sqrt(2) |mu1 - mu0| / sqrt(s0^2 + s1^2) (Ashman et al. 1994)."""
        spread = math.hypot(self.stds[0], self.stds[1])
        return math.sqrt(2.0) * abs(self.means[1] - self.means[0]) / spread


@dataclass(frozen=True)
class GateDecision:
    """What the gate decided for one pool; ``threshold`` on the raw score scale or None."""

    mode: GateMode
    threshold: float | None
    reason: str
    source: str = "none"
    defect_share: float | None = None
    separation: float | None = None
    transform: Transform | None = None
    scored: int = 0
    mixture: Mixture | None = None
    references: int | None = None  # labelled defect images with a finite score, if given
    references_kept: float | None = None  # share of them the final gate keeps
    pool_kept: float | None = None  # share of the pool's images the final gate keeps

    def passes(self, score: float | None) -> bool:
        """Whether an image with this score may get boxes (no score fails a set gate)."""
        if self.threshold is None:
            return True
        return score is not None and score >= self.threshold

    def outputs(self) -> dict[str, Any]:
        """Flat ``gate_*`` fields for the job record and the summary."""
        return {
            "gate": self.mode,
            "gate_threshold": self.threshold,
            "gate_defect_share": self.defect_share,
            "gate_separation": self.separation,
            "gate_reason": self.reason,
            "gate_score_source": self.source,
            "gate_transform": self.transform,
            "gate_scored_images": self.scored,
            "gate_mixture": None if self.mixture is None else _mixture_fields(self.mixture),
            "gate_reference_images": self.references,
            "gate_reference_kept": self.references_kept,
            "gate_pool_kept": self.pool_kept,
        }


def _mixture_fields(mixture: Mixture) -> dict[str, Any]:
    return {
        "weights": list(mixture.weights),
        "means": list(mixture.means),
        "stds": list(mixture.stds),
        "log_likelihood": mixture.log_likelihood,
    }


def decide_gate(
    params: PseudoLabelParams,
    scores: Sequence[float | None],
    source: str,
    reference: Sequence[float | None] | None = None,
) -> GateDecision:
    """The gate a pseudo-label job asks for, over one score per pool image.

    Args:
        params: the job's ``gate``, ``score_gate`` and auto-gate limits.
        scores: one image score per pool image (None = unknown).
        source: where the scores come from, recorded as is.
        reference: gate 'auto' only: scores of labelled defect images on the same scale
            (``check_with_reference``); None = today's gate, unchecked.
    """
    if params.gate == "fixed":
        assert params.score_gate is not None  # checked by PseudoLabelParams
        return fixed_gate(scores, params.score_gate, source)
    if params.gate == "auto":
        decision = auto_gate(
            scores,
            source,
            min_separation=params.gate_min_separation,
            min_weight=params.gate_min_weight,
        )
        if reference is None:
            return decision
        return check_with_reference(
            decision, scores, reference, min_recall=params.gate_min_labelled_recall
        )
    return off_gate()


def off_gate(reason: str = "gate off: every image may get boxes") -> GateDecision:
    """No image-level gate (the reference code's behaviour)."""
    return GateDecision(mode="off", threshold=None, reason=reason)


def fixed_gate(scores: Sequence[float | None], threshold: float, source: str) -> GateDecision:
    """The caller's threshold; ``defect_share`` = share of the pool at or above it."""
    values = _finite(scores)
    return GateDecision(
        mode="fixed",
        threshold=threshold,
        reason=f"fixed gate: image score >= {threshold:g}",
        source=source,
        defect_share=float(np.sum(values >= threshold)) / len(scores) if scores else None,
        scored=len(values),
    )


def auto_gate(
    scores: Sequence[float | None],
    source: str,
    *,
    min_separation: float = GATE_MIN_SEPARATION,
    min_weight: float = GATE_MIN_WEIGHT,
    min_pool: int = MIN_POOL,
) -> GateDecision:
    """Gate calibrated on the pool's image-score distribution, without labels.

    A two-component Gaussian mixture is fitted by EM to the finite scores (or to their logs,
    whichever explains the raw scores better); the gate is the score at which the high
    component's posterior reaches 0.5. It applies only when the pool looks like normal and
    defective images: the mixture beats one Gaussian by BIC, its density has two modes,
    Ashman's D >= ``min_separation``, and the smaller component has weight >= ``min_weight``
    and at least ``MIN_COMPONENT_IMAGES`` images. Otherwise no image is gated (a pool in which
    every image holds a defect, like NEU-DET, is one population) and ``reason`` says why.

    Args:
        scores: one image score per pool image; None or non-finite = unknown (such images
            are left out of the fit and fail a gate that is set).
        source: where the scores come from ("scores" or "map_max"), recorded as is.
        min_separation: Ashman's D the two components must reach.
        min_weight: the smaller component's weight must reach this.
        min_pool: fewer finite scores than this: no gate.

    Returns:
        The decision; ``threshold`` None when no gate applies.
    """
    values = _finite(scores)
    start = GateDecision(mode="auto", threshold=None, reason="", source=source, scored=len(values))
    if len(values) < min_pool:
        reason = f"{len(values)} images with a finite score; the auto gate needs {min_pool}"
        return replace(start, reason=reason)
    if float(np.std(values)) <= 1e-12 * max(1.0, float(np.max(np.abs(values)))):
        return replace(start, reason="image scores are constant: no mixture")
    transform, mixture, single = _best_fit(values)
    fitted = replace(start, transform=transform, mixture=mixture, separation=mixture.separation)
    refusal = _refusal(mixture, single, len(values), min_separation, min_weight)
    cut = None if refusal is not None else posterior_crossing(mixture)
    if refusal is not None or cut is None:
        reason = refusal or "the high component's posterior never reaches 0.5 above the low mean"
        return replace(fitted, reason=reason)
    threshold = math.exp(cut) if transform == "log" else cut
    reason = (
        f"two populations (D = {mixture.separation:.2f}, high weight "
        f"{mixture.weights[1]:.3f}): boxes only where image score >= {threshold:.6g}"
    )
    return replace(fitted, threshold=threshold, defect_share=mixture.weights[1], reason=reason)


def check_with_reference(
    decision: GateDecision,
    scores: Sequence[float | None],
    reference: Sequence[float | None],
    *,
    min_recall: float = GATE_MIN_LABELLED_RECALL,
) -> GateDecision:
    """The pool's gate checked (and where needed set) by labelled defect images' scores.

    agssp-spec §3 step 2 / §6.4.3 leave the image gate to us. The mixture sees only the pool:
    on a pool where every image is defective (NEU-DET) it may still split it in two and box a
    fifth. Labelled defects are images known to hold defects, so a gate that lets less than
    ``min_recall`` of them through is too high: it is lowered to the score that keeps that
    share (order statistic of the references). A pool the mixture calls one population gets
    that gate too. A gate keeping enough of them stands; no pool label is read.

    Args:
        decision: the pool's auto gate (``auto_gate``).
        scores: the pool's image scores the decision was made on.
        reference: scores of labelled defect images, on the pool scores' scale.
        min_recall: share of the references the final gate must keep, in (0, 1].

    Returns:
        The final decision, with the reference count and the shares it keeps.
    """
    refs = np.sort(_finite(reference))
    if len(refs) < MIN_REFERENCES:
        note = f"; {len(refs)} labelled defect scores (< {MIN_REFERENCES}): not checked"
        return _with_shares(replace(decision, reason=decision.reason + note), scores, refs)
    kept = _kept(decision.threshold, refs)
    if decision.threshold is not None and kept >= min_recall:
        note = f"; labelled defects: it keeps {kept:.0%} of {len(refs)} (>= {min_recall:.0%})"
        return _with_shares(replace(decision, reason=decision.reason + note), scores, refs)
    cut = float(refs[len(refs) - math.ceil(min_recall * len(refs) - 1e-9)])
    if decision.threshold is None:
        why = f"labelled defects: {decision.reason}; gated at {cut:.6g}"
    else:
        why = (
            f"labelled defects: the mixture's gate ({decision.threshold:.6g}) kept {kept:.0%} "
            f"of {len(refs)} labelled defect images; lowered to {cut:.6g}"
        )
    reason = f"{why}, the score that keeps {min_recall:.0%} of {len(refs)} of them"
    return _with_shares(replace(decision, threshold=cut, reason=reason), scores, refs)


def _kept(threshold: float | None, values: Floats) -> float:
    """Share of ``values`` at or above ``threshold`` (all of them when there is none)."""
    if threshold is None or len(values) == 0:
        return 1.0
    return float(np.mean(values >= threshold))


def _with_shares(
    decision: GateDecision, scores: Sequence[float | None], refs: Floats
) -> GateDecision:
    pool = sum(1 for s in scores if decision.passes(s)) / len(scores) if scores else None
    return replace(
        decision,
        references=len(refs),
        references_kept=_kept(decision.threshold, refs) if len(refs) else None,
        pool_kept=pool,
    )


def _finite(scores: Sequence[float | None]) -> Floats:
    values = np.array([np.nan if s is None else s for s in scores], dtype=np.float64)
    return values[np.isfinite(values)]


def _refusal(
    mixture: Mixture, single: float, count: int, min_separation: float, min_weight: float
) -> str | None:
    # BIC: 5 free parameters against 2; guards against EM carving a tail out of one population.
    bic_gain = 2.0 * (mixture.log_likelihood - single) - 3.0 * math.log(count)
    if bic_gain <= 0:
        return "one population: two components do not beat one Gaussian by BIC"
    if not is_bimodal(mixture):
        return "one population: the fitted score density has a single mode"
    if mixture.separation < min_separation:
        return f"one population: Ashman's D {mixture.separation:.2f} < {min_separation:g}"
    if min(mixture.weights) < min_weight:
        return f"one population: smaller component weight {min(mixture.weights):.3f}"
    if min(mixture.weights) * count < MIN_COMPONENT_IMAGES:
        return f"the smaller component holds fewer than {MIN_COMPONENT_IMAGES} images"
    return None


def _best_fit(values: Floats) -> tuple[Transform, Mixture, float]:
    """The mixture (identity or log space) with the higher likelihood of the raw scores.

    Anomaly scores are often positive and right-skewed (distances, map maxima), so each
    population can be closer to log-normal than normal. Log-likelihoods are compared on the
    raw scale (Jacobian -sum(log x)), the fair test between the two models; log is tried only
    when every score is positive.
    """
    best: tuple[Transform, Mixture, float] = ("identity", fit_mixture(values), _single(values))
    if np.all(values > 0):
        logs = np.log(values)
        jacobian = float(np.sum(logs))
        mixture = fit_mixture(logs)
        if mixture.log_likelihood - jacobian > best[1].log_likelihood:
            best = ("log", mixture, _single(logs))
    return best


def _single(values: Floats) -> float:
    """Log-likelihood of one Gaussian at its MAP estimate (the same prior as the mixture)."""
    prior = _Prior.of(values, components=1)
    mean, var = prior.update(float(len(values)), float(np.sum(values)), values)
    z = (values - mean) / math.sqrt(var)
    return float(np.sum(-0.5 * z * z - 0.5 * math.log(var) - 0.5 * _LOG_2PI))


@dataclass(frozen=True)
class _Prior:
    """Conjugate prior of mclust's ``priorControl`` (Fraley & Raftery 2007), 1-D.

    Plain maximum likelihood lets a component collapse onto one or two scores (infinite
    likelihood, a huge Ashman's D); this prior keeps every variance away from zero with the
    weight of about three pseudo-observations, and barely moves a component of many images.
    """

    mean: float
    scale: float  # zeta^2 = var(data) / G^2 (G components, d = 1)
    shrink: float = 0.01  # kappa_P
    dof: float = 3.0  # nu_P = d + 2

    @classmethod
    def of(cls, values: Floats, components: int) -> _Prior:
        spread = max(float(np.var(values)), 1e-24)
        return cls(mean=float(np.mean(values)), scale=spread / components**2)

    def update(
        self, mass: float, total: float, values: Floats, resp: Floats | None = None
    ) -> tuple[float, float]:
        """MAP (mean, variance) of a component with responsibilities ``resp`` (N,)."""
        weight = np.ones_like(values) if resp is None else resp
        centre = total / max(mass, 1e-300)
        scatter = float(np.sum(weight * (values - centre) ** 2))
        drift = self.shrink * mass / (self.shrink + mass) * (centre - self.mean) ** 2
        mean = (mass * centre + self.shrink * self.mean) / (mass + self.shrink)
        var = (self.scale + scatter + drift) / (self.dof + mass + 3.0)
        return mean, var


def fit_mixture(values: Floats) -> Mixture:
    """Two-component 1-D Gaussian mixture by EM (MAP, mclust's prior), best of fixed starts.

    Args:
        values: (N,) finite values, N >= 2.

    Returns:
        The fit with the highest log-likelihood; component 0 has the lower mean.
    """
    prior = _Prior.of(values, components=2)
    fits = [_em(values, prior, *_start(values, low, high)) for low, high in _STARTS]
    return max(fits, key=lambda m: m.log_likelihood)


def _start(values: Floats, low: float, high: float) -> tuple[Floats, Floats, Floats]:
    means = np.quantile(values, [low, high])
    std = max(float(np.std(values)) / 2.0, 1e-12)
    return np.array([0.5, 0.5]), means.astype(np.float64), np.array([std, std])


def _em(values: Floats, prior: _Prior, weights: Floats, means: Floats, stds: Floats) -> Mixture:
    previous = -math.inf
    for _ in range(_ITERATIONS):
        resp, likelihood = _responsibilities(values, weights, means, stds)
        mass = resp.sum(axis=0)
        weights = mass / len(values)
        fits = [
            prior.update(float(mass[k]), float(resp[:, k] @ values), values, resp[:, k])
            for k in (0, 1)
        ]
        means = np.array([m for m, _ in fits])
        stds = np.sqrt([v for _, v in fits])
        if abs(likelihood - previous) <= _TOLERANCE * abs(likelihood):
            break
        previous = likelihood
    _, likelihood = _responsibilities(values, weights, means, stds)
    order = np.argsort(means, kind="stable")
    return Mixture(
        weights=(float(weights[order[0]]), float(weights[order[1]])),
        means=(float(means[order[0]]), float(means[order[1]])),
        stds=(float(stds[order[0]]), float(stds[order[1]])),
        log_likelihood=likelihood,
    )


def _responsibilities(
    values: Floats, weights: Floats, means: Floats, stds: Floats
) -> tuple[Floats, float]:
    """(N, 2) posteriors and the total log-likelihood, computed in log space."""
    z = (values[:, None] - means) / stds
    log_joint = -0.5 * z * z - np.log(stds) - 0.5 * _LOG_2PI + np.log(np.maximum(weights, 1e-300))
    top = log_joint.max(axis=1, keepdims=True)
    log_norm = top + np.log(np.exp(log_joint - top).sum(axis=1, keepdims=True))
    return np.exp(log_joint - log_norm), float(log_norm.sum())


def is_bimodal(mixture: Mixture, points: int = 512) -> bool:
    """Whether the mixture density dips between the component means (two modes).

    Every mode of a Gaussian mixture lies between its extreme means, so a grid over
    [mu0, mu1] finds them. Ashman's D alone does not imply two modes when the weights differ:
    a small wide component on one flank of a skewed population gives D > 2 and one mode.
    """
    grid = np.linspace(mixture.means[0], mixture.means[1], points)
    density = np.zeros_like(grid)
    for w, m, sd in zip(mixture.weights, mixture.means, mixture.stds, strict=True):
        density += w * np.exp(-0.5 * ((grid - m) / sd) ** 2) / sd
    left = np.maximum.accumulate(density)
    right = np.maximum.accumulate(density[::-1])[::-1]
    return bool(np.any(np.minimum(left, right) - density > 1e-6 * float(np.max(density))))


def posterior_crossing(mixture: Mixture) -> float | None:
    """Smallest point above the low mean where the high component's posterior rises to 0.5.

    Log posterior odds are quadratic in x: a x^2 + b x + c = 0 at the crossing.

    Returns:
        The crossing in the mixture's space, or None when there is none.
    """
    (w0, w1), (m0, m1), (s0, s1) = mixture.weights, mixture.means, mixture.stds
    a = 0.5 / s0**2 - 0.5 / s1**2
    b = m1 / s1**2 - m0 / s0**2
    c = 0.5 * m0**2 / s0**2 - 0.5 * m1**2 / s1**2 + math.log(w1 / s1) - math.log(w0 / s0)
    if a == 0 and b == 0:  # one and the same component twice
        return None
    if abs(a) <= 1e-12 * abs(b):  # equal spreads: the odds are linear in x
        roots = [-c / b]
    else:
        roots = [float(r.real) for r in np.roots([a, b, c]) if abs(r.imag) <= 1e-9 * abs(r)]
    # rising = where the odds turn in the high component's favour
    above = [r for r in roots if r > m0 and 2.0 * a * r + b > 0]
    return min(above) if above else None
