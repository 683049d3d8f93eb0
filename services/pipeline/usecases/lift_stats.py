"""What a pipeline may claim about its lift: the interval, the sample size and the maps' worth.

The lift is AGSSP mAP@0.5 minus scratch mAP@0.5 on the labelled set's validation images. Both
detectors' per-image records (``shared.schemas.evaluation``, published by the finetune service
in each detector version) are read from the object store, as the report reads the AGBP loss
curve, and a paired bootstrap over the validation images gives the interval (issue 21,
item 5). The map provenance says whether the maps were ever meant to mean something.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import Literal

from services.pipeline.stores.pipelines import PipelineRecord, StepState
from services.pipeline.usecases.presets import PRESETS
from services.pipeline.usecases.steps import map_method
from shared.errors import SuiteError
from shared.schemas.artifacts import ArtifactRef
from shared.schemas.evaluation import (
    BOOTSTRAP_RESAMPLES,
    PER_IMAGE_FILE,
    LiftInterval,
    PerImageEval,
    RunInfo,
    bootstrap_lift,
)
from shared.storage.base import ObjectStore

log = logging.getLogger(__name__)

# A fixed resampling seed: the interval is a function of the two evaluations alone.
BOOTSTRAP_SEED = 0
# ToCoAD presets whose maps are not meant to mean anything. The anomaly-map service's
# ``ml/tocoad/presets.py`` documents ``tiny`` as the CI schedule ("a fit takes seconds and its
# maps mean nothing"); services never import each other, so the name is repeated here.
DEMO_ONLY_TOCOAD_PRESETS = frozenset({"tiny"})
# Presets whose maps are trained but weak: ``demo`` is the ``cpu`` recipe cut to 300 Stage I
# steps; on Magnetic-tile its maps beat the trivial baselines on image AUROC and AUPRO only
# (``benchmarks/results/tocoad_quality_demo.json``).
WEAK_TOCOAD_PRESETS = frozenset({"demo"})


@dataclass(frozen=True)
class MapProvenance:
    """Where the pipeline's anomaly maps came from."""

    method: str  # kead, tocoad, provided, or auto while the method step has not run
    tocoad_preset: str | None  # the ToCoAD fit's preset when the method is tocoad
    tocoad_overrides: bool  # the request laid its own ToCoAD config keys over the preset

    @property
    def demo_only(self) -> bool:
        """The maps come from a preset that is not meant to be meaningful."""
        return self.tocoad_preset in DEMO_ONLY_TOCOAD_PRESETS

    @property
    def weak(self) -> bool:
        """The maps come from a short schedule whose maps are known to be weak."""
        return self.tocoad_preset in WEAK_TOCOAD_PRESETS

    def text(self) -> str:
        """``tocoad, ToCoAD preset 'tiny'`` and the like."""
        if self.tocoad_preset is None:
            return self.method
        overrides = " with config overrides" if self.tocoad_overrides else ""
        return f"{self.method}, ToCoAD preset {self.tocoad_preset!r}{overrides}"


@dataclass(frozen=True)
class LiftSummary:
    """The bootstrap interval of the lift, or why there is none; the runs' seeds and threads.

    Attributes:
        interval: None when either detector's records could not be read.
        reason: why ``interval`` is None ("" otherwise).
        val_images: validation images both detectors were scored on (None if unknown).
        runs: ``RunInfo`` per detector label ("AGSSP", "scratch") where recorded.
    """

    interval: LiftInterval | None
    reason: str
    val_images: int | None
    runs: dict[str, RunInfo]

    @property
    def earned(self) -> bool:
        """The lower bound of the interval is above zero: the only case a headline is green."""
        return self.interval is not None and self.interval.low > 0.0


@dataclass(frozen=True)
class Claims:
    """What the report says about the lift, in plain text.

    The headline reads ``headline + lift + tail``; ``lift`` (the figure and its interval)
    is shown in ``tone``: "better" only when the interval's lower bound is above zero.
    """

    headline: str
    lift: str
    tail: str
    tone: Literal["better", "worse", ""]
    facts: list[str]
    caveats: list[str]
    reproducibility: str


def map_provenance(record: PipelineRecord) -> MapProvenance:
    """The request's map method and, for ToCoAD, the preset the fit step sends."""
    req = record.request
    decided = req.maps != "auto" or _done(record, "method")
    method = map_method(record) if decided else "auto"
    preset = None
    if method in ("tocoad", "auto"):  # auto falls back to ToCoAD when KeAD is not ready
        preset = req.overrides.tocoad_preset or PRESETS[req.preset].tocoad
    return MapProvenance(method, preset, bool(req.overrides.tocoad))


def records_key(artifact: str) -> str:
    """Store key of the per-image records of a detector ``name:version``."""
    name, _, version = artifact.partition(":")
    return ArtifactRef(name=name, version=version).key(PER_IMAGE_FILE)


