"""Were a pseudo-label job's reference maps made from images its ToCoAD fit never saw?

The auto gate's labelled defects (``reference_maps_prefix``) are a dataset-map output over
one side of a labelled split (``DatasetMapParams.defects``). When the ToCoAD fit that made
those maps pasted the same images, they may score above the pool's own defects and pull the
gate up (agssp-spec §3; the pipeline's report carries the same caveat). The lineage is in
the store: the maps' manifest names their job and the fitted model's ``fit_job``; each job's
record says which side of which split it used (``defect_images``, ``params.defects``).
"""

from __future__ import annotations

from typing import Any

from shared.errors import InvalidInputError, NotFoundError
from shared.jobs.store import JobStore
from shared.schemas.dataset_maps import DatasetMapManifest, manifest_key
from shared.schemas.jobs import JobRecord
from shared.storage.base import ObjectStore


def reference_lineage(store: ObjectStore, jobs: JobStore, maps_prefix: str) -> dict[str, Any]:
    """``reference_held_out`` (True, False, or None where the records do not tell), why
    (``reference_held_out_note``), and the map and fit jobs it was read from."""
    try:
        manifest = DatasetMapManifest.from_bytes(store.get_bytes(manifest_key(maps_prefix)))
    except (NotFoundError, InvalidInputError):
        return _verdict(None, f"{maps_prefix} holds no readable dataset-map manifest")
    fit_job = (manifest.tocoad or {}).get("fit_job")
    found = {"reference_map_job": manifest.job_id, "reference_fit_job": fit_job}
    if fit_job is None:
        if manifest.mode not in (None, "tocoad"):
            return found | _verdict(True, f"{manifest.mode} maps: no fit saw any image")
        return found | _verdict(None, "the reference maps name no ToCoAD fit")
    fit, maps = _record(jobs, fit_job), _record(jobs, manifest.job_id)
    if fit is None:
        return found | _verdict(None, f"the ToCoAD fit's record {fit_job} is gone")
    pasted = fit.outputs.get("defect_images") or {}
    if not pasted.get("images"):
        return found | _verdict(True, "the ToCoAD fit pasted no labelled defect images")
    return found | _compare(fit, pasted, maps)


def _compare(fit: JobRecord, pasted: dict[str, Any], maps: JobRecord | None) -> dict[str, Any]:
    """The verdict when the fit pasted labelled defects: held out only if the maps read
    another dataset or split, or the reference side of a split the fit pasted the other side
    of, both sides held apart (``reference_held_out`` of each record)."""
    checked = {} if maps is None else maps.outputs.get("defect_images") or {}
    if not checked:
        return _verdict(None, "the reference map job's record names no labelled-defect side")
    assert maps is not None
    fit_spec, map_spec = fit.params.get("defects") or {}, maps.params.get("defects") or {}
    where = ("dataset", "split")
    if all(k in fit_spec and k in map_spec for k in where) and any(
        fit_spec[k] != map_spec[k] for k in where
    ):
        return _verdict(True, "the fit pasted defects of another dataset or split")
    apart = pasted.get("side") == "paste" and checked.get("side") == "reference"
    if apart and pasted.get("reference_held_out") and checked.get("reference_held_out"):
        return _verdict(
            True,
            f"{checked.get('images')} reference images held out of the ToCoAD fit, "
            f"which pasted {pasted.get('images')} others",
        )
    return _verdict(
        False,
        f"the ToCoAD fit pasted {pasted.get('images')} images of side "
        f"{pasted.get('side')!r}, the reference maps read side {checked.get('side')!r} "
        "(not held apart): the labelled defects may score high and raise the gate",
    )


def _record(jobs: JobStore, job_id: str | None) -> JobRecord | None:
    if job_id is None:
        return None
    try:
        return jobs.get(job_id)
    except (NotFoundError, InvalidInputError, ValueError):  # gone, or not a record
        return None


def _verdict(held_out: bool | None, note: str) -> dict[str, Any]:
    return {"reference_held_out": held_out, "reference_held_out_note": note}
