"""The scoring methods (KeAD, WinCLIP, ToCoAD) behind one protocol, built from the catalogue.

Each method declares what it needs (``params.catalog.Needs``); the engine gathers exactly that,
then lets the method score. Nothing else tells the methods apart: no caller tests a mode's
name, so a method that declares no CLIP encoder is never given one (ToCoAD runs where no CLIP
weights were ever placed), and a new method is one more row in ``params.catalog.CATALOG``.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from typing import Protocol, TypeVar

import numpy as np
from torch import Tensor

from services.anomaly_map.ml.clip.outputs import AnomalyScorer, MemoryBank
from services.anomaly_map.ml.tocoad.model import TocoadModel
from services.anomaly_map.params.catalog import CATALOG, MethodSpec, Needs
from services.anomaly_map.runtime.clip import ScorerSet
from shared.errors import InvalidInputError

T = TypeVar("T")


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
    def name(self) -> str:
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
class _Row:
    """A catalogue row: its name and needs are the spec's."""

    spec: MethodSpec

    @property
    def name(self) -> str:
        return self.spec.name

    @property
    def needs(self) -> Needs:
        return self.spec.needs


@dataclass(frozen=True)
class ClipMethod(_Row):
    """A method on the shared CLIP encoder (KeAD, WinCLIP): text features, optional bank."""

    def clip_scorer(self, scorers: ScorerSet) -> AnomalyScorer | None:
        return scorers[self.name]

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
class FittedMethod(_Row):
    """A method fitted per category version (ToCoAD): no CLIP, no text, no tiles."""

    def clip_scorer(self, scorers: ScorerSet) -> AnomalyScorer | None:
        return None

    def score(self, inputs: MethodInputs, images: Sequence[np.ndarray]) -> BatchScores:
        model = required(inputs.fitted, "a fitted model")
        maps, scores = model.score(list(images))
        return BatchScores(maps.astype(np.float32), scores.astype(np.float32), None)


def behaviour(spec: MethodSpec) -> ScoringMethod:
    """How the engine runs a catalogue row: on the CLIP encoder, or a fitted model."""
    return FittedMethod(spec) if spec.needs.fitted_model else ClipMethod(spec)


class _Methods(Mapping[str, ScoringMethod]):
    """``CATALOG``'s rows as behaviours, read through on every lookup (no second list)."""

    def __getitem__(self, name: str) -> ScoringMethod:
        return behaviour(CATALOG[name])

    def __iter__(self) -> Iterator[str]:
        return iter(CATALOG)

    def __len__(self) -> int:
        return len(CATALOG)


METHODS: Mapping[str, ScoringMethod] = _Methods()


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
