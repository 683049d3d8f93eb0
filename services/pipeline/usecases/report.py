"""The pipeline's HTML report: one self-contained page (images inline, no network).

What a person needs to judge the run: every step with its job, the lift over the scratch
baseline with its bootstrap 95 % interval over the validation images and what it rests on
(images, seeds, map method and preset, with a plain caveat when the interval includes zero or
the maps come from a preset not meant to be meaningful), the seeds and thread counts that
repeat the run, the map overlays on a few unlabelled images, pseudo-box examples, the AGBP
loss curve, the detector's mAP curves and the final mAP table against the scratch baseline
(overall and per class), where each detector fails on val with links to its saved
evaluation (``report_evaluations``), and where every artifact lives.
"""

from __future__ import annotations

import base64
import html
import io
import logging
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np
from PIL import Image

from services.pipeline.stores.pipelines import PipelineRecord, StepState
from services.pipeline.usecases.lift_stats import (
    LiftSummary,
    claims,
    lift_summary,
    map_provenance,
)
from services.pipeline.usecases.report_evaluations import evaluation_section
from services.pipeline.usecases.steps import baseline_name, map_method, maps_prefix, promotion
from shared.errors import SuiteError
from shared.schemas.dataset_maps import DatasetMapManifest, manifest_key
from shared.storage.base import ObjectStore

log = logging.getLogger(__name__)

OVERLAY_SAMPLES = 4
# Step outputs that say where something was stored, listed in the artifacts table.
ARTIFACT_OUTPUTS = (
    "artifact", "maps_prefix", "out_prefix", "dataset", "evaluation_key", "report_key", "stage",
)  # fmt: skip
_THUMB = 256
# blue -> cyan -> green -> yellow -> red, for map values 0 .. 1
_RAMP = np.array(
    [[0, 0, 160], [0, 170, 255], [0, 200, 80], [255, 220, 0], [230, 20, 20]], np.float32
)
_STYLE = """
body{font:14px system-ui,sans-serif;margin:24px;color:#1d2430;max-width:1180px}
h1{font-size:22px}h2{font-size:17px;margin-top:28px;border-bottom:1px solid #d5dae3}
table{border-collapse:collapse;margin:8px 0}td,th{border:1px solid #d5dae3;padding:4px 8px;
text-align:left}th{background:#eef1f6}.SUCCEEDED{color:#137333}.FAILED{color:#b3261e}
.CANCELED,.SKIPPED{color:#6b7280}.RUNNING,.PENDING{color:#8a5a00}figure{display:inline-block;
margin:0 12px 12px 0}figcaption{font-size:12px;color:#4b5563;max-width:256px;overflow:hidden}
code{background:#f3f4f6;padding:1px 4px}.better{color:#137333;font-weight:600}
.worse{color:#b3261e;font-weight:600}.headline{font-size:16px}
.caveat{background:#fff4e5;border-left:4px solid #d97706;padding:6px 10px;max-width:900px}
"""


def render_report(record: PipelineRecord, store: ObjectStore) -> bytes:
    """The report of ``record`` as UTF-8 HTML."""
    sections = [
        _header(record),
        _steps_table(record),
        _results(record, store),
        evaluation_section(record, store),
        _curves(record),
        _maps_section(record, store),
        _boxes_section(record, store),
        _agbp_section(record, store),
        _artifacts(record),
    ]
    body = "\n".join(s for s in sections if s)
    title = html.escape(f"AGSSP pipeline {record.request.name}")
    page = (
        f"<!doctype html><html><head><meta charset='utf-8'><title>{title}</title>"
        f"<style>{_STYLE}</style></head><body>{body}</body></html>"
    )
    return page.encode("utf-8")


def _esc(value: object) -> str:
    return html.escape(str(value))


def _header(record: PipelineRecord) -> str:
    req = record.request
    rows = {
        "pipeline": record.id,
        "state": record.state.value,
        "category": req.category,
        "unlabelled images": req.unlabelled_prefix,
        "labelled set": _labelled(record),
        "anomaly maps": map_provenance(record).text(),
        "preset": req.preset,
        "detector": f"YOLOv8{req.scale}, seed {req.seed} (one seed), val fraction "
        f"{req.val_fraction}",
        "created": record.created_at.isoformat(timespec="seconds"),
    }
    table = "".join(f"<tr><th>{_esc(k)}</th><td>{_esc(v)}</td></tr>" for k, v in rows.items())
    error = f"<p class='FAILED'>{_esc(record.error)}</p>" if record.error else ""
    return f"<h1>AGSSP pipeline <code>{_esc(req.name)}</code></h1><table>{table}</table>{error}"


