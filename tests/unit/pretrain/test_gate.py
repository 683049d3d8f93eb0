"""The image-level gate of pseudo boxes: a mixture of normal and defective scores, or not."""

from __future__ import annotations

import math
from collections.abc import Callable

import numpy as np
import pytest
from pydantic import ValidationError

from services.pretrain.ml.gate import (
    MIN_POOL,
    Mixture,
    auto_gate,
    decide_gate,
    fit_mixture,
    fixed_gate,
    is_bimodal,
    posterior_crossing,
)
from services.pretrain.ml.pseudo_boxes import extract_boxes
from services.pretrain.params import PseudoLabelParams

Draw = Callable[[np.random.Generator], np.ndarray]
SOURCE = {"category": "steel", "images_prefix": "img/", "maps_prefix": "maps/"}


def _bimodal(n: int = 400, share: float = 0.25, seed: int = 0) -> list[float]:
    """75 % N(0.2, 0.05) 'normal' and 25 % N(0.8, 0.05) 'defective' scores."""
    rng = np.random.default_rng(seed)
    high = round(n * share)
    return [*rng.normal(0.2, 0.05, n - high), *rng.normal(0.8, 0.05, high)]


def test_a_bimodal_pool_is_gated_near_the_crossing_and_keeps_the_defect_share() -> None:
    # given: the weighted densities cross at 0.5 + 0.05^2 ln(3) / 0.6 = 0.5046
    scores = _bimodal()
    # when
    gate = auto_gate(scores, "scores")
    # then
    assert gate.threshold == pytest.approx(0.5046, abs=0.03)
    assert gate.defect_share == pytest.approx(0.25, abs=0.01)
    assert gate.separation is not None
    assert gate.separation > 8
    assert np.mean([gate.passes(s) for s in scores]) == pytest.approx(0.25, abs=0.01)
    assert (gate.mode, gate.source, gate.transform, gate.scored) == (
        "auto",
        "scores",
        "identity",
        400,
    )
    assert gate.reason.startswith("two populations")


@pytest.mark.parametrize("share", [0.05, 0.5, 0.9])
def test_the_gate_follows_the_defect_share_of_the_pool(share: float) -> None:
    scores = _bimodal(600, share, seed=3)
    gate = auto_gate(scores, "scores")
    assert gate.threshold is not None
    assert np.mean([gate.passes(s) for s in scores]) == pytest.approx(share, abs=0.01)


def test_the_fit_is_deterministic() -> None:
    scores = _bimodal(seed=7)
    assert auto_gate(scores, "scores") == auto_gate(list(scores), "scores")


@pytest.mark.parametrize(
    "draw",
    [
        lambda r: r.normal(0.5, 0.1, 600),
        lambda r: r.lognormal(0.0, 0.5, 600),  # every image defective: one skewed population
        lambda r: 0.5 + 0.1 * r.standard_t(5, 600),
    ],
    ids=["normal", "lognormal", "student-t"],
)
def test_a_unimodal_pool_gets_no_gate(draw: Draw) -> None:
    # given
    scores = [float(s) for s in draw(np.random.default_rng(11))]
    # when
    gate = auto_gate(scores, "scores")
    # then
    assert gate.threshold is None
    assert gate.defect_share is None
    assert gate.reason.startswith("one population")
    assert all(gate.passes(s) for s in scores)


def test_positive_skewed_populations_are_fitted_on_the_log_scale() -> None:
    # given: 80 % log-normal around 0.05 and 20 % around 0.6, both with a long right tail
    rng = np.random.default_rng(5)
    scores = [*rng.lognormal(math.log(0.05), 0.3, 480), *rng.lognormal(math.log(0.6), 0.3, 120)]
    # when
    gate = auto_gate(scores, "map_max")
    # then
    assert gate.transform == "log"
    assert gate.threshold is not None
    assert 0.1 < gate.threshold < 0.4
    assert gate.defect_share == pytest.approx(0.2, abs=0.02)
    assert gate.source == "map_max"


def test_constant_scores_get_no_gate() -> None:
    gate = auto_gate([0.7] * 50, "scores")
    assert (gate.threshold, gate.reason) == (None, "image scores are constant: no mixture")


def test_a_tiny_pool_gets_no_gate_and_says_why() -> None:
    gate = auto_gate([0.1, 0.1, 0.1, 0.9, 0.9, 0.9, 0.9], "scores")
    assert gate.threshold is None
    assert gate.reason == f"7 images with a finite score; the auto gate needs {MIN_POOL}"


