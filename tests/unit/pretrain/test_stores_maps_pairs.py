"""Finding image/map pairs in the store, reading scores, caching and checking files."""

from __future__ import annotations

import io
import json
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from services.pretrain.params import SourceSpec
from services.pretrain.stores.maps import Pair, collect_pairs, load_scores, pair_source, score_of
from services.pretrain.stores.pairs import (
    CachedPairSource,
    image_size_from_header,
    load_map,
    png_orientation,
    prefetch,
    read_image_size,
)
from shared.errors import InvalidInputError
from shared.imaging.intake import ImageLimits, decode_object
from shared.imaging.render import encode_png
from shared.schemas.dataset_maps import (
    DatasetMapManifest,
    ScoreRow,
    manifest_key,
    map_keys,
    scores_csv,
    scores_key,
)
from shared.storage.filesystem import FileObjectStore

MAPS = "maps/steel/20260101T120000-1a2b3c4d/"


@pytest.fixture
def store(tmp_path: Path) -> FileObjectStore:
    return FileObjectStore(tmp_path / "store")


def _npy(array: np.ndarray) -> bytes:
    buffer = io.BytesIO()
    np.save(buffer, array, allow_pickle=False)
    return buffer.getvalue()


def _touch(store: FileObjectStore, *keys: str) -> None:
    for key in keys:
        store.put_bytes(key, b"")


def _spec(category: str = "steel", images: str = "img/steel/", maps: str = MAPS) -> SourceSpec:
    return SourceSpec(category=category, images_prefix=images, maps_prefix=maps)


def test_stem_pairing_reports_images_without_maps_and_maps_without_images(
    store: FileObjectStore,
) -> None:
    # given: no manifest; one map in KeAD's <stem>_anomaly naming, one orphan each side
    _touch(store, "img/steel/a.png", "img/steel/b.jpg", "img/steel/c.png", "img/steel/notes.txt")
    _touch(store, f"{MAPS}maps/a.npy", f"{MAPS}maps/b_anomaly.npy", f"{MAPS}maps/z.npy")
    # when
    matched, report = pair_source(store, _spec(), label=0)
    # then
    assert matched == [
        ("img/steel/a.png", f"{MAPS}maps/a.npy"),
        ("img/steel/b.jpg", f"{MAPS}maps/b_anomaly.npy"),
    ]
    assert report.pairing == "stem"
    assert report.images_without_maps == ("img/steel/c.png",)
    assert report.maps_without_images == (f"{MAPS}maps/z.npy",)
    assert (report.images, report.maps, report.matched) == (3, 3, 2)


def test_the_manifest_the_seam_writes_pairs_same_stems_in_two_folders(
    store: FileObjectStore,
) -> None:
    # given: a dataset-map output written with the seam (two images named 1.png)
    _touch(store, "img/steel/x/1.png", "img/steel/y/1.png")
    images = ["img/steel/x/1.png", "img/steel/y/1.png"]
    targets = map_keys(images, "img/steel/", MAPS)
    _touch(store, *targets.values())
    manifest = DatasetMapManifest(
        category="steel", count=2, job_id="20260101T120000-1a2b3c4d", maps=targets
    )
    store.put_bytes(manifest_key(MAPS), manifest.to_bytes())
    # when: the maps prefix names the maps/ folder below the output
    matched, report = pair_source(store, _spec(maps=f"{MAPS}maps/"), label=0)
    # then: each image gets its own map through the manifest
    assert matched == [
        ("img/steel/x/1.png", f"{MAPS}maps/x/1.npy"),
        ("img/steel/y/1.png", f"{MAPS}maps/y/1.npy"),
    ]
    assert report.pairing == "manifest"
    assert report.map_job_id == "20260101T120000-1a2b3c4d"


def test_a_users_manifest_of_category_count_and_absolute_maps_pairs(
    store: FileObjectStore,
) -> None:
    # given: oracle maps a user brings, listed as {"category", "count", "maps"}
    _touch(store, "img/steel/a.png", "oracle/steel/a-gt.npy")
    doc = {"category": "steel", "count": 1, "maps": {"img/steel/a.png": "oracle/steel/a-gt.npy"}}
    store.put_bytes("oracle/steel/manifest.json", json.dumps(doc).encode())
    # when
    matched, report = pair_source(store, _spec(maps="oracle/steel/"), label=0)
    # then
    assert matched == [("img/steel/a.png", "oracle/steel/a-gt.npy")]
    assert report.pairing == "manifest"


def test_a_manifest_that_breaks_the_seam_is_refused(store: FileObjectStore) -> None:
    # given: a manifest without the seam's fields
    _touch(store, "img/steel/a.png", f"{MAPS}maps/a.npy")
    store.put_bytes(manifest_key(MAPS), json.dumps({"pairs": []}).encode())
    # when / then
    with pytest.raises(InvalidInputError) as caught:
        pair_source(store, _spec(), label=0)
    assert caught.value.code == "bad_manifest"


