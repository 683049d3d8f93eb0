"""The map shelf of the pseudo-label job: maps in memory up to a budget, the rest on disk."""

from __future__ import annotations

from concurrent.futures import ThreadPoolExecutor
from pathlib import Path, PurePosixPath

import numpy as np
import pytest

from services.pretrain.usecases.label_maps import MapShelf
from services.pretrain.usecases.pseudo_label_jobs import _stem


def _maps(count: int, seed: int = 0) -> list[np.ndarray]:
    rng = np.random.default_rng(seed)
    return [rng.random((4 + i % 3, 5), dtype=np.float32) for i in range(count)]


def test_maps_past_the_budget_come_back_from_the_scratch_file_unchanged(tmp_path: Path) -> None:
    # given a budget of two 4 x 5 maps
    maps = _maps(12)
    with MapShelf(tmp_path / "maps.f32", budget=2 * 4 * 5 * 4) as shelf:
        # when
        shelved = [shelf.shelve(amap) for amap in maps]
        shelf.seal()
        # then the first two are held, the others written out, and all come back equal
        assert [s.amap is not None for s in shelved][:3] == [True, False, False]
        assert shelf.kept == sum(s.amap is not None for s in shelved)
        assert [s.maximum for s in shelved] == [float(m.max()) for m in maps]
        for amap, entry in zip(maps, shelved, strict=True):
            back = shelf.take(entry)
            assert back.dtype == np.float32
            assert back.flags.writeable
            np.testing.assert_array_equal(back, amap)
    assert (tmp_path / "maps.f32").stat().st_size == sum(m.nbytes for m in maps) - shelf.held


def test_a_map_that_fits_after_one_that_did_not_is_still_held(tmp_path: Path) -> None:
    big, small = np.ones((10, 10), np.float32), np.ones((2, 2), np.float32)
    with MapShelf(tmp_path / "maps.f32", budget=small.nbytes) as shelf:
        assert shelf.shelve(big).amap is None
        assert shelf.shelve(small).amap is small
        assert shelf.kept == 1


def test_maps_are_taken_back_from_many_threads_at_once(tmp_path: Path) -> None:
    maps = _maps(200, seed=1)
    with MapShelf(tmp_path / "maps.f32", budget=0) as shelf:
        shelved = [shelf.shelve(amap) for amap in maps]
        shelf.seal()
        with ThreadPoolExecutor(max_workers=8) as pool:
            backs = list(pool.map(shelf.take, shelved))
    for amap, back in zip(maps, backs, strict=True):
        np.testing.assert_array_equal(back, amap)


def test_a_cut_scratch_file_is_an_error_not_a_short_map(tmp_path: Path) -> None:
    with MapShelf(tmp_path / "maps.f32", budget=0) as shelf:
        entry = shelf.shelve(np.ones((8, 8), np.float32))
        shelf.seal()
        (tmp_path / "maps.f32").write_bytes(b"\x00" * 10)
        with pytest.raises(OSError, match="ended early"):
            shelf.take(entry)


@pytest.mark.parametrize(
    "key",
    ["img/a.png", "img/a.b.jpg", "a.png", "img/.hidden", "img/name.", "img/noext", "x/y/z.tar.gz",
     "img/..png", "", "dir.v2/file"],
)  # fmt: skip
def test_the_stem_of_a_key_is_the_paths(key: str) -> None:
    assert _stem(key) == PurePosixPath(key).stem
