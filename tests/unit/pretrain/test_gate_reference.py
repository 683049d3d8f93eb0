"""Labelled defect images check the auto gate of pseudo boxes (issue 21 item 3)."""

from __future__ import annotations

import numpy as np
import pytest
from pydantic import ValidationError

from services.pretrain.ml.gate import (
    MIN_REFERENCES,
    auto_gate,
    check_with_reference,
    decide_gate,
)
from services.pretrain.params import PseudoLabelParams

SOURCE = {"category": "steel", "images_prefix": "img/", "maps_prefix": "maps/"}


def _bimodal(n: int = 400, share: float = 0.25, seed: int = 0) -> list[float]:
    """75 % N(0.2, 0.05) and 25 % N(0.8, 0.05): the mixture gates near 0.5."""
    rng = np.random.default_rng(seed)
    high = round(n * share)
    return [*rng.normal(0.2, 0.05, n - high), *rng.normal(0.8, 0.05, high)]


def _kept(threshold: float | None, values: list[float]) -> float:
    return float(np.mean([threshold is None or v >= threshold for v in values]))


def test_labelled_defects_scoring_across_both_populations_lower_the_gate() -> None:
    # given: a pool of two populations, and 50 labelled defects of which 60 % score like the
    # pool's low population (subtle defects the mixture calls normal)
    scores = _bimodal()
    rng = np.random.default_rng(1)
    reference = [*rng.normal(0.2, 0.05, 30), *rng.normal(0.8, 0.05, 20)]
    mixture = auto_gate(scores, "scores")
    assert mixture.threshold is not None
    assert _kept(mixture.threshold, reference) == pytest.approx(0.4)
    # when
    gate = check_with_reference(mixture, scores, reference, min_recall=0.8)
    # then: lowered to the score that keeps 80 % of the references
    assert gate.threshold is not None
    assert gate.threshold < mixture.threshold
    assert _kept(gate.threshold, reference) == pytest.approx(0.8)
    assert gate.references == 50
    assert gate.references_kept == pytest.approx(0.8)
    assert gate.pool_kept == pytest.approx(_kept(gate.threshold, scores))
    assert gate.pool_kept is not None
    assert gate.pool_kept > 0.25
    assert gate.reason.startswith("labelled defects: the mixture's gate")
    assert "kept 40% of 50 labelled defect images" in gate.reason
    assert gate.reason.endswith("the score that keeps 80% of 50 of them")
    assert gate.mixture == mixture.mixture  # the fit is kept for the record


def test_labelled_defects_above_the_mixtures_gate_leave_it_unchanged() -> None:
    # given
    scores = _bimodal()
    reference = list(np.random.default_rng(2).normal(0.8, 0.05, 40))
    mixture = auto_gate(scores, "scores")
    # when
    gate = check_with_reference(mixture, scores, reference)
    # then
    assert gate.threshold == mixture.threshold
    assert gate.references_kept == pytest.approx(1.0)
    assert gate.references == 40
    assert gate.pool_kept == pytest.approx(0.25, abs=0.01)
    assert gate.reason.startswith(mixture.reason)
    assert gate.reason.endswith("labelled defects: it keeps 100% of 40 (>= 80%)")


def test_without_references_the_decision_is_todays() -> None:
    # given
    scores = _bimodal(seed=5)
    params = PseudoLabelParams(**SOURCE, gate="auto")
    # when
    decided = decide_gate(params, scores, "scores")
    # then
    assert decided == auto_gate(scores, "scores")
    assert decided.outputs()["gate_reference_images"] is None
    assert decided.outputs()["gate_reference_kept"] is None


def test_a_one_population_pool_with_references_gets_the_quantile_gate() -> None:
    # given: every pool image defective (NEU-DET): the mixture sees one population
    rng = np.random.default_rng(11)
    scores = [float(s) for s in rng.lognormal(0.0, 0.5, 600)]
    reference = [float(s) for s in rng.lognormal(0.0, 0.5, 100)]
    params = PseudoLabelParams(**SOURCE, gate="auto", gate_min_labelled_recall=0.9)
    assert auto_gate(scores, "scores").threshold is None
    # when
    gate = decide_gate(params, scores, "scores", reference)
    # then: 90 % of the references pass, and about 90 % of the pool (same distribution)
    assert gate.threshold == pytest.approx(float(np.sort(reference)[10]))
    assert gate.references_kept == pytest.approx(0.9)
    assert gate.pool_kept == pytest.approx(0.9, abs=0.05)
    assert gate.reason.startswith("labelled defects: one population")
    assert gate.outputs()["gate_pool_kept"] == gate.pool_kept


def test_too_few_references_leave_the_gate_unchecked() -> None:
    scores = _bimodal()
    mixture = auto_gate(scores, "scores")
    gate = check_with_reference(mixture, scores, [0.1] * (MIN_REFERENCES - 1) + [None])
    assert gate.threshold == mixture.threshold
    assert gate.references == MIN_REFERENCES - 1
    assert "not checked" in gate.reason


def test_references_do_not_touch_off_or_fixed_gates() -> None:
    scores = _bimodal()
    fixed = PseudoLabelParams(**SOURCE, gate="fixed", score_gate=0.6)
    assert decide_gate(fixed, scores, "scores", [0.1] * 20).threshold == 0.6


@pytest.mark.parametrize("recall", [0.0, -0.1, 1.01, float("nan")])
def test_the_labelled_recall_is_range_checked(recall: float) -> None:
    with pytest.raises(ValidationError):
        PseudoLabelParams(**SOURCE, gate="auto", gate_min_labelled_recall=recall)


@pytest.mark.parametrize("gate", ["off", "fixed"])
def test_a_reference_prefix_needs_the_auto_gate(gate: str) -> None:
    extra = {"score_gate": 0.5} if gate == "fixed" else {}
    with pytest.raises(ValidationError, match="reference_maps_prefix applies to gate 'auto'"):
        PseudoLabelParams(**SOURCE, gate=gate, reference_maps_prefix="maps/ref/", **extra)
