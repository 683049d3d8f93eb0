"""Dataset map jobs run directly with a real JobContext on a local-folder store."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from services.anomaly_map.config import AnomalyMapSettings
from services.anomaly_map.params import LabelledDefects
from services.anomaly_map.runtime.engine import MapEngine
from services.anomaly_map.stores.labelled_defects import select_defects
from services.anomaly_map.stores.maps import decode_npy
from services.anomaly_map.usecases.categories import put_category
from services.anomaly_map.usecases.dataset_maps import default_output_prefix, run_dataset_maps
from shared.errors import InvalidInputError, JobCanceledError
from shared.imaging.intake import ImageLimits
from shared.jobs.context import JobContext
from shared.jobs.store import JobStore
from shared.schemas.dataset_maps import read_scores_csv
from shared.storage.filesystem import FileObjectStore
from tests.unit.anomaly_map.test_service_support import (
    image_bytes,
    make_engine,
    make_settings,
    small_spec,
    tiny_scorers,
)
from tests.unit.anomaly_map.test_service_tocoad import _store_labelled_dataset

NAMES = ["a.png", "b.jpg", "c.2024.01.png", "d.bmp", "e.png"]


class CountingEngine(MapEngine):
    """Counts the images it scores."""

    scored: list[int]

    def score(self, images, record, mode):  # type: ignore[no-untyped-def]
        self.scored.append(len(images))
        return super().score(images, record, mode)


@pytest.fixture
def settings(tmp_path: Path) -> AnomalyMapSettings:
    return make_settings(tmp_path, max_batch_size=2)


@pytest.fixture
def engine(tmp_path: Path, settings) -> CountingEngine:
    base = make_engine(settings, FileObjectStore(tmp_path / "store"))
    engine = CountingEngine(base.scorers, base.categories, limits=base.limits)
    engine.scored = []
    put_category(
        engine.categories,
        "tile",
        small_spec(),
        [("r.png", image_bytes(seed=9))],
        tokenizer=tiny_scorers().bundle.tokenizer,
        limits=ImageLimits(),
        max_references=4,
    )
    for i, name in enumerate(NAMES):
        fmt = {"png": "PNG", "jpg": "JPEG", "bmp": "BMP"}[name.rsplit(".", 1)[1]]
        engine.categories.store.put_bytes(f"data/set/{name}", image_bytes(seed=i, fmt=fmt))
    engine.categories.store.put_bytes("data/set/notes.txt", b"not an image")
    return engine


def _context(engine: MapEngine, **params: object) -> JobContext:
    jobs = JobStore(engine.categories.store)
    record = jobs.create(
        kind="anomaly_map_dataset",
        task_name="t",
        queue="maps",
        params={"category": "tile", "prefix": "data/set/", **params},
    )
    return JobContext(jobs, record, min_interval_s=0.0)


def test_writes_one_raw_map_per_image_with_the_full_stem(engine, settings) -> None:
    # given
    ctx = _context(engine)
    out = default_output_prefix("tile", ctx.job_id)
    # when
    artifacts = run_dataset_maps(ctx, engine, settings)
    # then
    maps = engine.categories.store.list(f"{out}maps/")
    assert maps == sorted(f"{out}maps/{n.rsplit('.', 1)[0]}.npy" for n in NAMES)
    first = decode_npy(engine.categories.store.get_bytes(f"{out}maps/c.2024.01.npy"))
    assert first.dtype == np.float32
    assert first.shape == (5, 5)
    assert artifacts == [f"{out}manifest.json"]


def test_scores_csv_and_manifest_describe_every_image(engine, settings) -> None:
    # given
    ctx = _context(engine)
    out = default_output_prefix("tile", ctx.job_id)
    # when
    run_dataset_maps(ctx, engine, settings)
    # then
    rows = read_scores_csv(engine.categories.store.get_bytes(f"{out}scores.csv"))
    manifest = json.loads(engine.categories.store.get_bytes(f"{out}manifest.json"))
    assert [r.image_key for r in rows] == [f"data/set/{n}" for n in NAMES]
    assert manifest["count"] == 5
    assert manifest["grid"] == 5
    assert manifest["maps"]["data/set/b.jpg"] == f"{out}maps/b.npy"
    for row in rows:
        stored = decode_npy(engine.categories.store.get_bytes(manifest["maps"][row.image_key]))
        assert row.map_max == pytest.approx(float(stored.max()), abs=1e-5)


def test_progress_and_throughput_are_in_the_job_record(engine, settings) -> None:
    # given
    ctx = _context(engine)
    # when
    run_dataset_maps(ctx, engine, settings)
    # then
    record = ctx.jobs.get(ctx.job_id)
    assert record.metrics["done"] == 5
    assert record.metrics["images_per_s"] > 0
    assert record.outputs["count"] == 5


def test_resumed_job_skips_images_of_checkpointed_batches(engine, settings) -> None:
    # given a first attempt that stopped after two batches (4 images)
    ctx = _context(engine)
    ctx.jobs.request_cancel(ctx.job_id)
    cancel_key = ctx.jobs.cancel_key(ctx.job_id)
    calls = {"n": 0}
    original = ctx.check_cancel

    def cancel_after_two() -> None:
        calls["n"] += 1
        if calls["n"] > 2:
            original()

    ctx.check_cancel = cancel_after_two  # type: ignore[method-assign]
    with pytest.raises(JobCanceledError):
        run_dataset_maps(ctx, engine, settings)
    engine.categories.store.delete(cancel_key)
    engine.scored.clear()
    # when the job runs again
    run_dataset_maps(_resume(ctx), engine, settings)
    # then only the last image was scored and every map exists once
    assert engine.scored == [1]
    record = ctx.jobs.get(ctx.job_id)
    assert record.outputs["resumed_from"] == 4
    assert record.outputs["count"] == 5


@pytest.mark.parametrize(("every_s", "segments"), [(0.0, 3), (3600.0, 1)])
def test_checkpoint_segments_are_saved_at_most_so_often(
    engine, settings, every_s: float, segments: int
) -> None:
    # given: 5 images in batches of 2; each segment syncs the store first (JobStore)
    settings = settings.model_copy(update={"checkpoint_every_s": every_s})
    ctx = _context(engine)
    # when
    run_dataset_maps(ctx, engine, settings)
    # then: one a batch when due every time, else one at the end, holding every image
    saved = ctx.store.list(f"{ctx.prefix}checkpoints/")
    assert len(saved) == segments
    rows = [row for key in saved for row in json.loads(ctx.store.get_bytes(key))["rows"]]
    assert sorted(row[0] for row in rows) == [f"data/set/{n}" for n in NAMES]


def _resume(ctx: JobContext) -> JobContext:
    return JobContext(ctx.jobs, ctx.jobs.get(ctx.job_id), min_interval_s=0.0)


def test_cancel_stops_between_batches(engine, settings) -> None:
    # given
    ctx = _context(engine)
    ctx.jobs.request_cancel(ctx.job_id)
    # when / then
    with pytest.raises(JobCanceledError):
        run_dataset_maps(ctx, engine, settings)
    assert engine.scored == []


def test_corrupt_image_is_skipped_and_listed(engine, settings) -> None:
    # given
    engine.categories.store.put_bytes("data/set/zz.png", b"\x89PNG\r\n\x1a\ntruncated")
    ctx = _context(engine)
    # when
    run_dataset_maps(ctx, engine, settings)
    # then
    manifest = json.loads(
        engine.categories.store.get_bytes(
            f"{default_output_prefix('tile', ctx.job_id)}manifest.json"
        )
    )
    assert manifest["count"] == 5
    assert "data/set/zz.png" in manifest["skipped"]


def test_two_images_with_the_same_stem_are_refused(engine, settings) -> None:
    # given
    engine.categories.store.put_bytes("data/set/a.jpg", image_bytes(fmt="JPEG"))
    # when / then
    with pytest.raises(InvalidInputError) as info:
        run_dataset_maps(_context(engine), engine, settings)
    assert info.value.code == "map_name_collision"


def test_nested_folders_mirror_into_the_maps_folder(engine, settings) -> None:
    # given
    engine.categories.store.put_bytes("data/set/sub/a.png", image_bytes(seed=7))
    ctx = _context(engine, output_prefix="out/run1/")
    # when
    run_dataset_maps(ctx, engine, settings)
    # then
    assert engine.categories.store.exists("out/run1/maps/sub/a.npy")
    assert engine.categories.store.exists("out/run1/maps/a.npy")


def test_empty_prefix_fails_with_a_clear_code(engine, settings) -> None:
    # when / then
    with pytest.raises(InvalidInputError) as info:
        run_dataset_maps(_context(engine, prefix="data/none/"), engine, settings)
    assert info.value.code == "no_images"


def test_labelled_defect_images_of_a_stored_dataset_get_maps_and_scores(
    engine: CountingEngine, settings: AnomalyMapSettings
) -> None:
    # given: a stored dataset of three images, two of them with a box
    store = engine.categories.store
    assert isinstance(store, FileObjectStore)
    name = _store_labelled_dataset(store, [[10, 10, 40, 30], [], [50, 20, 90, 60]])
    ctx = _context(engine, prefix=None, defects={"dataset": name, "split": "train"})
    out = default_output_prefix("tile", ctx.job_id)
    # when
    run_dataset_maps(ctx, engine, settings)
    # then: only the images with boxes are mapped and scored
    rows = read_scores_csv(store.get_bytes(f"{out}scores.csv"))
    assert [r.image_key.rpartition("/")[2] for r in rows] == ["d0.png", "d2.png"]
    assert store.list(f"{out}maps/") == [f"{out}maps/d0.npy", f"{out}maps/d2.npy"]


def test_the_reference_side_maps_only_images_a_paste_side_fit_never_saw(
    engine: CountingEngine, settings: AnomalyMapSettings
) -> None:
    # given a stored dataset of 20 defect images
    store = engine.categories.store
    assert isinstance(store, FileObjectStore)
    name = _store_labelled_dataset(store, [[10, 10, 40, 30]] * 20)
    defects = {"dataset": name, "split": "train", "side": "reference"}
    ctx = _context(engine, prefix=None, defects=defects)
    out = default_output_prefix("tile", ctx.job_id)
    # when
    run_dataset_maps(ctx, engine, settings)
    # then: the held-out share is mapped, and the record says how the split was divided
    paste = select_defects(store, LabelledDefects(dataset=name, side="paste"))
    mapped = {
        r.image_key.rpartition("/")[2] for r in read_scores_csv(store.get_bytes(f"{out}scores.csv"))
    }
    assert len(mapped) == 6
    assert mapped.isdisjoint(r.file_name for r in paste.records)
    outputs = ctx.jobs.get(ctx.job_id).outputs
    assert outputs["defect_images"]["reference_held_out"] is True
    assert (outputs["defect_images"]["paste_images"], outputs["count"]) == (14, 6)