def _labelled(record: PipelineRecord) -> str:
    labelled = record.request.labelled
    split = f"train on {labelled.split!r}, validate on {labelled.val_split!r}"
    if labelled.dataset is not None:
        return f"dataset {labelled.dataset}, {split}"
    return f"{labelled.prefix} ({labelled.format}), {split}"


def _done(record: PipelineRecord, name: str) -> bool:
    return record.has_step(name) and record.step(name).state is StepState.SUCCEEDED


def _steps_table(record: PipelineRecord) -> str:
    rows = []
    for step in record.steps:
        took = ""
        if step.started_at and step.finished_at:
            took = f"{(step.finished_at - step.started_at).total_seconds():.0f} s"
        detail = step.error or step.message
        rows.append(
            f"<tr><td>{_esc(step.name)}</td><td>{_esc(step.service)}</td>"
            f"<td class='{step.state.value}'>{step.state.value}</td>"
            f"<td>{_esc(step.job_id or '')}</td><td>{took}</td><td>{_esc(detail)}</td></tr>"
        )
    head = "<tr><th>step</th><th>service</th><th>state</th><th>job</th><th>time</th><th></th></tr>"
    return f"<h2>Steps</h2><table>{head}{''.join(rows)}</table>"


def _metrics(record: PipelineRecord, step: str) -> dict[str, Any] | None:
    if not _done(record, step):
        return None
    metrics: dict[str, Any] = record.step(step).outputs.get("metrics") or {}
    return metrics


def _fmt(value: object) -> str:
    return f"{100 * value:.1f}" if isinstance(value, int | float) else "–"


def _delta(ours: object, theirs: object) -> str:
    # Uncoloured: only the headline, with its interval, may say "better" (issue 21, item 5).
    if not isinstance(ours, int | float) or not isinstance(theirs, int | float):
        return "–"
    return f"{100 * (ours - theirs):+.1f}"


def _results(record: PipelineRecord, store: ObjectStore) -> str:
    ours = _metrics(record, "finetune")
    if ours is None:
        return "<h2>Results</h2><p>The AGSSP detector has not finished yet.</p>"
    base = _metrics(record, "baseline") or {}
    claims = _claims(record, lift_summary(record, store)) if base else ""
    scratch = baseline_name(record.request)
    head = (
        "<tr><th>class</th><th>AGSSP mAP@0.5</th><th>scratch mAP@0.5</th><th>lift</th>"
        "<th>AGSSP mAP@0.5:0.95</th><th>scratch mAP@0.5:0.95</th><th>lift</th></tr>"
    )
    rows = [_result_row("all classes", ours, base)]
    base_classes = base.get("per_class", {})
    for name, ap in sorted(ours.get("per_class", {}).items()):
        rows.append(_result_row(name, ap, base_classes.get(name, {})))
    note = (
        f"<p>Baseline: the same recipe, split and seed from random weights (model "
        f"<code>{_esc(scratch)}</code>). mAP in percent on the labelled set's validation split.</p>"
    )
    if not base:
        note = f"<p>No scratch baseline ({_esc(scratch)}) in this pipeline.</p>"
    table = f"<table>{head}{''.join(rows)}</table>"
    return f"<h2>Results</h2>{claims}{_promoted(record)}{note}{table}"


def _promoted(record: PipelineRecord) -> str:
    """Which detector the pipeline promoted, and the rule's reason (empty before it did)."""
    if not _done(record, "promote"):
        return ""
    chosen = promotion(record)
    stage = record.request.promote
    return (
        f"<p class='promoted'>Promoted to {_esc(str(stage))}: <code>{_esc(chosen.artifact)}</code>"
        f" ({_esc(chosen.reason)}; <code>promote_rule</code> "
        f"{_esc(record.request.promote_rule)}).</p>"
    )


def _claims(record: PipelineRecord, summary: LiftSummary) -> str:
    """The lift with its interval, what it rests on, and the caveats in plain words."""
    said = claims(record, summary)
    items = "".join(f"<li>{_esc(f)}</li>" for f in said.facts)
    warn = "".join(f"<p class='caveat'>{_esc(c)}</p>" for c in said.caveats)
    repeat = f"<p>{_esc(said.reproducibility)}</p>" if said.reproducibility else ""
    head = f"<span class='{said.tone}'>{_esc(said.lift)}</span>" if said.lift else ""
    headline = f"<p class='headline'>{_esc(said.headline)}{head}{_esc(said.tail)}</p>"
    return f"{headline}<ul>{items}</ul>{warn}{repeat}"


def _result_row(label: str, ours: dict[str, Any], base: dict[str, Any]) -> str:
    cells = [label]
    for key in ("map50", "map50_95"):
        cells += [_fmt(ours.get(key)), _fmt(base.get(key)), _delta(ours.get(key), base.get(key))]
    cells[0] = _esc(cells[0])
    return "<tr>" + "".join(f"<td>{c}</td>" for c in cells) + "</tr>"


