"""The pipeline's steps: which service each calls, with what body, and what it hands on.

Each step is one public call of a service (agssp-spec §1-§6 in order): (method) -> category
-> labelled import -> (ToCoAD fit, pasting the labelled defects) -> dataset maps -> (maps of
the labelled defects held out of the fit, which check the pseudo boxes' gate) -> pseudo boxes
-> AGBP -> AGDP -> finetune -> scratch baseline -> (promote) -> report. Jobs are submitted
with the same bodies a user would send, so a pipeline exercises exactly the routes the
services publish. A step's ``outputs`` keep only what later steps and the report read.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Literal

from services.pipeline.params import PipelineRequest
from services.pipeline.stores.pipelines import PipelineRecord, StepRecord
from services.pipeline.usecases.common import StepCallError
from services.pipeline.usecases.presets import PRESETS, step_config

Kind = Literal["job", "call", "local"]
EVALUATION_OUTPUTS = ("evaluation_key", "error_totals", "evaluation_error")


@dataclass(frozen=True)
class Call:
    """One HTTP request to a service: ``method`` ``path`` with a JSON ``body``."""

    service: str
    method: str
    path: str
    body: dict[str, Any] | None = None


@dataclass(frozen=True)
class StepSpec:
    """How a step is made: its kind, its request and what it hands on from the answer."""

    name: str
    service: str
    kind: Kind
    build: Callable[[PipelineRecord], Call | None]
    collect: Callable[[dict[str, Any]], dict[str, Any]]


def map_method(record: PipelineRecord) -> str:
    """kead, tocoad or provided: the request's choice, or what the method step found."""
    if record.request.maps != "auto":
        return record.request.maps
    return str(record.step("method").outputs.get("method", "tocoad"))


def _out(record: PipelineRecord, step: str, key: str) -> Any:
    return record.step(step).outputs[key]


def _first_artifact(job: dict[str, Any]) -> dict[str, Any]:
    return {"artifact": job["artifacts"][0]}


def _method_call(record: PipelineRecord) -> Call:
    return Call("anomaly_map", "GET", "/readyz")


def _method_collect(body: dict[str, Any]) -> dict[str, Any]:
    # /readyz details.methods.<m>.ready (anomaly-map service): KeAD needs loaded CLIP weights.
    methods = body.get("details", {}).get("methods")
    if not isinstance(methods, dict) or "kead" not in methods:
        raise StepCallError(
            "the anomaly-map /readyz answer has no per-method readiness (with API keys on, "
            "set PIPELINE_API_KEY); choose maps=kead or maps=tocoad to skip this check",
            "method_unknown",
            transient=False,
        )
    return {"method": "kead" if methods["kead"].get("ready") is True else "tocoad"}


def _category_call(record: PipelineRecord) -> Call:
    spec = dict(record.request.category_spec or {})
    if map_method(record) == "tocoad":
        spec.setdefault("method", "tocoad")
    return Call("anomaly_map", "PUT", f"/v1/categories/{record.request.category}", spec)


def _category_collect(body: dict[str, Any]) -> dict[str, Any]:
    return {"version": body.get("version")}


def _fit_call(record: PipelineRecord) -> Call | None:
    if map_method(record) != "tocoad":
        return None
    req = record.request
    body = {
        "category": req.category,
        "normal_prefix": req.unlabelled_prefix,
        "preset": req.overrides.tocoad_preset or PRESETS[req.preset].tocoad,
        "config": {"seed": req.seed, **req.overrides.tocoad},
    }
    if req.labelled_defects:  # the dataset step runs first for this (see ``plan``)
        side = "paste" if _holds_out(record) else "all"
        body["defects"] = {
            "dataset": dataset_ref(record),
            "split": req.labelled.split,
            "side": side,
        }
    return Call("anomaly_map", "POST", "/v1/tocoad-fits", body)


def _fit_collect(job: dict[str, Any]) -> dict[str, Any]:
    found = job["outputs"].get("defect_images")
    return {} if found is None else {"defect_images": found}


def _maps_call(record: PipelineRecord) -> Call | None:
    method = map_method(record)
    if method == "provided":
        return None
    req = record.request
    body = {"category": req.category, "prefix": req.unlabelled_prefix, "mode": method}
    return Call("anomaly_map", "POST", "/v1/anomaly-map-jobs", body)


def _maps_collect(job: dict[str, Any]) -> dict[str, Any]:
    return {"maps_prefix": job["outputs"]["output_prefix"], "total": job["outputs"].get("total")}


def maps_prefix(record: PipelineRecord) -> str:
    """Where the anomaly maps are: the request's own, or the maps step's output."""
    if map_method(record) == "provided":
        assert record.request.maps_prefix is not None  # checked at submission
        return record.request.maps_prefix
    return str(_out(record, "maps", "maps_prefix"))


def _source(record: PipelineRecord) -> dict[str, Any]:
    req = record.request
    return {
        "category": req.category,
        "images_prefix": req.unlabelled_prefix,
        "maps_prefix": maps_prefix(record),
    }


