"""Single-image maps through the engine: shapes, resolutions, tiling, banks, caches, limits."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from services.anomaly_map.config import AnomalyMapSettings
from services.anomaly_map.runtime.engine import MapEngine, build_engine
from services.anomaly_map.stores.categories import CategoryRecord
from services.anomaly_map.usecases.anomaly_maps import MapRequest, generate_map
from services.anomaly_map.usecases.categories import put_category
from shared.errors import InvalidInputError, NotFoundError, OverloadedError, UnavailableError
from shared.imaging.intake import ImageLimits
from shared.storage.filesystem import FileObjectStore
from tests.unit.anomaly_map.test_service_support import (
    image_bytes,
    make_engine,
    make_settings,
    small_spec,
    tiny_scorers,
)

GRID = 5  # tiny-vit: 40 px input, 8 px patches


@pytest.fixture
def settings(tmp_path: Path) -> AnomalyMapSettings:
    return make_settings(tmp_path, max_tiles=64)


@pytest.fixture
def engine(tmp_path: Path, settings: AnomalyMapSettings) -> MapEngine:
    return make_engine(settings, FileObjectStore(tmp_path / "store"))


def _category(engine: MapEngine, name: str = "tile", references: int = 2) -> CategoryRecord:
    uploads = [(f"{i}.png", image_bytes(seed=100 + i)) for i in range(references)]
    return put_category(
        engine.categories,
        name,
        small_spec(),
        uploads,
        tokenizer=tiny_scorers().bundle.tokenizer,
        limits=ImageLimits(),
        max_references=8,
    )


def test_patch_resolution_map_is_the_raw_float32_grid(engine, settings) -> None:
    # given
    record = _category(engine)
    # when
    result = generate_map(engine, image_bytes(seed=1), MapRequest("tile"), settings)
    # then
    assert result.anomaly_map.shape == (GRID, GRID)
    assert result.anomaly_map.dtype == np.float32
    assert result.record.version == record.version
    assert result.mode == "kead"
    assert result.anomaly_map.min() >= 0.0
    assert result.anomaly_map.max() <= 2.0


def test_image_resolution_map_has_the_image_size(engine, settings) -> None:
    # given
    _category(engine)
    request = MapRequest("tile", resolution="image")
    # when
    result = generate_map(engine, image_bytes(30, 70, seed=1), request, settings)
    # then
    assert result.anomaly_map.shape == (30, 70)


def test_winclip_mode_uses_the_same_encoder(engine, settings) -> None:
    # given
    _category(engine)
    # when
    result = generate_map(engine, image_bytes(seed=1), MapRequest("tile", mode="winclip"), settings)
    # then
    assert result.mode == "winclip"
    assert result.anomaly_map.shape == (GRID, GRID)


def test_without_references_the_map_is_zero_shot(engine, settings) -> None:
    # given
    _category(engine, references=0)
    # when
    result = generate_map(engine, image_bytes(seed=1), MapRequest("tile"), settings)
    # then
    assert result.image_score == pytest.approx(result.zero_shot_score)
    assert result.anomaly_map.max() < 1.0


def test_large_image_is_tiled_and_stitched(engine, settings) -> None:
    # given
    _category(engine)
    request = MapRequest("tile", tile=40)
    # when
    result = generate_map(engine, image_bytes(40, 200, seed=2), request, settings)
    # then
    assert result.tiles >= 5
    assert result.anomaly_map.shape == (GRID, 25)
    assert result.zero_shot_score is None


def test_tiled_image_resolution_map_matches_the_image(engine, settings) -> None:
    # given
    _category(engine)
    request = MapRequest("tile", tile=40, resolution="image")
    # when
    result = generate_map(engine, image_bytes(40, 120, seed=2), request, settings)
    # then
    assert result.anomaly_map.shape == (40, 120)


def test_too_many_tiles_are_refused(engine, settings) -> None:
    # given
    _category(engine)
    request = MapRequest("tile", tile=8)
    # when / then
    with pytest.raises(InvalidInputError) as info:
        generate_map(engine, image_bytes(80, 160, seed=2), request, settings)
    assert info.value.code == "too_many_tiles"


def test_overlay_is_a_png_of_the_image_size(engine, settings) -> None:
    # given
    _category(engine)
    request = MapRequest("tile", overlay=True)
    # when
    result = generate_map(engine, image_bytes(seed=1), request, settings)
    # then
    assert result.overlay_png is not None
    assert result.overlay_png.startswith(b"\x89PNG")


def test_unknown_category_is_not_found(engine, settings) -> None:
    # when / then
    with pytest.raises(NotFoundError) as info:
        generate_map(engine, image_bytes(), MapRequest("nope"), settings)
    assert info.value.code == "category_not_found"


def test_corrupt_image_is_refused(engine, settings) -> None:
    # given
    _category(engine)
    # when / then
    with pytest.raises(InvalidInputError) as info:
        generate_map(engine, image_bytes()[:60], MapRequest("tile"), settings)
    assert info.value.code == "corrupt_image"


def test_memory_bank_is_stored_once_and_reused_by_a_new_engine(tmp_path, engine, settings) -> None:
    # given
    record = _category(engine)
    first = generate_map(engine, image_bytes(seed=1), MapRequest("tile"), settings)
    banks = engine.categories.store.list(f"{record.prefix}banks/")
    # when
    fresh = make_engine(settings, engine.categories.store)
    second = generate_map(fresh, image_bytes(seed=1), MapRequest("tile"), settings)
    # then
    tag = engine.scorers["kead"].config_tag
    assert banks == [f"{record.prefix}banks/kead-{engine.model_id}-{tag}.pt"]
    assert engine.categories.store.list(f"{record.prefix}banks/") == banks
    np.testing.assert_allclose(first.anomaly_map, second.anomaly_map, rtol=1e-5)


def test_text_features_are_cached_per_category_version_and_mode(engine, settings) -> None:
    # given
    _category(engine)
    # when
    for _ in range(3):
        generate_map(engine, image_bytes(seed=1), MapRequest("tile"), settings)
    _category(engine)  # a new version
    generate_map(engine, image_bytes(seed=1), MapRequest("tile"), settings)
    # then
    assert len(engine._text) == 2


def test_requests_beyond_the_waiting_room_are_refused(tmp_path) -> None:
    # given
    settings = make_settings(tmp_path, max_pending=1)
    engine = make_engine(settings, FileObjectStore(tmp_path / "store"))
    # when / then
    with engine.admitted(), pytest.raises(OverloadedError), engine.admitted():
        pass


def test_build_engine_without_weights_names_model_and_folder(tmp_path) -> None:
    # given an engine built without weights (nothing is loaded yet)
    settings = make_settings(tmp_path, allow_random_weights=False)
    engine = build_engine(settings, FileObjectStore(tmp_path / "store"))
    # when a CLIP mode needs the encoder
    with pytest.raises(UnavailableError) as info:
        _ = engine.scorers
    # then
    assert info.value.code == "model_weights_missing"
    assert "tiny-vit" in info.value.message
    assert str(tmp_path / "home" / "models" / "open_clip" / "tiny-vit") in info.value.message


def test_first_map_after_a_restart_does_no_prompt_encoding(engine, settings, monkeypatch) -> None:
    # given text features computed by one process (stored beside the category version)
    from services.anomaly_map.ml.clip import text_features

    calls: list[int] = []
    encode = text_features.encode_prompt_set

    def counting(bundle, prompts, batch_size=256):  # type: ignore[no-untyped-def]
        calls.append(len(prompts))
        return encode(bundle, prompts, batch_size)

    monkeypatch.setattr(text_features, "encode_prompt_set", counting)
    record = _category(engine)
    first = generate_map(engine, image_bytes(seed=1), MapRequest("tile"), settings)
    encoded_first = len(calls)
    # when a fresh engine (a restarted API or another worker) on the same store maps an image
    restarted = make_engine(settings, engine.categories.store)
    second = generate_map(restarted, image_bytes(seed=1), MapRequest("tile"), settings)
    # then the first process encoded prompts, the restarted one none
    assert encoded_first == 3  # normal, anomalous and the empty template
    assert len(calls) == encoded_first
    stored = engine.categories.store.list(f"{record.prefix}text/")
    tag = engine.scorers["kead"].config_tag
    assert stored == [f"{record.prefix}text/kead-{engine.model_id}-{tag}.pt"]
    np.testing.assert_allclose(first.anomaly_map, second.anomaly_map, rtol=1e-6)


def test_unreadable_stored_text_features_are_encoded_again(engine, settings) -> None:
    # given
    record = _category(engine)
    name = f"text/kead-{engine.model_id}-{engine.scorers['kead'].config_tag}.pt"
    engine.categories.put_blob(record, name, b"garbage")
    # when
    result = generate_map(engine, image_bytes(seed=1), MapRequest("tile"), settings)
    # then
    assert np.isfinite(result.anomaly_map).all()
    stored = engine.categories.get_blob(record, name)
    assert stored is not None
    assert stored != b"garbage"