def lift_summary(record: PipelineRecord, store: ObjectStore) -> LiftSummary:
    """The lift's interval from the finetune and baseline steps' published records."""
    loaded: dict[str, PerImageEval] = {}
    missing = []
    for step, label in (("finetune", "AGSSP"), ("baseline", "scratch")):
        records = _records(record, store, step)
        if records is None:
            missing.append(label)
        else:
            loaded[label] = records
    runs = {label: r.run for label, r in loaded.items() if r.run is not None}
    val_images = _val_images(record, loaded)
    if missing:
        reason = f"no per-image validation records of the {' and '.join(missing)} detector"
        return LiftSummary(None, reason, val_images, runs)
    try:
        interval = bootstrap_lift(
            loaded["AGSSP"], loaded["scratch"], BOOTSTRAP_RESAMPLES, BOOTSTRAP_SEED
        )
    except SuiteError as exc:
        return LiftSummary(None, str(exc), val_images, runs)
    return LiftSummary(interval, "", interval.images, runs)


def _done(record: PipelineRecord, name: str) -> bool:
    return record.has_step(name) and record.step(name).state is StepState.SUCCEEDED


def _records(record: PipelineRecord, store: ObjectStore, step: str) -> PerImageEval | None:
    if not _done(record, step) or not record.step(step).outputs.get("artifact"):
        return None
    key = str(record.step(step).outputs["artifact"])
    try:
        key = records_key(key)
        return PerImageEval.from_bytes(store.get_bytes(key), key)
    except (SuiteError, OSError, ValueError) as exc:
        log.warning("report %s: no per-image records at %s: %s", record.id, key, exc)
        return None


def _val_images(record: PipelineRecord, loaded: dict[str, PerImageEval]) -> int | None:
    if loaded:
        return len(next(iter(loaded.values())).images)
    if _done(record, "dataset"):  # the import step counts every split it stored
        count = (record.step("dataset").outputs.get("splits") or {}).get(
            record.request.labelled.val_split
        )
        return int(count) if isinstance(count, int) else None
    return None


def _map_caveats(maps: MapProvenance) -> list[str]:
    """What the maps' preset lets the lift claim."""
    if maps.demo_only:
        return [
            f"The maps come from the ToCoAD {maps.tocoad_preset!r} preset, a CI schedule whose "
            "maps are not meant to be meaningful: this run shows that the pipeline works end "
            "to end, not that the anomaly guidance helps."
        ]
    if maps.weak:
        return [
            f"The maps come from the ToCoAD {maps.tocoad_preset!r} preset, a short schedule "
            "whose maps are weak (on Magnetic-tile they beat trivial baselines on image "
            "AUROC and AUPRO only): part of any lift may come from the pretraining steps "
            "themselves rather than from the maps; the 'cpu' preset trains them properly."
        ]
    return []


def claims(record: PipelineRecord, summary: LiftSummary) -> Claims:
    """The headline, the facts it rests on and the caveats, for a finished pair of detectors."""
    interval, maps, req = summary.interval, map_provenance(record), record.request
    images = "an unknown number of" if summary.val_images is None else str(summary.val_images)
    facts = [
        f"{images} validation images (split {req.labelled.val_split!r}), 1 seed ({req.seed}): "
        "the pipeline trains each detector once",
        f"anomaly maps: {maps.text()}",
    ]
    caveats = _map_caveats(maps)
    repeat = _reproducibility(summary.runs)
    if interval is None:
        head = f"Lift of AGSSP over scratch: no interval ({summary.reason}); "
        tail = "the table below is one draw, not a measured gain."
        return Claims(head, "", tail, "", facts, caveats, repeat)
    facts.append(
        f"interval: paired percentile bootstrap over the validation images, "
        f"{interval.resamples} resamples with replacement (seed {interval.seed}), mAP@0.5 of "
        "both detectors recomputed on each"
    )
    if interval.includes_zero:
        caveats.insert(
            0,
            "The interval includes zero: AGSSP is not distinguishable from the baseline at "
            f"this size ({interval.images} validation images, one seed).",
        )
    lift = (
        f"{_points(interval.lift)} mAP@0.5 points, 95 % interval {_points(interval.low)} to "
        f"{_points(interval.high)}"
    )
    tail = f" (AGSSP {100 * interval.ours:.1f}, scratch {100 * interval.theirs:.1f})."
    tone: Literal["better", "worse", ""] = (
        "better" if summary.earned else "worse" if interval.high < 0 else ""
    )
    return Claims("Lift of AGSSP over scratch: ", lift, tail, tone, facts, caveats, repeat)


def _points(value: float) -> str:
    return f"{100 * value:+.1f}"


def _reproducibility(runs: dict[str, RunInfo]) -> str:
    if not runs:
        return ""
    parts = [
        f"{label}: seed {run.seed}, {run.torch_threads} torch thread(s), "
        f"{'deterministic' if run.deterministic else 'non-deterministic'} algorithms, "
        f"{run.device}"
        for label, run in runs.items()
    ]
    return (
        f"Reproducibility: {'; '.join(parts)}. The same request on the same machine (same "
        "thread count, same library versions) gives the same mAP; another machine or thread "
        "count may not."
    )
