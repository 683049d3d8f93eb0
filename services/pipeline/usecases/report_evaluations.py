"""The report's "where the detectors fail" section: each finetuned model's errors on val.

Every finetune job saves its version's evaluation on the val split (misses and false
alarms per image, confusion, PR curves); its outputs carry the key and the error totals,
and the finetune and baseline steps keep them. This section puts the totals beside each
model's mAP and links to the console's Evaluation page for the version, and to its compare
view (AGSSP against the scratch baseline, image by image). Links are root-relative, on the
console's origin; a model with no saved evaluation (one published before they were saved,
or whose save failed) says so instead of linking to an empty page.
"""

from __future__ import annotations

import html
from dataclasses import dataclass
from typing import Any
from urllib.parse import urlencode

from services.pipeline.stores.pipelines import PipelineRecord, StepState
from services.pipeline.usecases.steps import dataset_ref
from shared.storage.base import ObjectStore

EVALUATION_PAGE = "/evaluation"  # the console page; it reads model, version, dataset, split
DETECTOR_STEPS = (("finetune", "AGSSP"), ("baseline", "scratch"))
TOTALS = (("misses", "misses"), ("false_alarms", "false alarms"),
          ("images_with_misses", "images with misses"))  # fmt: skip


@dataclass(frozen=True)
class Evaluated:
    """What the report knows of one finetuned model's evaluation on val."""

    label: str
    model: str
    version: str
    map50: object
    totals: dict[str, Any] | None
    saved: bool
    error: str | None


def evaluation_section(record: PipelineRecord, store: ObjectStore) -> str:
    """The section's HTML; empty while no detector step has finished."""
    models = [
        found
        for step, label in DETECTOR_STEPS
        if (found := evaluated(record, store, step, label)) is not None
    ]
    if not models:
        return ""
    titles = ("model", "mAP@0.5", *(title for _, title in TOTALS), "evaluation")
    head = "<tr>" + "".join(f"<th>{title}</th>" for title in titles) + "</tr>"
    rows = "".join(_row(record, model) for model in models)
    intro = (
        f"<p>On the validation split {_esc(repr(record.request.labelled.val_split))}: misses "
        "(defects no detection found) and false alarms (detections on no defect) at the saved "
        "evaluation's score threshold, IoU 0.5. Each evaluation shows every image with its "
        "boxes, the confusion matrix and the PR curves.</p>"
    )
    table = f"<table>{head}{rows}</table>"
    return f"<h2>Where the detectors fail</h2>{intro}{table}{_compare(record, models)}"


def evaluated(
    record: PipelineRecord, store: ObjectStore, step: str, label: str
) -> Evaluated | None:
    """The evaluation of the model ``step`` published; None when it published none."""
    if not record.has_step(step) or record.step(step).state is not StepState.SUCCEEDED:
        return None
    outputs = record.step(step).outputs
    model, _, version = str(outputs.get("artifact") or "").partition(":")
    if not version:
        return None
    key = outputs.get("evaluation_key")
    return Evaluated(
        label=label,
        model=model,
        version=version,
        map50=(outputs.get("metrics") or {}).get("map50"),
        totals=outputs.get("error_totals"),
        saved=isinstance(key, str) and store.exists(key),
        error=outputs.get("evaluation_error"),
    )


def evaluation_link(record: PipelineRecord, model: str, version: str, **extra: str) -> str:
    """The console's Evaluation page for ``model:version`` on the pipeline's val split."""
    query = {"model": model, "version": version, "split": record.request.labelled.val_split}
    dataset = dataset_ref(record)
    if ":" in dataset:  # a pinned version; a bare name would follow the newest import
        query["dataset"] = dataset
    return f"{EVALUATION_PAGE}?{urlencode({**query, **extra})}"


def _row(record: PipelineRecord, model: Evaluated) -> str:
    totals = model.totals or {}
    cells = [f"{_esc(model.label)} <code>{_esc(model.model)}:{_esc(model.version)}</code>"]
    cells.append(_percent(model.map50))
    cells += [_count(totals.get(key)) for key, _ in TOTALS]
    if model.saved:
        link = evaluation_link(record, model.model, model.version)
        cells.append(f"<a href='{_esc(link)}'>errors per image</a>")
    else:
        why = f": {_esc(model.error)}" if model.error else ""
        cells.append(f"no evaluation saved{why}")
    return "<tr>" + "".join(f"<td>{cell}</td>" for cell in cells) + "</tr>"


def _compare(record: PipelineRecord, models: list[Evaluated]) -> str:
    """A link to the compare view when both models have a saved evaluation."""
    if len(models) < 2 or not all(m.saved for m in models):
        return ""
    ours, scratch = models
    other = f"{scratch.model}:{scratch.version}"
    link = evaluation_link(record, ours.model, ours.version, compare=other)
    return (
        f"<p><a href='{_esc(link)}'>{_esc(ours.label)} against {_esc(scratch.label)}, image "
        "by image</a> (largest difference in misses and false alarms first).</p>"
    )


def _percent(value: object) -> str:
    return f"{100 * value:.1f}" if isinstance(value, int | float) else "–"


def _count(value: object) -> str:
    return str(value) if isinstance(value, int) else "–"


def _esc(value: object) -> str:
    return html.escape(str(value))
