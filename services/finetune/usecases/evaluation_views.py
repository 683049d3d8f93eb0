"""Reading saved evaluations back: one model version's on a split, and two side by side.

Torch-free: the documents were written by evaluation jobs (``usecases.evaluations``); this
module only finds, checks and compares them for the API and the console.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from services.finetune.ml.error_analysis import ErrorAnalysis
from services.finetune.ml.error_compare import ImageDifference, compare_errors
from services.finetune.stores.datasets import DatasetCatalog
from services.finetune.stores.models import ModelRegistry
from services.finetune.usecases.evaluations import evaluation_name
from shared.errors import InvalidInputError, NotFoundError
from shared.schemas.artifacts import ArtifactRef


@dataclass(frozen=True)
class Comparison:
    """Two evaluations of the same split and every image's difference, largest first."""

    a: dict[str, Any]
    b: dict[str, Any]
    images: list[ImageDifference]


def find_evaluation(
    registry: ModelRegistry,
    catalog: DatasetCatalog,
    ref: ArtifactRef,
    dataset: str | None,
    split: str,
) -> dict[str, Any]:
    """The saved evaluation of ``ref`` on ``split`` of ``dataset`` ('name', 'name:version'),
    or, with no dataset, the newest one of ``ref`` on ``split``.

    Raises:
        NotFoundError: no such model version or dataset, or no evaluation saved
            (code evaluation_not_found).
    """
    registry.version_info(ref)  # unknown version: artifact_not_found
    if dataset is not None:
        names = [evaluation_name(str(catalog.resolve(dataset)), split)]
    else:
        names = [n for n in registry.evaluation_names(ref) if n.endswith(f"-{split}")]
    found = [doc for n in names if (doc := registry.evaluation(ref, n)) is not None]
    found = [doc for doc in found if doc.get("split") == split]
    if not found:
        on = f"{dataset} " if dataset else ""
        raise NotFoundError(
            f"{ref} has no saved evaluation on {on}split {split!r}: queue one with "
            "POST /v1/evaluations",
            code="evaluation_not_found",
        )
    return max(found, key=lambda doc: str(doc.get("evaluated_at", "")))


def error_analysis(document: dict[str, Any]) -> ErrorAnalysis:
    """The per-image records of a saved evaluation.

    Raises:
        InvalidInputError: the evaluation predates them (code evaluation_without_errors).
    """
    if not isinstance(document.get("errors"), dict):
        raise InvalidInputError(
            f"the evaluation of {document.get('model')} on {document.get('dataset')} was saved "
            "before per-image records were kept: evaluate the model again",
            code="evaluation_without_errors",
        )
    return ErrorAnalysis.model_validate(document["errors"])


def compare_evaluations(
    registry: ModelRegistry,
    catalog: DatasetCatalog,
    refs: tuple[ArtifactRef, ArtifactRef],
    dataset: str | None,
    split: str,
) -> Comparison:
    """Both versions' evaluations on the same dataset version and split, image by image.

    Raises:
        NotFoundError: either has no evaluation there (code evaluation_not_found).
        InvalidInputError: they were evaluated on other dataset versions or images
            (code eval_mismatch), or one predates per-image records.
    """
    docs = [find_evaluation(registry, catalog, ref, dataset, split) for ref in refs]
    if docs[0]["dataset"] != docs[1]["dataset"]:
        raise InvalidInputError(
            f"{refs[0]} was evaluated on {docs[0]['dataset']}, {refs[1]} on "
            f"{docs[1]['dataset']}: name the dataset version both were evaluated on",
            code="eval_mismatch",
        )
    images = compare_errors(error_analysis(docs[0]), error_analysis(docs[1]))
    return Comparison(_side(docs[0]), _side(docs[1]), images)


def _side(document: dict[str, Any]) -> dict[str, Any]:
    totals = document["errors"]["totals"]
    return {
        "model": document["model"],
        "dataset": document["dataset"],
        "split": document["split"],
        "map50": document["map50"],
        "map50_95": document["map50_95"],
        "conf": document.get("conf"),
        "misses": totals["misses"],
        "false_alarms": totals["false_alarms"],
        "evaluated_at": document.get("evaluated_at"),
    }