def _defect_maps_call(record: PipelineRecord) -> Call | None:
    """Maps of the labelled set's defect images, whose scores check the auto gate (issue 21):
    the same category and method as the pool's, so the scores share one scale."""
    req, method = record.request, map_method(record)
    if method == "provided" or req.gate != "auto" or not _labelled_has_boxes(record):
        return None
    side = "reference" if _holds_out(record) else "all"
    defects = {"dataset": dataset_ref(record), "split": req.labelled.split, "side": side}
    body = {"category": req.category, "defects": defects, "mode": method}
    return Call("anomaly_map", "POST", "/v1/anomaly-map-jobs", body)


def _defect_maps_collect(job: dict[str, Any]) -> dict[str, Any]:
    found = job["outputs"].get("defect_images")
    return _maps_collect(job) | ({} if found is None else {"defect_images": found})


def _labelled_has_boxes(record: PipelineRecord) -> bool:
    # A stored dataset named in the request skips the import: its boxes are not counted here.
    boxes = record.step("dataset").outputs.get("boxes")
    return boxes is None or int(boxes) > 0


def _holds_out(record: PipelineRecord) -> bool:
    """Whether the labelled defect images serve both the ToCoAD fit (pasted) and the gate
    check (their maps): then the fit takes the paste side and the check the held-out reference
    side (``stores.labelled_defects.split_sides`` of the anomaly-map service decides which
    image is which from its file name, so neither request lists them)."""
    req = record.request
    return (
        map_method(record) == "tocoad"
        and req.labelled_defects
        and req.gate == "auto"
        and _labelled_has_boxes(record)
    )


def _boxes_call(record: PipelineRecord) -> Call:
    body = {**_source(record), "gate": record.request.gate}  # only here: AGBP sources refuse it
    if record.has_step("defect_maps"):  # skipped: no outputs, no reference
        reference = record.step("defect_maps").outputs.get("maps_prefix")
        if reference is not None:
            body["reference_maps_prefix"] = reference
    return Call("pretrain", "POST", "/v1/pseudo-label-jobs", body)


_BOX_OUTPUTS = (
    "out_prefix", "images", "boxes", "examples", "threshold", "images_with_boxes",
    "share_with_boxes", "boxes_per_image", "gate", "gate_threshold", "gate_defect_share",
    "gate_separation", "gate_reason", "gate_score_source", "gate_reference_images",
    "gate_reference_kept", "gate_pool_kept",
)  # fmt: skip


def _boxes_collect(job: dict[str, Any]) -> dict[str, Any]:
    outputs = job["outputs"]
    return {k: outputs[k] for k in _BOX_OUTPUTS if k in outputs}


def _train_config(record: PipelineRecord, step: Literal["agbp", "agdp", "finetune"]) -> Any:
    req = record.request
    overrides = getattr(req.overrides, step)
    return step_config(req.preset, step, req.scale, req.seed, overrides, req.detector)


def _agbp_call(record: PipelineRecord) -> Call:
    body = {"sources": [_source(record)], "config": _train_config(record, "agbp")}
    return Call("pretrain", "POST", "/v1/pretrain-jobs", body)


def _agdp_call(record: PipelineRecord) -> Call:
    req = record.request
    body = {
        "images_prefix": req.unlabelled_prefix,
        "labels_prefix": _out(record, "pseudo_boxes", "out_prefix"),
        "backbone_artifact": _out(record, "agbp", "artifact"),
        "scale": req.scale,
        "config": _train_config(record, "agdp"),
        "val_fraction": req.val_fraction,
    }
    return Call("finetune", "POST", "/v1/agdp-jobs", body)


def dataset_name(request: PipelineRequest) -> str:
    """The stored name of the pipeline's labelled set."""
    return f"{request.name}-labelled"


def _dataset_call(record: PipelineRecord) -> Call | None:
    req, labelled = record.request, record.request.labelled
    if labelled.dataset is not None:
        return None  # already stored: nothing to import
    body = {
        "name": dataset_name(req),
        "prefix": labelled.prefix,
        "format": labelled.format,
        "annotations": labelled.annotations,
        "classes": labelled.classes,
        "val_fraction": req.val_fraction,
        "seed": req.seed,
    }
    if labelled.images is not None:
        body["images"] = labelled.images
    return Call("finetune", "POST", "/v1/datasets", body)


def _dataset_collect(job: dict[str, Any]) -> dict[str, Any]:
    outputs = job["outputs"]
    return {k: outputs[k] for k in ("dataset", "classes", "images", "boxes", "splits")}


def dataset_ref(record: PipelineRecord) -> str:
    """The stored labelled dataset the detectors train on."""
    given = record.request.labelled.dataset
    return given if given is not None else str(_out(record, "dataset", "dataset"))


def _detector_body(record: PipelineRecord, model_name: str, init: dict[str, Any]) -> Any:
    req = record.request
    return {
        "dataset": dataset_ref(record),
        "split": req.labelled.split,
        "val_split": req.labelled.val_split,
        "scale": req.scale,
        "config": _train_config(record, "finetune"),
        "model_name": model_name,
        "init": init,
    }


