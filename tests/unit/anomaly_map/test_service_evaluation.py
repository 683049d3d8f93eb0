"""Evaluation: image/mask pairing, label rules and metrics on a synthetic dataset."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from services.anomaly_map.usecases.categories import put_category
from services.anomaly_map.usecases.evaluations import (
    plan_local_folder,
    plan_samples,
    run_evaluation,
)
from shared.imaging.intake import ImageLimits
from shared.jobs.context import JobContext
from shared.jobs.store import JobStore
from shared.storage.filesystem import FileObjectStore
from tests.unit.anomaly_map.test_service_support import (
    image_bytes,
    make_engine,
    make_settings,
    mask_bytes,
    small_spec,
    tiny_scorers,
)


def test_masks_next_to_images_are_paired_and_not_scored_as_images() -> None:
    # given
    keys = [
        "d/Free/Imgs/n1.jpg",
        "d/Free/Imgs/n1.png",
        "d/Crack/Imgs/c1.jpg",
        "d/Crack/Imgs/c1.png",
    ]
    # when
    plans = plan_samples(keys, "d/", "d/", ".png", ["d/Free/"], set(keys))
    # then
    assert [(p.key, p.mask_key, p.label) for p in plans] == [
        ("d/Crack/Imgs/c1.jpg", "d/Crack/Imgs/c1.png", 1),
        ("d/Free/Imgs/n1.jpg", "d/Free/Imgs/n1.png", 0),
    ]


def test_masks_under_their_own_prefix_are_found_by_relative_stem() -> None:
    # given
    keys = ["img/a.b.png", "img/c.png"]
    existing = {*keys, "gt/a.b_mask.png"}
    # when
    plans = plan_samples(keys, "img/", "gt/", "_mask.png", [], existing)
    # then
    assert [(p.key, p.mask_key, p.label) for p in plans] == [
        ("img/a.b.png", "gt/a.b_mask.png", None),
        ("img/c.png", None, None),
    ]


def test_local_folder_plan_reads_the_magnetic_tile_layout(tmp_path: Path) -> None:
    # given
    for folder, stem in (("MT_Free", "n"), ("MT_Crack", "c")):
        (tmp_path / folder / "Imgs").mkdir(parents=True)
        (tmp_path / folder / "Imgs" / f"{stem}.jpg").write_bytes(b"x")
        (tmp_path / folder / "Imgs" / f"{stem}.png").write_bytes(b"x")
    # when
    plans = plan_local_folder(tmp_path, ["MT_Free"])
    # then
    assert [(p.key, p.label) for p in plans] == [
        ("MT_Crack/Imgs/c.jpg", 1),
        ("MT_Free/Imgs/n.jpg", 0),
    ]


@pytest.fixture
def dataset(tmp_path: Path):
    settings = make_settings(tmp_path)
    engine = make_engine(settings, FileObjectStore(tmp_path / "store"))
    store = engine.categories.store
    put_category(
        engine.categories,
        "tile",
        small_spec(),
        [("r.png", image_bytes(seed=50))],
        tokenizer=tiny_scorers().bundle.tokenizer,
        limits=ImageLimits(),
        max_references=4,
    )
    for i in range(3):
        store.put_bytes(f"ds/good/n{i}.jpg", image_bytes(seed=i, fmt="JPEG"))
        store.put_bytes(f"ds/good/n{i}.png", mask_bytes(48, 64, None))
        store.put_bytes(f"ds/bad/d{i}.jpg", image_bytes(seed=10 + i, fmt="JPEG"))
        store.put_bytes(f"ds/bad/d{i}.png", mask_bytes(48, 64, (10, 10, 30, 40)))
    store.put_bytes("ds/bad/unlabelled.jpg", image_bytes(seed=20, fmt="JPEG"))
    store.put_bytes("ds/bad/unlabelled.png", mask_bytes(48, 64, None))
    return settings, engine


def _run(settings, engine, **params: object) -> JobContext:
    jobs = JobStore(engine.categories.store)
    record = jobs.create(
        kind="anomaly_map_evaluation",
        task_name="t",
        queue="maps",
        params={"category": "tile", "images_prefix": "ds/", **params},
    )
    ctx = JobContext(jobs, record, min_interval_s=0.0)
    run_evaluation(ctx, engine, settings)
    return ctx


def test_evaluation_writes_results_with_the_three_metrics(dataset) -> None:
    # given
    settings, engine = dataset
    # when
    ctx = _run(settings, engine, normal_prefixes=["ds/good/"])
    # then
    record = ctx.jobs.get(ctx.job_id)
    results = json.loads(engine.categories.store.get_bytes(record.outputs["results"]))
    for metric in ("image_auroc", "pixel_auroc", "aupro"):
        assert 0.0 <= results["metrics"][metric] <= 1.0
    assert results["counts"] == {
        "images": 7,
        "normal": 3,
        "anomalous": 4,
        "pixel_images": 6,
        "pixel_excluded": 1,
        "skipped": 0,
    }
    assert record.outputs["results"] == f"evaluations/tile/{ctx.job_id}/results.json"


def test_labels_come_from_masks_without_normal_prefixes(dataset) -> None:
    # given
    settings, engine = dataset
    # when
    ctx = _run(settings, engine)
    # then
    counts = ctx.jobs.get(ctx.job_id).outputs["counts"]
    assert (counts["normal"], counts["anomalous"]) == (4, 3)


def test_metric_that_cannot_be_computed_is_null_with_a_reason(dataset) -> None:
    # given only normal images
    settings, engine = dataset
    # when
    ctx = _run(settings, engine, images_prefix="ds/good/")
    # then
    results = json.loads(
        engine.categories.store.get_bytes(ctx.jobs.get(ctx.job_id).outputs["results"])
    )
    assert results["metrics"]["image_auroc"] is None
    assert "both normal and anomalous" in results["unavailable"]["image_auroc"]