def test_nan_and_missing_scores_are_left_out_of_the_fit_and_fail_the_gate() -> None:
    # given
    scores: list[float | None] = [*_bimodal(), math.nan, None, math.inf]
    # when
    gate = auto_gate(scores, "scores")
    # then
    assert gate.scored == 400
    assert gate.threshold == pytest.approx(0.5046, abs=0.03)
    assert not any(gate.passes(s) for s in (math.nan, None))


def test_only_nan_scores_count_as_a_tiny_pool() -> None:
    gate = auto_gate([math.nan] * 20, "scores")
    assert gate.threshold is None
    assert gate.scored == 0


def test_a_component_of_two_outliers_is_not_a_population() -> None:
    gate = auto_gate([*np.linspace(0.1, 0.2, 30), 0.9, 0.95], "scores")
    assert gate.threshold is None


def test_the_posterior_crossing_of_equal_spreads_is_the_textbook_one() -> None:
    # given: x* = (m0 + m1) / 2 + s^2 ln(w0 / w1) / (m1 - m0)
    mixture = Mixture((0.75, 0.25), (0.2, 0.8), (0.05, 0.05), 0.0)
    # when / then
    assert posterior_crossing(mixture) == pytest.approx(0.5 + 0.0025 * math.log(3) / 0.6)


def test_the_crossing_with_unequal_spreads_is_the_rising_root_above_the_low_mean() -> None:
    mixture = Mixture((0.5, 0.5), (0.0, 1.0), (0.1, 0.4), 0.0)
    cut = posterior_crossing(mixture)
    assert cut is not None
    assert 0.0 < cut < 1.0
    for x, high in ((cut - 1e-6, False), (cut + 1e-6, True)):
        dens = [
            w * math.exp(-0.5 * ((x - m) / s) ** 2) / s
            for w, m, s in zip(mixture.weights, mixture.means, mixture.stds, strict=True)
        ]
        assert (dens[1] > dens[0]) is high


def test_two_modes_need_a_dip_in_the_density() -> None:
    assert is_bimodal(Mixture((0.5, 0.5), (0.0, 1.0), (0.1, 0.1), 0.0))
    assert not is_bimodal(Mixture((0.9, 0.1), (0.0, 1.0), (0.6, 0.6), 0.0))


def test_fit_mixture_orders_components_by_mean() -> None:
    fit = fit_mixture(np.asarray(_bimodal(share=0.7)))
    assert fit.means[0] < fit.means[1]
    assert fit.weights[1] == pytest.approx(0.7, abs=0.01)


def test_the_fixed_gate_counts_the_share_at_or_above_it() -> None:
    gate = fixed_gate([0.1, 0.5, 0.9, None], 0.5, "scores")
    assert (gate.threshold, gate.defect_share, gate.scored) == (0.5, 0.5, 3)


def test_the_job_parameters_choose_the_gate() -> None:
    # given
    off = PseudoLabelParams(**SOURCE)
    fixed = PseudoLabelParams(**SOURCE, score_gate=0.5)
    auto = PseudoLabelParams(**SOURCE, gate="auto")
    scores = _bimodal()
    # when / then
    assert (off.gate, fixed.gate, auto.gate) == ("off", "fixed", "auto")
    assert decide_gate(off, scores, "none").threshold is None
    assert decide_gate(fixed, scores, "scores").threshold == 0.5
    assert decide_gate(auto, scores, "scores").threshold == pytest.approx(0.5046, abs=0.03)


@pytest.mark.parametrize(
    "fields",
    [{"gate": "fixed"}, {"gate": "auto", "score_gate": 0.5}, {"gate": "off", "score_gate": 0.5}],
)
def test_a_score_gate_belongs_to_the_fixed_gate_only(fields: dict[str, object]) -> None:
    with pytest.raises(ValidationError):
        PseudoLabelParams(**SOURCE, **fields)  # type: ignore[arg-type]


def test_the_stored_params_of_a_fixed_gate_validate_again() -> None:
    stored = PseudoLabelParams(**SOURCE, score_gate=0.5).model_dump(mode="json")
    assert PseudoLabelParams.model_validate(stored).gate == "fixed"


def test_extract_boxes_treats_a_nan_score_as_failing_the_gate() -> None:
    amap = np.zeros((10, 10), np.float32)
    amap[4:6, 4:6] = 1.0
    assert extract_boxes(amap, 100, 100, 0.5, image_score=math.nan, score_gate=0.4) == []
    assert extract_boxes(amap, 100, 100, 0.5, image_score=0.4, score_gate=0.4) != []
