"""Precision-recall curves per class at IoU 0.5, as the evaluation document stores them.

The points are COCOeval's own (``EvalResult.pr50``): interpolated precision at the 101
recall thresholds 0.00, 0.01, .., 1.00 (to 6 places), so the mean of a class's precision
list is its AP@0.5. A point past the highest recall the class reaches has precision 0.
"""

from __future__ import annotations

from pydantic import BaseModel, Field

from services.finetune.ml.evaluate import EvalResult
from shared.schemas.evaluation import RECALL_THRESHOLDS


class PrCurve(BaseModel):
    """One class: precision and the detection score at each recall threshold."""

    precision: list[float]
    score: list[float] = Field(description="score where that recall is first reached (0: never)")
    max_recall: float = Field(description="the highest recall threshold reached")


class PrCurves(BaseModel):
    """Curves of the classes with ground truth, on one shared recall axis."""

    iou: float = 0.5
    recall: list[float]
    classes: dict[str, PrCurve]


def pr_curves(result: EvalResult, classes: list[str]) -> PrCurves:
    """The curves of ``result`` (classes with no ground-truth box are left out)."""
    recall = [round(float(r), 2) for r in RECALL_THRESHOLDS]
    curves: dict[str, PrCurve] = {}
    if result.pr50 is not None:
        for k, name in enumerate(classes):
            ap = result.per_class.get(name)
            if ap is None or ap.map50 is None:
                continue
            precision = [round(float(p), 6) for p in result.pr50.precision[:, k]]
            score = [round(float(s), 6) for s in result.pr50.scores[:, k]]
            reached = [r for r, p in zip(recall, precision, strict=True) if p > 0]
            curves[name] = PrCurve(
                precision=precision, score=score, max_recall=max(reached, default=0.0)
            )
    return PrCurves(recall=recall, classes=curves)