def _curves(record: PipelineRecord) -> str:
    series = {}
    for step, label in (("finetune", "AGSSP"), ("baseline", "scratch")):
        if _done(record, step):
            history = record.step(step).outputs.get("history") or []
            # validated epochs only: a finetune with val_every > 1 skips the others
            series[label] = [
                (float(h.get("epoch", i + 1)), float(h["map50"]))
                for i, h in enumerate(history)
                if "map50" in h
            ]
    if not any(series.values()):
        return ""
    return "<h2>Validation mAP@0.5 per epoch</h2>" + line_chart_svg(series, "epoch", "mAP@0.5")


def line_chart_svg(
    series: Mapping[str, Sequence[tuple[float, float]]],
    x_label: str,
    y_label: str,
    width: int = 560,
) -> str:
    """Lines of (x, y) points as an inline SVG (x from 0 to the largest), axes and a legend."""
    height, pad = 260, 40
    values = [y for s in series.values() for _, y in s] or [0.0]
    top = max(max(values), 1e-9)
    right = max((x for s in series.values() for x, _ in s), default=1.0) or 1.0
    colours = ["#1f6feb", "#d1242f", "#1a7f37", "#9a6700"]
    parts = [
        f"<svg xmlns='http://www.w3.org/2000/svg' width='{width}' height='{height}' "
        f"role='img' aria-label='{_esc(y_label)} by {_esc(x_label)}'>",
        f"<line x1='{pad}' y1='{height - pad}' x2='{width - 10}' y2='{height - pad}' stroke='#888'/>",
        f"<line x1='{pad}' y1='10' x2='{pad}' y2='{height - pad}' stroke='#888'/>",
        f"<text x='{width // 2}' y='{height - 8}' font-size='12'>{_esc(x_label)}</text>",
        f"<text x='4' y='20' font-size='12'>{top:.3g}</text>",
        f"<text x='4' y='{height - pad}' font-size='12'>0</text>",
    ]
    for i, (label, ys) in enumerate(series.items()):
        colour = colours[i % len(colours)]
        points = " ".join(
            f"{pad + (width - pad - 10) * x / right:.1f},"
            f"{height - pad - (height - pad - 10) * y / top:.1f}"
            for x, y in ys
        )
        parts.append(
            f"<polyline fill='none' stroke='{colour}' stroke-width='2' points='{points}'/>"
        )
        parts.append(
            f"<text x='{width - 120}' y='{20 + 16 * i}' font-size='12' fill='{colour}'>"
            f"{_esc(label)}</text>"
        )
    parts.append("</svg>")
    return "".join(parts)


def heat_overlay(image: np.ndarray, anomaly_map: np.ndarray, alpha: float = 0.4) -> np.ndarray:
    """An RGB image with its min-max-normalised map blended on top.

    Args:
        image: (H, W, 3) uint8 RGB.
        anomaly_map: (g, g) or (h, w) float map, resized to (H, W) bilinearly.
        alpha: weight of the heat colours.
    """
    low, high = float(anomaly_map.min()), float(anomaly_map.max())
    norm = (anomaly_map - low) / (high - low) if high > low else np.zeros_like(anomaly_map)
    resized = Image.fromarray(norm.astype(np.float32)).resize(
        (image.shape[1], image.shape[0]), Image.Resampling.BILINEAR
    )
    scaled = np.clip(np.asarray(resized), 0.0, 1.0) * (len(_RAMP) - 1)
    index = np.minimum(scaled.astype(int), len(_RAMP) - 2)
    frac = (scaled - index)[..., None]
    heat = _RAMP[index] * (1 - frac) + _RAMP[index + 1] * frac
    blended = image.astype(np.float32) * (1 - alpha) + heat * alpha
    result: np.ndarray = blended.clip(0, 255).astype(np.uint8)
    return result


def _png_tag(image: Image.Image, caption: str) -> str:
    image.thumbnail((_THUMB, _THUMB))
    buffer = io.BytesIO()
    image.save(buffer, "PNG")
    data = base64.b64encode(buffer.getvalue()).decode()
    return (
        f"<figure><img src='data:image/png;base64,{data}' alt='{_esc(caption)}'>"
        f"<figcaption>{_esc(caption)}</figcaption></figure>"
    )


def _maps_section(record: PipelineRecord, store: ObjectStore) -> str:
    if not (_done(record, "maps") or record.request.maps == "provided"):
        return ""
    try:
        prefix = maps_prefix(record)
        key = manifest_key(prefix)
        manifest = DatasetMapManifest.from_bytes(store.get_bytes(key), key)
        figures = [
            _overlay_figure(store, image_key, map_key)
            for image_key, map_key in list(manifest.maps.items())[:OVERLAY_SAMPLES]
        ]
    except (SuiteError, OSError, ValueError, KeyError) as exc:
        log.warning("report %s: no map overlays: %s", record.id, exc)
        return "<h2>Anomaly maps</h2><p>The maps could not be read for this report.</p>"
    return (
        f"<h2>Anomaly maps</h2><p>{_esc(map_method(record))} maps under "
        f"<code>{_esc(prefix)}</code>, min-max normalised per image.</p>{''.join(figures)}"
    )