def test_category_index_is_the_position_among_distinct_categories(
    store: FileObjectStore,
) -> None:
    # given: three sources, two of them of the same category
    for name in ("a", "b", "c"):
        _touch(store, f"img/{name}/{name}1.png", f"maps/{name}/maps/{name}1.npy")
    specs = [
        _spec("pipe", "img/a/", "maps/a/"),
        _spec("billet", "img/b/", "maps/b/"),
        _spec("pipe", "img/c/", "maps/c/"),
    ]
    # when
    result = collect_pairs(store, specs)
    # then
    assert result.categories == ("pipe", "billet")
    assert [p.label for p in result.pairs] == [0, 1, 0]


def test_a_source_that_pairs_nothing_fails_with_unpaired_data(store: FileObjectStore) -> None:
    # given: images and maps whose names never match
    _touch(store, "img/steel/a.png", f"{MAPS}maps/q.npy")
    # when / then
    with pytest.raises(InvalidInputError, match="1 images, 1 maps") as caught:
        collect_pairs(store, [_spec()])
    assert caught.value.code == "unpaired_data"


def test_pairing_survives_a_round_trip_through_json(store: FileObjectStore) -> None:
    # given
    _touch(store, "img/steel/a.png", "img/steel/b.png", f"{MAPS}maps/a.npy")
    result = collect_pairs(store, [_spec()])
    # when
    again = type(result).from_json(result.to_json())
    # then
    assert again == result


def test_scores_the_seam_writes_are_found_by_key_or_stem(store: FileObjectStore) -> None:
    # given: scores written with the seam's writer
    rows = [ScoreRow("img/steel/a.png", 0.75, 0.1, 1.2)]
    store.put_bytes(scores_key(MAPS), scores_csv(rows))
    # when
    scores = load_scores(store, f"{MAPS}maps/")
    # then
    assert scores is not None
    assert score_of(scores, "img/steel/a.png") == pytest.approx(0.75)
    assert score_of(scores, "elsewhere/a.png") == pytest.approx(0.75)
    assert score_of(scores, "img/steel/b.png") is None


@pytest.mark.parametrize(
    "text",
    [
        "image_key,image_score,zero_shot_score,map_max\na.png,high,0.1,1.0\n",
        "image,score\na.png,0.5\n",
    ],
    ids=["not-a-number", "other-header"],
)
def test_scores_that_break_the_seam_are_refused(store: FileObjectStore, text: str) -> None:
    store.put_bytes(scores_key(MAPS), text.encode())
    with pytest.raises(InvalidInputError) as caught:
        load_scores(store, MAPS)
    assert caught.value.code == "bad_scores"


@pytest.mark.parametrize(
    "array",
    [np.zeros((2, 3, 3), np.float32), np.array([[np.nan]], np.float32), np.zeros((2, 2), np.int64)],
    ids=["3-d", "nan", "integer"],
)
def test_maps_that_are_not_finite_2d_float_arrays_are_refused(array: np.ndarray) -> None:
    with pytest.raises(InvalidInputError) as caught:
        load_map(_npy(array), "m.npy")
    assert caught.value.code == "bad_map"


_LAYOUTS: dict[str, tuple[str, bool, tuple[int, int]]] = {
    "float32": ("<f4", False, (1, 0)),
    "float64": ("<f8", False, (1, 0)),
    "float16": ("<f2", False, (1, 0)),
    "big-endian": (">f4", False, (1, 0)),
    "fortran": ("<f4", True, (1, 0)),
    "version-2": ("<f4", False, (2, 0)),
    "version-3": ("<f4", False, (3, 0)),
}


@pytest.mark.parametrize("layout", list(_LAYOUTS))
def test_a_map_reads_as_numpy_reads_it_whatever_its_npy_layout(layout: str) -> None:
    # given the same values stored in one .npy layout, twice (the second read is the cached one)
    dtype, fortran, version = _LAYOUTS[layout]
    values = np.random.default_rng(3).random((6, 9)).astype(dtype)
    values = np.asfortranarray(values) if fortran else values
    buffer = io.BytesIO()
    np.lib.format.write_array(buffer, values, version=version)
    for _ in range(2):
        # when
        amap = load_map(buffer.getvalue(), "m.npy")
        # then: numpy's values as float32, in C order and writable
        expected = np.load(io.BytesIO(buffer.getvalue())).astype(np.float32)
        np.testing.assert_array_equal(amap, expected)
        assert amap.dtype == np.float32
        assert amap.flags.c_contiguous
        assert amap.flags.writeable


@pytest.mark.parametrize("cut", [1, 100], ids=["one-byte-short", "body-short"])
def test_a_cut_map_is_refused(cut: int) -> None:
    data = _npy(np.ones((10, 10), np.float32))
    load_map(data, "m.npy")  # its header is known from here on
    with pytest.raises(InvalidInputError) as caught:
        load_map(data[:-cut], "m.npy")
    assert caught.value.code == "bad_map"


