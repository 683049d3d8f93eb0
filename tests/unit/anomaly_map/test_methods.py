"""The scoring-method registry: it names exactly the modes the API accepts, and each method
is given what its declared needs ask for and nothing else (ToCoAD never loads CLIP)."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
from pydantic import ValidationError

from services.anomaly_map.api.schemas import MapParams
from services.anomaly_map.params.catalog import CATALOG
from services.anomaly_map.runtime.clip import LazyScorers, ScorerSet
from services.anomaly_map.runtime.engine import MapEngine, resolve_mode
from services.anomaly_map.runtime.methods import METHODS, MethodInputs, method_for
from services.anomaly_map.stores.categories import CategorySpec, CategoryStore
from services.anomaly_map.usecases.categories import put_category
from services.anomaly_map.usecases.tocoad_fits import run_tocoad_fit
from shared.errors import InvalidInputError
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

IMAGES = [np.random.default_rng(i).integers(0, 256, (48, 64, 3), dtype=np.uint8) for i in range(2)]


def _no_clip() -> ScorerSet:
    raise AssertionError("the CLIP encoder was loaded")


def _add_category(engine: MapEngine, spec: CategorySpec) -> None:
    uploads = [(f"{i}.png", image_bytes(64, 64, seed=i)) for i in range(3)]
    put_category(
        engine.categories,
        "fabric",
        spec,
        uploads,
        tokenizer=tiny_scorers().bundle.tokenizer,
        limits=ImageLimits(),
        max_references=8,
    )


def _fit_tiny(engine: MapEngine) -> None:
    jobs = JobStore(engine.categories.store)
    record = jobs.create(
        kind="anomaly_map_tocoad_fit",
        task_name="t",
        queue="maps",
        params={"category": "fabric", "preset": "tiny"},
    )
    run_tocoad_fit(JobContext(jobs, record, min_interval_s=0.0), engine)


def _spy(engine: MapEngine, monkeypatch: pytest.MonkeyPatch) -> list[str]:
    """Record which resources the engine gathers (the originals still run)."""
    gathered: list[str] = []

    def wrap(attribute: str, need: str) -> None:
        original: Callable[..., Any] = getattr(engine, attribute)

        def spy(*args: Any) -> Any:
            gathered.append(need)
            return original(*args)

        monkeypatch.setattr(engine, attribute, spy)

    wrap("_clip_scorer", "clip")
    wrap("text_features", "text")
    wrap("memory_bank", "references")
    wrap("_tocoad_model", "fitted_model")
    return gathered


def _declared(mode: str) -> list[str]:
    needs = method_for(mode).needs
    order = ("clip", "text", "references", "fitted_model")
    return [name for name in order if getattr(needs, name)]


def test_the_registry_names_exactly_the_modes_the_api_accepts() -> None:
    # given
    schema = MapParams.model_json_schema()["properties"]["mode"]
    # then the API publishes the catalogue's names and accepts each of them
    enum = next(option["enum"] for option in schema["anyOf"] if "enum" in option)
    assert enum == ["kead", "winclip", "tocoad"] == list(CATALOG)
    assert list(METHODS) == enum
    for name in enum:
        assert MapParams(category="c", mode=name).mode == name
        assert CategorySpec(map="steel", method=name).method == name
    assert all(name == method.name for name, method in METHODS.items())


def test_the_api_refuses_a_mode_outside_the_catalogue() -> None:
    # when / then
    with pytest.raises(ValidationError, match="unknown method 'patchcore'; one of kead, winclip"):
        MapParams(category="c", mode="patchcore")
    with pytest.raises(ValidationError, match="unknown method"):
        CategorySpec(map="steel", method="patchcore")


def test_an_unknown_mode_is_refused_with_the_list_of_methods() -> None:
    # when / then
    with pytest.raises(InvalidInputError) as info:
        method_for("patchcore")
    assert info.value.code == "mode_unavailable"
    assert "use kead, winclip or tocoad" in info.value.message


@pytest.mark.parametrize("mode", ["kead", "winclip"])
def test_a_clip_method_is_given_exactly_what_it_declares(
    mode: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # given a category with reference images (so the bank exists)
    torch.set_num_threads(1)
    engine = make_engine(make_settings(tmp_path), FileObjectStore(tmp_path / "store"))
    _add_category(engine, small_spec(method=mode))
    record = engine.categories.get("fabric")
    gathered = _spy(engine, monkeypatch)
    # when
    scores = engine.score(IMAGES, record, resolve_mode(None, record))
    # then
    assert sorted(set(gathered)) == sorted(_declared(mode))
    assert scores.maps.shape == (2, engine.grid_size, engine.grid_size)
    assert scores.zero_shot_scores is not None


def test_tocoad_scores_on_an_engine_that_cannot_load_clip(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # given an engine whose CLIP loader fails the test if it is ever called
    torch.set_num_threads(1)
    engine = MapEngine(
        LazyScorers(_no_clip),
        CategoryStore(FileObjectStore(tmp_path / "store")),
        limits=ImageLimits(),
        device=torch.device("cpu"),
    )
    _add_category(engine, small_spec(method="tocoad"))
    _fit_tiny(engine)
    record = engine.categories.get("fabric")
    gathered = _spy(engine, monkeypatch)
    # when
    scores = engine.score(IMAGES, record, "tocoad")
    # then
    assert sorted(set(gathered)) == sorted(_declared("tocoad")) == ["fitted_model"]
    assert scores.zero_shot_scores is None
    assert scores.maps.shape[0] == 2
    assert engine.model_for(record, "tocoad").startswith("tocoad-")
    assert engine.map_side(record, "tocoad") == scores.maps.shape[1]
    assert not engine.clip.is_loaded


def test_a_method_that_declares_no_tiling_is_refused_a_tiled_score(tmp_path: Path) -> None:
    # given
    engine = MapEngine(
        LazyScorers(_no_clip),
        CategoryStore(FileObjectStore(tmp_path / "store")),
        limits=ImageLimits(),
        device=torch.device("cpu"),
    )
    _add_category(engine, small_spec(method="tocoad"))
    record = engine.categories.get("fabric")
    # when / then
    assert not method_for("tocoad").needs.tiling
    with pytest.raises(InvalidInputError) as info:
        engine.score_tiled(
            IMAGES[0], record, "tocoad", tile=32, overlap=8, output_size=(48, 64), batch_size=2
        )
    assert info.value.code == "mode_unavailable"


@pytest.mark.parametrize("mode", ["kead", "winclip", "tocoad"])
def test_a_method_refuses_inputs_its_needs_would_have_provided(mode: str) -> None:
    # when / then: scoring with nothing gathered is a programming error, not a silent result
    with pytest.raises(RuntimeError, match="did not gather"):
        METHODS[mode].score(MethodInputs(), IMAGES)
