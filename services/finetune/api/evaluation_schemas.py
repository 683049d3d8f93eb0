"""Response schemas of the evaluation and review-export routes (``api.evaluation_routes``)."""

from __future__ import annotations

from pydantic import BaseModel, ConfigDict, Field

from services.finetune.ml.error_analysis import ErrorAnalysis
from services.finetune.ml.error_compare import ImageDifference
from services.finetune.ml.pr_curves import PrCurves


class ClassFigures(BaseModel):
    """AP of one class; None when the split holds no box of it."""

    map50: float | None
    map50_95: float | None
    num_gt: int


class EvaluationDocument(BaseModel):
    """A saved evaluation of a model version on a dataset split.

    Evaluations saved before per-image records were kept have no ``conf``, ``pr_curves``
    or ``errors``.
    """

    model_config = ConfigDict(extra="allow", protected_namespaces=())

    model: str = Field(description="'name:version' of the model evaluated")
    dataset: str = Field(description="'name:version' of the dataset")
    split: str
    images: int
    imgsz: int | None = None
    map50: float = Field(description="COCO mAP@0.5 over the classes with ground truth")
    map50_95: float
    per_class: dict[str, ClassFigures] = Field(description="AP@0.5 and AP@0.5:0.95 per class")
    evaluated_at: str | None = None
    conf: float | None = Field(None, description="the score threshold of `errors`")
    pr_curves: PrCurves | None = None
    errors: ErrorAnalysis | None = Field(
        None, description="misses, false alarms, confusion matrix and boxes per image"
    )


class EvaluationSide(BaseModel):
    """One of two compared evaluations, in totals."""

    model_config = ConfigDict(protected_namespaces=())

    model: str
    dataset: str
    split: str
    map50: float
    map50_95: float
    conf: float | None
    misses: int
    false_alarms: int
    evaluated_at: str | None


class EvaluationComparison(BaseModel):
    """Two model versions on the same split: every image, largest difference first."""

    a: EvaluationSide
    b: EvaluationSide
    images: list[ImageDifference]
