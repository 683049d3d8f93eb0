"""The scoring methods (KeAD, WinCLIP, ToCoAD) behind one protocol, in one table.

Each method declares what it needs (``Needs``); the engine gathers exactly that, then lets
the method score. Nothing else tells the methods apart: no caller tests a mode's name, so a
method that declares no CLIP encoder is never given one (ToCoAD runs where no CLIP weights
were ever placed), and a new method is one more row in ``METHODS``.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Protocol, TypeVar

import numpy as np
from torch import Tensor

from services.anomaly_map.ml.outputs import AnomalyScorer, MemoryBank
from services.anomaly_map.ml.tocoad.model import TocoadModel
from services.anomaly_map.params import Method
from services.anomaly_map.runtime.clip import ScorerSet
from shared.errors import InvalidInputError

T = TypeVar("T")


@dataclass(frozen=True)
class Needs:
    """What a method needs from the engine.

    Attributes:
        clip: the CLIP encoder at all (loading it may answer 503 without weights).
        text: text features of the category's prompts.
        references: the few-shot memory bank of the category's reference images (zero-shot
            when the category has none).
        tiling: can score a large image in overlapping tiles.
        fitted_model: a fitted ToCoAD model of the category version (names the model).
    """

    clip: bool
    text: bool
    references: bool
    tiling: bool
    fitted_model: bool


@dataclass(frozen=True)
class MethodInputs:
    """What the engine gathered for one call, as the method's ``needs`` asked (else None)."""

    scorer: AnomalyScorer | None = None
    text: Tensor | None = None
    bank: MemoryBank | None = None
    fitted: TocoadModel | None = None


@dataclass(frozen=True)
class BatchScores:
    """Scores of a batch of images of one category.

    Attributes:
        maps: float32 (B, G, G) raw fused maps (agssp-spec §1.9); (B, S, S) for ToCoAD.
        image_scores: float32 (B,) final image scores.
        zero_shot_scores: float32 (B,) text-only scores s0; None for methods without text.
    """

    maps: np.ndarray
    image_scores: np.ndarray
    zero_shot_scores: np.ndarray | None


class ScoringMethod(Protocol):
    """One way to score images of a category."""

    @property
    def name(self) -> Method:
        """The mode string of requests, categories and jobs."""
        ...

    @property
    def needs(self) -> Needs:
        """What the engine must gather before ``score``."""
        ...

    def clip_scorer(self, scorers: ScorerSet) -> AnomalyScorer | None:
        """This method's scorer on the shared CLIP encoder; None when it uses no CLIP."""
        ...

    def score(self, inputs: MethodInputs, images: Sequence[np.ndarray]) -> BatchScores:
        """Whole-image scores of uint8 (H, W, 3) images (runs on the model thread)."""
        ...


def required(value: T | None, what: str) -> T:
    """``value``, which the method's declared needs guarantee the engine gathered."""
    if value is None:
        raise RuntimeError(f"the engine did not gather {what}; the method's needs are wrong")
    return value


@dataclass(frozen=True)
class ClipMethod:
    """A method on the shared CLIP encoder (KeAD, WinCLIP): text features, optional bank."""

    name: Method
    pick: Callable[[ScorerSet], AnomalyScorer]
    needs: Needs = Needs(clip=True, text=True, references=True, tiling=True, fitted_model=False)

    def clip_scorer(self, scorers: ScorerSet) -> AnomalyScorer | None:
        return self.pick(scorers)

    def score(self, inputs: MethodInputs, images: Sequence[np.ndarray]) -> BatchScores:
        scorer = required(inputs.scorer, "a CLIP scorer")
        text = required(inputs.text, "text features")
        out = scorer.score(scorer.preprocess(list(images)), text, inputs.bank)
        return BatchScores(
            maps=out.anomaly_map.float().cpu().numpy(),
            image_scores=out.image_score.float().cpu().numpy(),
            zero_shot_scores=out.zero_shot_image_score.float().cpu().numpy(),
        )


@dataclass(frozen=True)
class FittedMethod:
    """ToCoAD: a model fitted on the category's normal images; no CLIP, no text, no tiles."""

    name: Method
    needs: Needs = Needs(clip=False, text=False, references=False, tiling=False, fitted_model=True)

    def clip_scorer(self, scorers: ScorerSet) -> AnomalyScorer | None:
        return None

    def score(self, inputs: MethodInputs, images: Sequence[np.ndarray]) -> BatchScores:
        model = required(inputs.fitted, "a fitted ToCoAD model")
        maps, scores = model.score(list(images))
        return BatchScores(maps.astype(np.float32), scores.astype(np.float32), None)


def _kead(scorers: ScorerSet) -> AnomalyScorer:
    return scorers.kead


def _winclip(scorers: ScorerSet) -> AnomalyScorer:
    return scorers.winclip


METHODS: Mapping[str, ScoringMethod] = {
    method.name: method
    for method in (
        ClipMethod("kead", _kead),
        ClipMethod("winclip", _winclip),
        FittedMethod("tocoad"),
    )
}


def _listed(names: Sequence[str]) -> str:
    return names[0] if len(names) == 1 else f"{', '.join(names[:-1])} or {names[-1]}"


def method_for(name: str) -> ScoringMethod:
    """The method called ``name``; 422 ``mode_unavailable`` for an unknown one."""
    method = METHODS.get(name)
    if method is None:
        raise InvalidInputError(
            f"mode {name!r} is unknown; use {_listed(list(METHODS))}", code="mode_unavailable"
        )
    return method


def names_with(need: Callable[[Needs], bool]) -> list[str]:
    """Names of the methods whose needs satisfy ``need`` (for messages such as tiling's)."""
    return [name for name, method in METHODS.items() if need(method.needs)]