def _overlay_figure(store: ObjectStore, image_key: str, map_key: str) -> str:
    image = np.asarray(Image.open(io.BytesIO(store.get_bytes(image_key))).convert("RGB"))
    anomaly_map = np.load(io.BytesIO(store.get_bytes(map_key)), allow_pickle=False)
    overlay = heat_overlay(image, np.asarray(anomaly_map, np.float32))
    return _png_tag(Image.fromarray(overlay), image_key.rpartition("/")[2])


def _boxes_section(record: PipelineRecord, store: ObjectStore) -> str:
    if not _done(record, "pseudo_boxes"):
        return ""
    outputs = record.step("pseudo_boxes").outputs
    figures = []
    for key in list(outputs.get("examples") or [])[:OVERLAY_SAMPLES]:
        try:
            image = Image.open(io.BytesIO(store.get_bytes(str(key)))).convert("RGB")
        except (SuiteError, OSError) as exc:
            log.warning("report %s: example %s unreadable: %s", record.id, key, exc)
            continue
        figures.append(_png_tag(image, str(key).rpartition("/")[2]))
    where = _esc(outputs.get("out_prefix", ""))
    gate = f"<p>Image gate: {_esc(outputs['gate_reason'])}</p>" if "gate_reason" in outputs else ""
    return (
        f"<h2>Pseudo-defect boxes</h2><p>Labels under <code>{where}</code>.</p>{gate}"
        f"{_reference_note(record)}{''.join(figures)}"
    )


def _reference_note(record: PipelineRecord) -> str:
    """Whether the labelled defects that checked the gate were held out of the ToCoAD fit;
    a caveat when the fit pasted them too (they may score above the pool's own defects)."""
    if not (_done(record, "defect_maps") and _done(record, "tocoad_fit")):
        return ""
    pasted = record.step("tocoad_fit").outputs.get("defect_images") or {}
    checked = record.step("defect_maps").outputs.get("defect_images") or {}
    if not pasted.get("images"):
        return ""  # the fit pasted none: the check reads images it never saw
    if checked.get("side") == "reference" and checked.get("reference_held_out") is True:
        return (
            f"<p>Gate check: {_esc(checked.get('images'))} labelled defect images held out of "
            f"the ToCoAD fit, which pasted {_esc(pasted.get('images'))} others.</p>"
        )
    return (
        "<p class='caveat'>Gate check may be biased: the labelled defect images that checked "
        "the gate were also pasted into the ToCoAD fit (too few to hold some out: "
        f"{_esc(checked.get('images'))} images), so they may score above the pool's own "
        "defects and the gate set or checked with them may sit higher than it should.</p>"
    )


def _agbp_section(record: PipelineRecord, store: ObjectStore) -> str:
    if not _done(record, "agbp"):
        return ""
    artifact = str(record.step("agbp").outputs.get("artifact", ""))
    name, _, version = artifact.partition(":")
    key = f"models/{name}/{version}/loss_curve.png"
    try:
        curve = Image.open(io.BytesIO(store.get_bytes(key))).convert("RGB")
    except (SuiteError, OSError) as exc:
        log.warning("report %s: no AGBP loss curve: %s", record.id, exc)
        return ""
    curve.thumbnail((720, 720))
    buffer = io.BytesIO()
    curve.save(buffer, "PNG")
    data = base64.b64encode(buffer.getvalue()).decode()
    return (
        f"<h2>AGBP loss</h2><img src='data:image/png;base64,{data}' alt='AGBP loss curve'>"
        f"<p><code>{_esc(key)}</code></p>"
    )


def _artifacts(record: PipelineRecord) -> str:
    rows = []
    for step in record.steps:
        for key in ARTIFACT_OUTPUTS:
            if key in step.outputs:
                rows.append(
                    f"<tr><td>{_esc(step.name)}</td><td>{key}</td>"
                    f"<td><code>{_esc(step.outputs[key])}</code></td></tr>"
                )
    head = "<tr><th>step</th><th>what</th><th>where</th></tr>"
    lineage = (
        "<p>Lineage: maps → pseudo boxes → AGBP backbone → AGDP detector → finetuned detector; "
        "the finetune service keeps each model's chain in its registry.</p>"
    )
    return f"<h2>Artifacts</h2>{lineage}<table>{head}{''.join(rows)}</table>"
