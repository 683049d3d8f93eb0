"""The pseudo-label job's record says whether its reference maps' labelled defects were held
out of the ToCoAD fit that made those maps (``label_reference``)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from services.pretrain.usecases.label_reference import reference_lineage
from shared.jobs.store import JobStore
from shared.schemas.dataset_maps import DatasetMapManifest, manifest_key
from shared.schemas.jobs import JobState
from shared.storage.filesystem import FileObjectStore
from tests.unit.pretrain.test_pseudo_label_jobs import REFERENCE, _json, _pool, _reference, _run

SCORES = [0.19, 0.2, 0.21, 0.22, 0.23, 0.78, 0.79, 0.8, 0.81, 0.82]


def _side(side: str, images: int, held_out: bool = True) -> dict[str, Any]:
    return {"side": side, "images": images, "reference_held_out": held_out}


def _lineage(
    store: FileObjectStore,
    pasted: dict[str, Any] | None,
    checked: dict[str, Any] | None,
    *,
    fit_split: str = "train",
    mode: str = "tocoad",
) -> tuple[str, str]:
    """A fit job and a map job over labelled defects, as their records leave them, and the
    reference maps' manifest naming both; returns (map job id, fit job id)."""
    jobs = JobStore(store)
    fit = jobs.create(
        kind="tocoad_fit",
        task_name="t",
        queue="q",
        params={"defects": {"dataset": "steel-lab", "split": fit_split, "side": "paste"}},
    )
    fit.outputs = {"defect_images": pasted}
    jobs.save(fit)
    maps = jobs.create(
        kind="anomaly_map_dataset",
        task_name="t",
        queue="q",
        params={"defects": {"dataset": "steel-lab", "split": "train", "side": "reference"}},
    )
    maps.outputs = {} if checked is None else {"defect_images": checked}
    jobs.save(maps)
    tocoad = {"fit_job": fit.id, "model_version": "m1"} if mode == "tocoad" else None
    manifest = DatasetMapManifest(
        category="steel", count=0, maps={}, job_id=maps.id, mode=mode, tocoad=tocoad
    )
    store.put_bytes(manifest_key(REFERENCE), manifest.to_bytes())
    return maps.id, fit.id


@pytest.fixture
def pool(tmp_path: Path) -> FileObjectStore:
    store = FileObjectStore(tmp_path / "pool")
    _pool(store, scores=True)
    _reference(store, SCORES)
    return store


def test_reference_maps_of_the_held_out_side_are_recorded_as_held_out(
    pool: FileObjectStore, tmp_path: Path
) -> None:
    # given: the fit pasted the paste side, the reference maps read the reference side
    map_job, fit_job = _lineage(pool, _side("paste", 30), _side("reference", 10))
    # when
    record = _run(pool, tmp_path, gate="auto", reference_maps_prefix=REFERENCE)
    # then: on the record and in summary.json
    assert record.state == JobState.SUCCEEDED, record.error
    out, summary = record.outputs, _json(pool, record.outputs["summary"])
    for found in (out, summary):
        assert found["reference_held_out"] is True
        assert (found["reference_map_job"], found["reference_fit_job"]) == (map_job, fit_job)
    assert out["reference_held_out_note"].startswith("10 reference images held out")


def test_reference_maps_the_fit_pasted_too_are_recorded_as_not_held_out(
    pool: FileObjectStore, tmp_path: Path
) -> None:
    # given: too few labelled images to split: both jobs used all of them
    _lineage(pool, _side("paste", 4, held_out=False), _side("reference", 4, held_out=False))
    # when
    record = _run(pool, tmp_path, gate="auto", reference_maps_prefix=REFERENCE)
    # then
    assert record.state == JobState.SUCCEEDED, record.error
    assert record.outputs["reference_held_out"] is False
    assert _json(pool, record.outputs["summary"])["reference_held_out"] is False
    assert "may score high" in record.outputs["reference_held_out_note"]


def test_reference_maps_without_a_manifest_are_recorded_as_unknown(
    pool: FileObjectStore, tmp_path: Path
) -> None:
    record = _run(pool, tmp_path, gate="auto", reference_maps_prefix=REFERENCE)
    assert record.state == JobState.SUCCEEDED, record.error
    assert record.outputs["reference_held_out"] is None
    assert "manifest" in record.outputs["reference_held_out_note"]


def test_a_job_without_reference_maps_records_no_lineage(
    pool: FileObjectStore, tmp_path: Path
) -> None:
    record = _run(pool, tmp_path, gate="auto")
    assert record.state == JobState.SUCCEEDED, record.error
    assert "reference_held_out" not in record.outputs


@pytest.mark.parametrize(
    ("pasted", "checked", "options", "held_out"),
    [
        (None, _side("reference", 5), {}, True),  # the fit pasted nothing
        (_side("paste", 0), _side("reference", 5), {}, True),
        (_side("paste", 9), _side("reference", 5), {"fit_split": "val"}, True),
        (_side("all", 9), _side("reference", 5), {}, False),
        (_side("paste", 9), _side("all", 5), {}, False),
        (_side("paste", 9), None, {}, None),  # the maps name no labelled-defect side
        (None, None, {"mode": "kead"}, True),  # zero-shot maps: no fit at all
    ],
)
def test_the_lineage_verdicts(
    tmp_path: Path,
    pasted: dict[str, Any] | None,
    checked: dict[str, Any] | None,
    options: dict[str, Any],
    held_out: bool | None,
) -> None:
    store = FileObjectStore(tmp_path / "st")
    _lineage(store, pasted, checked, **options)
    found = reference_lineage(store, JobStore(store), REFERENCE)
    assert found["reference_held_out"] is held_out, found["reference_held_out_note"]


def test_a_fit_record_that_is_gone_leaves_the_lineage_unknown(tmp_path: Path) -> None:
    # given
    store = FileObjectStore(tmp_path / "st")
    _, fit_job = _lineage(store, _side("paste", 9), _side("reference", 5))
    store.delete(JobStore.record_key(fit_job))
    # when
    found = reference_lineage(store, JobStore(store), REFERENCE)
    # then
    assert found["reference_held_out"] is None
    assert fit_job in found["reference_held_out_note"]
