"""ToCoAD categories: a fit job stores the model beside the category; maps then use it."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch

from services.anomaly_map import service
from services.anomaly_map.engine import MapEngine
from services.anomaly_map.tocoad_fit import MODEL_FILE, state_from_bytes
from shared.errors import ConflictError, InvalidInputError
from shared.imaging.intake import ImageLimits
from shared.jobs.context import JobContext
from shared.jobs.store import JobStore
from shared.storage.filesystem import FileObjectStore
from tests.unit.anomaly_map.test_service_support import (
    image_bytes,
    make_engine,
    make_settings,
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
    service.put_category(
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
    service.run_tocoad_fit(ctx, engine)
    return ctx


def test_map_before_a_fit_is_a_conflict(engine: MapEngine, tmp_path: Path) -> None:
    # when / then
    with pytest.raises(ConflictError) as info:
        service.generate_map(
            engine, image_bytes(seed=5), service.MapRequest("fabric"), make_settings(tmp_path)
        )
    assert info.value.code == "tocoad_not_fitted"


def test_fit_stores_the_model_and_maps_use_it(engine: MapEngine, tmp_path: Path) -> None:
    # given
    ctx = _fit(engine)
    record = engine.categories.get("fabric")
    # when
    result = service.generate_map(
        engine, image_bytes(seed=5), service.MapRequest("fabric"), make_settings(tmp_path)
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
    service.run_dataset_maps(ctx, engine, make_settings(tmp_path))
    # then
    manifest = json.loads(engine.categories.store.get_bytes("out/f/manifest.json"))
    assert manifest["mode"] == "tocoad"
    assert manifest["grid"] == 64