def _finetune_call(record: PipelineRecord) -> Call:
    init = {"kind": "agdp", "artifact": _out(record, "agdp", "artifact")}
    body = _detector_body(record, record.request.name, init)
    return Call("finetune", "POST", "/v1/finetune-jobs", body)


def baseline_name(request: PipelineRequest) -> str:
    """Model name of the from-scratch baseline."""
    return f"{request.name}-scratch"


def _baseline_call(record: PipelineRecord) -> Call:
    body = _detector_body(record, baseline_name(record.request), {"kind": "scratch"})
    return Call("finetune", "POST", "/v1/finetune-jobs", body)


def _detector_collect(job: dict[str, Any]) -> dict[str, Any]:
    outputs = job["outputs"]
    return {
        "artifact": outputs["artifact"],
        "metrics": outputs.get("metrics", {}),
        "history": outputs.get("history", []),
        "epochs_completed": outputs.get("epochs_completed"),
        # the version's saved evaluation on val, when the finetune job saved one (or why not)
        **{k: outputs[k] for k in EVALUATION_OUTPUTS if k in outputs},
    }


@dataclass(frozen=True)
class Promotion:
    """The detector a pipeline promotes (``model:version``) and why."""

    artifact: str
    reason: str


def _map50(record: PipelineRecord, step: str) -> float | None:
    value = record.step(step).outputs.get("metrics", {}).get("map50")
    return float(value) if isinstance(value, int | float) else None


def promotion(record: PipelineRecord) -> Promotion:
    """What ``promote`` serves under the request's ``promote_rule`` (once the detectors are
    trained): the scratch baseline only when the rule is ``better`` and it scored strictly
    higher mAP@0.5 on the validation split than the AGSSP detector."""
    agssp = str(_out(record, "finetune", "artifact"))
    if record.request.promote_rule == "agssp":
        return Promotion(agssp, "promote_rule agssp: the AGSSP detector")
    if not record.request.baseline:
        return Promotion(agssp, "no scratch baseline to compare with")
    ours, theirs = _map50(record, "finetune"), _map50(record, "baseline")
    if ours is None or theirs is None or theirs <= ours:
        why = "the AGSSP detector scored at least the scratch baseline's mAP@0.5 on val"
        return Promotion(agssp, why)
    scratch = str(_out(record, "baseline", "artifact"))
    why = (
        f"the scratch baseline scored higher mAP@0.5 on val ({100 * theirs:.1f} against "
        f"{100 * ours:.1f} for the AGSSP detector)"
    )
    return Promotion(scratch, why)


def _promote_call(record: PipelineRecord) -> Call:
    name, version = promotion(record).artifact.split(":", 1)
    stage = record.request.promote
    path = f"/v1/models/{name}/versions/{version}/promote"
    return Call("finetune", "POST", path, {"stage": stage})


def _promote_collect(body: dict[str, Any]) -> dict[str, Any]:
    return {"stage": body.get("stage"), "model": body.get("name"), "version": body.get("version")}


def _no_call(record: PipelineRecord) -> None:
    return None


def _same(body: dict[str, Any]) -> dict[str, Any]:
    return body


SPECS: dict[str, StepSpec] = {
    s.name: s
    for s in (
        StepSpec("method", "anomaly_map", "call", _method_call, _method_collect),
        StepSpec("category", "anomaly_map", "call", _category_call, _category_collect),
        StepSpec("tocoad_fit", "anomaly_map", "job", _fit_call, _fit_collect),
        StepSpec("maps", "anomaly_map", "job", _maps_call, _maps_collect),
        StepSpec("defect_maps", "anomaly_map", "job", _defect_maps_call, _defect_maps_collect),
        StepSpec("pseudo_boxes", "pretrain", "job", _boxes_call, _boxes_collect),
        StepSpec("agbp", "pretrain", "job", _agbp_call, _first_artifact),
        StepSpec("agdp", "finetune", "job", _agdp_call, _first_artifact),
        StepSpec("dataset", "finetune", "job", _dataset_call, _dataset_collect),
        StepSpec("finetune", "finetune", "job", _finetune_call, _detector_collect),
        StepSpec("baseline", "finetune", "job", _baseline_call, _detector_collect),
        StepSpec("promote", "finetune", "call", _promote_call, _promote_collect),
        StepSpec("report", "pipeline", "local", _no_call, _same),
    )
}


def plan(request: PipelineRequest) -> list[StepRecord]:
    """The steps a request needs, in order (a step whose call is None at run time is skipped)."""
    names = []
    if request.maps == "auto":
        names.append("method")
    if request.category_spec is not None:
        names.append("category")
    # The labelled import comes before the maps: the ToCoAD fit learns from its defects.
    names.append("dataset")
    if request.maps in ("auto", "tocoad"):
        names.append("tocoad_fit")
    if request.maps != "provided":
        names.append("maps")
        if request.gate == "auto":  # the labelled defects' scores check the gate
            names.append("defect_maps")
    names += ["pseudo_boxes", "agbp", "agdp", "finetune"]
    if request.baseline:
        names.append("baseline")
    if request.promote is not None:
        names.append("promote")
    names.append("report")
    return [StepRecord(name=n, service=SPECS[n].service) for n in names]
