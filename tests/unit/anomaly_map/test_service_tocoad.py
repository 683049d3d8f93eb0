"""ToCoAD categories: a fit job stores the model beside the category; maps then use it."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch

from services.anomaly_map.ml.tocoad.defects import exemplars_from_boxes, natives_from_boxes
from services.anomaly_map.runtime.engine import MapEngine, build_engine
from services.anomaly_map.stores.labelled_defects import split_sides
from services.anomaly_map.stores.tocoad_models import MODEL_FILE, state_from_bytes
from services.anomaly_map.usecases import tocoad_fits
from services.anomaly_map.usecases.anomaly_maps import MapRequest, generate_map
from services.anomaly_map.usecases.categories import prompt_tokenizer, put_category
from services.anomaly_map.usecases.dataset_maps import run_dataset_maps
from services.anomaly_map.usecases.evaluations import run_evaluation
from services.anomaly_map.usecases.tocoad_fits import run_tocoad_fit
from shared.errors import ConflictError, InvalidInputError, UnavailableError
from shared.imaging.intake import ImageLimits
from shared.jobs.context import JobContext
from shared.jobs.store import JobStore
from shared.schemas.detection_dataset import (
    DATASET_FILE,
    IMAGES_DIR,
    MANIFEST_FILE,
    SPLITS_FILE,
    Box,
    DetectionDataset,
    ImageRecord,
    latest_key,
    version_prefix,
)
from shared.storage.filesystem import FileObjectStore
from tests.unit.anomaly_map.test_service_support import (
    image_bytes,
    make_engine,
    make_settings,
    mask_bytes,
    small_spec,
    tiny_scorers,
)

# tocoad-spec §10 CI config, shrunk further: a fit takes a few seconds on one CPU thread.
TINY_TOCOAD: dict[str, Any] = {
    "image_size": 64,
    "backbone": "resnet18_quarter",
    "stage1": {"iters": 2, "batch_size": 2, "val_size": 2, "val_every": 2},
    "stage2": {"iters": 2, "batch_size": 2, "proj_dim": 16, "pred_dim": 8},
    "bank": {"coreset_ratio": 0.5, "embed_dim": 32},
    "generator": {"n_procedural_textures": 2},
    "checkpoint_every": 1,
    "log_every": 1,
}


@pytest.fixture
def engine(tmp_path: Path) -> MapEngine:
    torch.set_num_threads(1)
    settings = make_settings(tmp_path)
    engine = make_engine(settings, FileObjectStore(tmp_path / "store"))
    uploads = [(f"{i}.png", image_bytes(64, 64, seed=i)) for i in range(3)]
    put_category(
        engine.categories,
        "fabric",
        small_spec(method="tocoad"),
        uploads,
        tokenizer=tiny_scorers().bundle.tokenizer,
        limits=ImageLimits(),
        max_references=8,
    )
    return engine


def _fit(engine: MapEngine, **params: Any) -> JobContext:
    jobs = JobStore(engine.categories.store)
    record = jobs.create(
        kind="anomaly_map_tocoad_fit",
        task_name="t",
        queue="maps",
        params={"category": "fabric", "config": TINY_TOCOAD, **params},
    )
    ctx = JobContext(jobs, record, min_interval_s=0.0)
    run_tocoad_fit(ctx, engine)
    return ctx


def test_map_before_a_fit_is_a_conflict(engine: MapEngine, tmp_path: Path) -> None:
    # when / then
    with pytest.raises(ConflictError) as info:
        generate_map(engine, image_bytes(seed=5), MapRequest("fabric"), make_settings(tmp_path))
    assert info.value.code == "tocoad_not_fitted"


def test_fit_stores_the_model_and_maps_use_it(engine: MapEngine, tmp_path: Path) -> None:
    # given
    ctx = _fit(engine)
    record = engine.categories.get("fabric")
    # when
    result = generate_map(
        engine, image_bytes(seed=5), MapRequest("fabric"), make_settings(tmp_path)
    )
    # then
    assert ctx.jobs.get(ctx.job_id).outputs["model"] == f"{record.prefix}{MODEL_FILE}"
    assert result.mode == "tocoad"
    assert result.anomaly_map.shape == (64, 64)
    assert result.zero_shot_score is None
    assert np.isfinite(result.image_score)


def test_fit_checkpoints_load_safely_for_a_resume(engine: MapEngine) -> None:
    # given
    ctx = _fit(engine)
    # when
    saved = ctx.load_checkpoint("tocoad")
    # then
    assert saved is not None
    assert state_from_bytes(saved)["format"]


def test_unknown_config_key_is_refused(engine: MapEngine) -> None:
    # when / then
    with pytest.raises(InvalidInputError) as info:
        _fit(engine, config={"iterations": 3})
    assert info.value.code == "invalid_config"


def test_dataset_maps_with_tocoad_write_maps_of_its_input_side(engine: MapEngine, tmp_path) -> None:
    # given
    _fit(engine)
    engine.categories.store.put_bytes("data/f/a.png", image_bytes(seed=8))
    jobs = JobStore(engine.categories.store)
    record = jobs.create(
        kind="anomaly_map_dataset",
        task_name="t",
        queue="maps",
        params={"category": "fabric", "prefix": "data/f/", "output_prefix": "out/f/"},
    )
    ctx = JobContext(jobs, record, min_interval_s=0.0)
    # when
    run_dataset_maps(ctx, engine, make_settings(tmp_path))
    # then
    manifest = json.loads(engine.categories.store.get_bytes("out/f/manifest.json"))
    assert manifest["mode"] == "tocoad"
    assert manifest["grid"] == 64


@pytest.fixture
def offline_engine(tmp_path: Path) -> MapEngine:
    """An engine exactly as the service builds it, with no CLIP weights and no random weights."""
    torch.set_num_threads(1)
    settings = make_settings(tmp_path, allow_random_weights=False)
    engine = build_engine(settings, FileObjectStore(tmp_path / "store"))
    uploads = [(f"{i}.png", image_bytes(48, 96, seed=i)) for i in range(3)]
    put_category(
        engine.categories,
        "fabric",
        small_spec(method="tocoad"),
        uploads,
        tokenizer=prompt_tokenizer(settings),
        limits=ImageLimits(),
        max_references=8,
    )
    return engine


def test_tocoad_fits_maps_and_evaluates_without_any_clip_weights(
    offline_engine: MapEngine, tmp_path: Path
) -> None:
    # given a fit on the tiny preset
    ctx = _fit(offline_engine, preset="tiny", config={})
    store = offline_engine.categories.store
    for i in range(4):
        store.put_bytes(f"ev/img/{i}.png", image_bytes(48, 96, seed=20 + i))
        store.put_bytes(f"ev/mask/{i}.png", mask_bytes(48, 96, (10, 20, 30, 60) if i % 2 else None))
    jobs = JobStore(store)
    record = jobs.create(
        kind="anomaly_map_evaluation",
        task_name="t",
        queue="maps",
        params={"category": "fabric", "images_prefix": "ev/img/", "masks_prefix": "ev/mask/"},
    )
    # when
    result = generate_map(
        offline_engine, image_bytes(seed=5), MapRequest("fabric"), make_settings(tmp_path)
    )
    run_evaluation(
        JobContext(jobs, record, min_interval_s=0.0), offline_engine, make_settings(tmp_path)
    )
    # then maps and the evaluation name the fitted ToCoAD model, and CLIP was never loaded
    fit = ctx.jobs.get(ctx.job_id)
    version = fit.outputs["model_version"]
    summary = json.loads(store.get_bytes(jobs.get(record.id).outputs["results"]))
    assert version.startswith("tocoad-")
    assert result.model == version
    assert summary["model"] == version
    assert summary["tocoad"]["fit_job"] == ctx.job_id
    assert summary["tocoad"]["config"]["image_size"] == 64
    assert summary["eval_size"] == 64
    assert not offline_engine.clip.is_loaded


def test_kead_on_an_offline_engine_is_503_model_weights_missing(offline_engine: MapEngine) -> None:
    # given
    record = offline_engine.categories.get("fabric")
    # when / then
    with pytest.raises(UnavailableError) as info:
        offline_engine.score([np.zeros((8, 8, 3), np.uint8)], record, "kead")
    assert info.value.code == "model_weights_missing"


def test_max_images_that_drops_images_leaves_a_warning(offline_engine: MapEngine) -> None:
    # given more normal images under a prefix than max_images keeps
    for i in range(4):
        offline_engine.categories.store.put_bytes(f"n/{i}.png", image_bytes(32, 32, seed=40 + i))
    # when
    ctx = _fit(offline_engine, preset="tiny", config={}, normal_prefix="n/", max_images=5)
    # then
    outputs = ctx.jobs.get(ctx.job_id).outputs
    assert outputs["images"] == 5
    assert "keeps 5 of 7" in outputs["warnings"][0]


def test_fit_progress_reports_phases_and_an_eta(offline_engine: MapEngine) -> None:
    # given a job context that remembers every message
    messages: list[str] = []
    jobs = JobStore(offline_engine.categories.store)
    record = jobs.create(
        kind="anomaly_map_tocoad_fit",
        task_name="t",
        queue="maps",
        params={"category": "fabric", "preset": "tiny"},
    )
    ctx = JobContext(jobs, record, min_interval_s=0.0)
    original = ctx.progress

    def spy(percent: float, message: str = "", **kwargs: Any) -> None:
        messages.append(message)
        original(percent, message, **kwargs)

    ctx.progress = spy  # type: ignore[method-assign]
    # when
    run_tocoad_fit(ctx, offline_engine)
    # then the first messages name the phase, and the first training step carries an ETA
    assert messages[0] == "loading normal images"
    assert any(m.startswith("building anomaly textures") for m in messages)
    first_step = next(m for m in messages if m.startswith("stage1 1/"))
    assert "ETA" in first_step
    assert jobs.get(record.id).metrics["eta_s"] >= 0


@pytest.mark.parametrize(
    "config",
    [
        {"stage1": {"iters": 10**9}},
        {"stage1": {"lr": 1e30}},
        {"stage2": {"lr_heads": float("inf")}},
        {"bank": {"smoothing_sigma": float("nan")}},
        {"image_size": 2**20},
        {"seed": -1},
    ],
)
def test_absurd_numbers_in_a_fit_config_are_refused(
    offline_engine: MapEngine, config: dict[str, Any]
) -> None:
    # when / then
    with pytest.raises(InvalidInputError) as info:
        _fit(offline_engine, preset="tiny", config=config)
    assert info.value.code == "invalid_config"


def test_a_refit_of_the_same_version_is_served_at_the_next_request(
    offline_engine: MapEngine, tmp_path: Path
) -> None:
    # given a map from a first fit
    settings = make_settings(tmp_path)
    first_fit = _fit(offline_engine, preset="tiny", config={})
    first = generate_map(offline_engine, image_bytes(seed=5), MapRequest("fabric"), settings)
    # when another fit (another seed) replaces the model of the same category version
    second_fit = _fit(offline_engine, preset="tiny", config={"seed": 1})
    second = generate_map(offline_engine, image_bytes(seed=5), MapRequest("fabric"), settings)
    # then
    versions = {
        ctx.jobs.get(ctx.job_id).outputs["model_version"] for ctx in (first_fit, second_fit)
    }
    assert len(versions) == 2
    assert first.model != second.model
    assert second.model in versions


def _store_labelled_dataset(store: FileObjectStore, boxes: list[list[float]]) -> str:
    """A stored detection dataset version in the seam's layout (as finetune's import writes)."""
    prefix = version_prefix("steel", "v1")
    images = []
    for index, box in enumerate(boxes):
        name = f"d{index}.png"
        store.put_bytes(prefix + IMAGES_DIR + name, image_bytes(96, 64, seed=10 + index))
        record = ImageRecord(file_name=name, width=96, height=64, boxes=[])
        if box:
            x1, y1, x2, y2 = box
            record.boxes.append(Box(x1=x1, y1=y1, x2=x2, y2=y2, class_id=0))
        images.append(record)
    dataset = DetectionDataset(classes=["scratch"], images=images)
    store.put_bytes(prefix + DATASET_FILE, dataset.model_dump_json().encode())
    names = [im.file_name for im in images]
    store.put_bytes(prefix + SPLITS_FILE, json.dumps({"splits": {"train": names}}).encode())
    store.put_bytes(prefix + MANIFEST_FILE, b"{}")
    store.put_bytes(latest_key("steel"), b"v1")
    return "steel"


def test_a_fit_with_labelled_defects_cuts_them_into_exemplars(engine: MapEngine) -> None:
    # given a stored dataset: two images with a box, one without
    store = engine.categories.store
    assert isinstance(store, FileObjectStore)
    name = _store_labelled_dataset(store, [[10, 10, 40, 30], [50, 20, 90, 60], []])
    # when
    ctx = _fit(engine, defects={"dataset": name, "split": "train"})
    # then both boxes became exemplars, and the model info says which labels taught it
    outputs = ctx.jobs.get(ctx.job_id).outputs
    assert outputs["defect_exemplars"] == 2
    info = json.loads(store.get_bytes(outputs["model_info"]))
    assert info["defects"]["dataset"] == "steel"
    assert info["defect_exemplars"] == 2


def test_a_fit_whose_labelled_split_holds_no_box_warns_and_fits(engine: MapEngine) -> None:
    # given
    store = engine.categories.store
    assert isinstance(store, FileObjectStore)
    name = _store_labelled_dataset(store, [[], []])
    # when
    ctx = _fit(engine, defects={"dataset": f"{name}:v1"})
    # then
    outputs = ctx.jobs.get(ctx.job_id).outputs
    assert outputs["defect_exemplars"] == 0
    assert any("no usable defect box" in w for w in outputs["warnings"])


def test_a_fit_with_an_unknown_labelled_split_is_refused(engine: MapEngine) -> None:
    store = engine.categories.store
    assert isinstance(store, FileObjectStore)
    name = _store_labelled_dataset(store, [[10, 10, 40, 30]])
    with pytest.raises(InvalidInputError) as info:
        _fit(engine, defects={"dataset": name, "split": "mini-3"})
    assert info.value.code == "unknown_split"


def test_a_fit_pastes_only_the_paste_side_of_the_labelled_defects(
    engine: MapEngine, monkeypatch: pytest.MonkeyPatch
) -> None:
    # given 20 labelled defect images, each with a box of its own (x1 = 10 + index)
    store = engine.categories.store
    assert isinstance(store, FileObjectStore)
    name = _store_labelled_dataset(store, [[10 + i, 10, 60, 40] for i in range(20)])
    cut: list[float] = []

    def recording(image, boxes, *args, **kwargs):  # type: ignore[no-untyped-def]
        cut.extend(box[0] for box in boxes)
        return exemplars_from_boxes(image, boxes, *args, **kwargs)

    monkeypatch.setattr(tocoad_fits, "exemplars_from_boxes", recording)
    # when
    ctx = _fit(engine, defects={"dataset": name, "split": "train", "side": "paste"})
    # then only images of the paste side were cut, and the record says how many each side had
    sides = split_sides(_labelled_records(store))
    assert sorted(cut) == sorted(10.0 + int(n[1:-4]) for n in sides.paste)
    outputs = ctx.jobs.get(ctx.job_id).outputs
    assert outputs["defect_images"] == {
        "side": "paste",
        "images": 14,
        "paste_images": 14,
        "reference_images": 6,
        "reference_held_out": True,
        "reference_share": 0.3,
    }
    info = json.loads(store.get_bytes(outputs["model_info"]))
    assert info["defect_images"]["reference_images"] == 6


def test_a_fit_with_p_native_takes_native_samples_from_the_paste_side_only(
    engine: MapEngine, monkeypatch: pytest.MonkeyPatch
) -> None:
    # given 20 labelled defect images, each with a box of its own (x1 = 10 + index)
    store = engine.categories.store
    assert isinstance(store, FileObjectStore)
    name = _store_labelled_dataset(store, [[10 + i, 10, 60, 40] for i in range(20)])
    seen: list[float] = []

    def recording(image, boxes, *args, **kwargs):  # type: ignore[no-untyped-def]
        seen.extend(box[0] for box in boxes)
        return natives_from_boxes(image, boxes, *args, **kwargs)

    monkeypatch.setattr(tocoad_fits, "natives_from_boxes", recording)
    config = {**TINY_TOCOAD, "generator": {"n_procedural_textures": 2, "p_native": 0.5}}
    # when
    ctx = _fit(engine, config=config, defects={"dataset": name, "split": "train", "side": "paste"})
    # then only the paste side's images became native samples (96 x 64 at 64 px: 2 tiles each)
    sides = split_sides(_labelled_records(store))
    assert sorted(seen) == sorted(10.0 + int(n[1:-4]) for n in sides.paste)
    outputs = ctx.jobs.get(ctx.job_id).outputs
    assert outputs["native_samples"] == 2 * len(sides.paste)
    info = json.loads(store.get_bytes(outputs["model_info"]))
    assert info["native_samples"] == 2 * len(sides.paste)


def test_a_fit_with_p_native_zero_makes_no_native_sample(engine: MapEngine) -> None:
    store = engine.categories.store
    assert isinstance(store, FileObjectStore)
    name = _store_labelled_dataset(store, [[10, 10, 40, 30], [50, 20, 90, 60]])
    config = {**TINY_TOCOAD, "generator": {"n_procedural_textures": 2, "p_native": 0.0}}
    ctx = _fit(engine, config=config, defects={"dataset": name, "split": "train"})
    outputs = ctx.jobs.get(ctx.job_id).outputs
    assert outputs["defect_exemplars"] == 2
    assert outputs["native_samples"] == 0


def _labelled_records(store: FileObjectStore) -> list[ImageRecord]:
    prefix = version_prefix("steel", "v1")
    dataset = DetectionDataset.model_validate_json(store.get_bytes(prefix + DATASET_FILE))
    return [im for im in dataset.images if im.boxes]
