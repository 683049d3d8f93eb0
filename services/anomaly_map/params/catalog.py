"""The anomaly-map methods, one row each: the only list of them in the service.

Torch-free on purpose: the request schemas (``params.Method``), readiness (``/readyz``
``details.methods``, which the console's method lists read) and the engine's behaviour rows
(``runtime.methods``) are all built from ``CATALOG``. Adding a method is one folder
(``ml/<name>/`` with its scorer) and one row here; ``tests/unit/anomaly_map/test_catalog.py``
adds a method that way and checks that every one of those places takes it.
"""

from __future__ import annotations

import importlib
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any


@dataclass(frozen=True)
class Needs:
    """What a method needs from the engine.

    Attributes:
        clip: the CLIP encoder at all (loading it may answer 503 without weights).
        text: text features of the category's prompts.
        references: the few-shot memory bank of the category's reference images (zero-shot
            when the category has none).
        tiling: can score a large image in overlapping tiles.
        fitted_model: a fitted model of the category version (ToCoAD's fit job makes it).
    """

    clip: bool
    text: bool
    references: bool
    tiling: bool
    fitted_model: bool


CLIP_NEEDS = Needs(clip=True, text=True, references=True, tiling=True, fitted_model=False)
FITTED_NEEDS = Needs(clip=False, text=False, references=False, tiling=False, fitted_model=True)


@dataclass(frozen=True)
class MethodSpec:
    """One anomaly-map method.

    Attributes:
        name: the ``mode`` string of requests, categories and jobs.
        label: its name for people (console lists).
        needs: what the engine gathers before it scores.
        scorer: ``module:Class`` of its scorer, imported only when first used. A CLIP method's
            class is built on the shared ``ClipBundle``; a fitted method's class is the
            fitted model (``from_state``), loaded per category version.
        summary: one line for readiness and documentation.
    """

    name: str
    label: str
    needs: Needs
    scorer: str
    summary: str

    def load_scorer(self) -> Any:
        """The scorer class (imports its module: torch and the method's own code)."""
        module, _, attribute = self.scorer.partition(":")
        return getattr(importlib.import_module(module), attribute)


CATALOG: Mapping[str, MethodSpec] = {
    spec.name: spec
    for spec in (
        MethodSpec(
            "kead", "KeAD", CLIP_NEEDS, "services.anomaly_map.ml.kead.scorer:KeadModel",
            "CLIP V-V features against defect-description prompts and a few-shot bank",
        ),
        MethodSpec(
            "winclip", "WinCLIP", CLIP_NEEDS, "services.anomaly_map.ml.winclip.scorer:WinClipModel",
            "sliding-window CLIP scoring against the same prompts and bank",
        ),
        MethodSpec(
            "tocoad", "ToCoAD", FITTED_NEEDS, "services.anomaly_map.ml.tocoad.model:TocoadModel",
            "two-stage contrastive model fitted on the category's images; no downloaded weights",
        ),
    )
}  # fmt: skip


def method_names() -> list[str]:
    """Every method's name, in the catalogue's order."""
    return list(CATALOG)