def test_pickled_maps_are_never_unpickled() -> None:
    # given: an object array, which np.save can only store as a pickle
    buffer = io.BytesIO()
    np.save(buffer, np.array([{"x": 1}], dtype=object), allow_pickle=True)
    # when / then
    with pytest.raises(InvalidInputError):
        load_map(buffer.getvalue(), "evil.npy")


def test_image_size_comes_from_the_header_with_exif_rotation_applied(
    store: FileObjectStore,
) -> None:
    # given: a 40x20 JPEG whose EXIF says "rotate 90°" (orientation 6)
    exif = Image.Exif()
    exif[0x0112] = 6
    buffer = io.BytesIO()
    Image.new("RGB", (40, 20)).save(buffer, format="JPEG", exif=exif.tobytes())
    store.put_bytes("img/rot.jpg", buffer.getvalue())
    # when
    size = read_image_size(store, "img/rot.jpg", ImageLimits())
    # then: the size of the upright image, as decode_image returns it
    assert size == (20, 40)


def _png_chunks(data: bytes) -> list[bytes]:
    chunks, offset = [], 8
    while offset < len(data):
        end = offset + 12 + int.from_bytes(data[offset : offset + 4], "big")
        chunks.append(data[offset:end])
        offset = end
    return chunks


def _rotated_png(*, exif_after_pixels: bool) -> bytes:
    """A 40x20 PNG whose eXIf chunk says "rotate 90°", before or after its image data."""
    exif = Image.Exif()
    exif[0x0112] = 6
    buffer = io.BytesIO()
    noise = np.random.default_rng(0).integers(0, 255, (20, 40, 3), dtype=np.uint8)
    Image.fromarray(noise).save(buffer, format="PNG", exif=exif.tobytes())
    data = buffer.getvalue()
    if not exif_after_pixels:
        return data
    chunks = _png_chunks(data)
    exif_chunk = next(c for c in chunks if c[4:8] == b"eXIf")
    rest = [c for c in chunks if c is not exif_chunk]
    return data[:8] + b"".join(rest[:-1]) + exif_chunk + rest[-1]  # just before IEND


@pytest.mark.parametrize("after", [False, True], ids=["exif-first", "exif-after-pixels"])
def test_a_png_size_comes_from_its_chunks_with_exif_rotation_applied(
    store: FileObjectStore, after: bool
) -> None:
    # given
    data = _rotated_png(exif_after_pixels=after)
    assert (_png_chunks(data)[-2][4:8] == b"eXIf") is after
    store.put_bytes("img/rot.png", data)
    # when
    size = read_image_size(store, "img/rot.png", ImageLimits())
    # then: the upright size, as decode_image returns it
    assert size == (20, 40)
    assert decode_object(data, ImageLimits(), "img/rot.png").array.shape[:2] == (40, 20)


def test_a_png_cut_before_its_end_has_no_size_from_the_header() -> None:
    data = _rotated_png(exif_after_pixels=True)
    assert png_orientation(data) == 6
    assert png_orientation(data[: len(data) // 2]) is None  # the caller reads the rest
    assert image_size_from_header(data[: len(data) // 2], ImageLimits()) is None
    plain = encode_png(np.zeros((20, 40, 3), np.uint8))
    assert png_orientation(plain) == 1


def test_prefetch_copies_once_and_the_source_yields_rgb_images_and_maps(
    store: FileObjectStore, tmp_path: Path
) -> None:
    # given
    store.put_bytes("img/a.png", encode_png(np.full((8, 12, 3), 7, np.uint8)))
    store.put_bytes("maps/a.npy", _npy(np.ones((3, 3), np.float32)))
    source = CachedPairSource([Pair("img/a.png", "maps/a.npy", 2)], tmp_path / "c", ImageLimits())
    # when
    prefetch(store, source, threads=2, on_progress=lambda d, t: None, should_stop=lambda: False)
    store.delete("img/a.png")  # training must not need the store any more
    image, amap, label = source[0]
    # then
    assert image.shape == (8, 12, 3)
    assert image.dtype == np.uint8
    assert amap.shape == (3, 3)
    assert amap.dtype == np.float32
    assert label == 2


def test_prefetch_names_unusable_files_before_training(
    store: FileObjectStore, tmp_path: Path
) -> None:
    # given: a file that is no image
    store.put_bytes("img/a.png", b"not an image at all")
    store.put_bytes("maps/a.npy", _npy(np.ones((3, 3), np.float32)))
    source = CachedPairSource([Pair("img/a.png", "maps/a.npy", 0)], tmp_path / "c", ImageLimits())
    # when / then
    with pytest.raises(InvalidInputError, match=r"img/a\.png") as caught:
        prefetch(store, source, threads=1, on_progress=lambda d, t: None, should_stop=lambda: False)
    assert caught.value.code == "bad_data"
