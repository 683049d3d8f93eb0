"""Gallery use cases on a local-folder store: pages of a labelled split with its boxes, of a
pool with pseudo boxes, scores and maps, filters and paging, thumbnails made once."""

from __future__ import annotations

import base64
from pathlib import Path

import cv2
import numpy as np
import pytest

from services.finetune.stores.thumbnails import ThumbnailStore, thumbnail_key
from services.finetune.usecases.galleries import Galleries
from services.finetune.usecases.gallery_media import anomaly_map, thumbnail, with_thumbnails
from services.finetune.usecases.gallery_pages import GalleryFilter
from shared.errors import InvalidInputError, NotFoundError
from shared.imaging.intake import ImageLimits
from shared.storage.filesystem import FileObjectStore
from tests.unit.finetune.gallery_support import (
    BUSY_IMAGE,
    DATASET,
    MAPS_OUT,
    POOL_IMAGES,
    import_plates,
    npy,
    png,
    stage_pool,
)

ALL = GalleryFilter()


@pytest.fixture
def store(tmp_path: Path) -> FileObjectStore:
    store = FileObjectStore(tmp_path / "store")
    import_plates(store, tmp_path)
    return store


@pytest.fixture
def pool(store: FileObjectStore, tmp_path: Path) -> str:
    return stage_pool(store, tmp_path)


def _shape(jpeg: bytes) -> tuple[int, ...]:
    decoded = cv2.imdecode(np.frombuffer(jpeg, np.uint8), cv2.IMREAD_COLOR)
    assert decoded is not None
    return tuple(decoded.shape)


def _names(page: object) -> list[str]:
    return [item.name for item in page.items]  # type: ignore[attr-defined]


def test_a_split_lists_its_images_with_their_boxes_in_pixels_and_class_names(
    store: FileObjectStore,
) -> None:
    # when
    train = Galleries(store).dataset_page(DATASET, "latest", "train", ALL, 0, 100)
    val = Galleries(store).dataset_page(DATASET, "v1", "val", ALL, 0, 100)

    # then: the two splits cover the set once, and the busy image has its three boxes
    assert sorted(_names(train) + _names(val)) == [f"p_{i:02d}.png" for i in range(12)]
    assert (train.kind, train.classes, train.layers) == ("dataset", ["scratch", "pit"], ["truth"])
    busy = next(i for i in train.items + val.items if i.name == BUSY_IMAGE)
    boxes = sorted((b.label, b.x1, b.y1, b.x2, b.y2) for b in busy.truth)
    assert boxes == [
        ("pit", 30.0, 36.0, 50.0, 54.0),
        ("scratch", 12.0, 9.0, 28.0, 21.0),
        ("scratch", 52.0, 9.0, 68.0, 21.0),
    ]
    assert busy.image_key == f"datasets/{DATASET}/v1/images/{BUSY_IMAGE}"
    assert (busy.width, busy.height, busy.score, busy.map_key) == (80, 60, None, None)


def test_filters_and_pages_count_every_matching_image(store: FileObjectStore) -> None:
    galleries = Galleries(store)
    every = galleries.dataset_page(DATASET, "v1", "train", ALL, 0, 100).items

    # when: pits only, then defect-free only, then pages of two
    pits = galleries.dataset_page(DATASET, "v1", "train", GalleryFilter("pit"), 0, 100)
    clean = galleries.dataset_page(DATASET, "v1", "train", GalleryFilter(has_boxes=False), 0, 100)
    first = galleries.dataset_page(DATASET, "v1", "train", ALL, 0, 2)
    last = galleries.dataset_page(DATASET, "v1", "train", ALL, len(every) - 1, 2)

    # then
    assert _names(pits) == [i.name for i in every if any(b.label == "pit" for b in i.truth)]
    assert pits.total == len(pits.items) > 0
    assert _names(clean) == [i.name for i in every if not i.truth]
    assert (first.total, first.next_offset, _names(first)) == (
        len(every),
        2,
        [i.name for i in every[:2]],
    )
    assert (len(last.items), last.next_offset) == (1, None)


@pytest.mark.parametrize(
    ("split", "filters", "error", "code"),
    [
        ("test", ALL, NotFoundError, "split_not_found"),
        ("train", GalleryFilter("dent"), InvalidInputError, "unknown_class"),
        ("train", GalleryFilter(min_score=0.5), InvalidInputError, "no_scores"),
        ("train", GalleryFilter(sort="score"), InvalidInputError, "no_scores"),
    ],
)
def test_a_split_refuses_what_it_cannot_show(
    store: FileObjectStore,
    split: str,
    filters: GalleryFilter,
    error: type[Exception],
    code: str,
) -> None:
    with pytest.raises(error) as caught:
        Galleries(store).dataset_page(DATASET, "v1", split, filters, 0, 10)
    assert caught.value.code == code  # type: ignore[attr-defined]


def test_unknown_datasets_and_versions_are_not_found(store: FileObjectStore) -> None:
    for name, version in (("nope", "latest"), (DATASET, "v9")):
        with pytest.raises(NotFoundError) as caught:
            Galleries(store).dataset_page(name, version, "train", ALL, 0, 10)
        assert caught.value.code == "dataset_not_found"


def test_a_pool_shows_pretrains_pseudo_boxes_with_scores_maps_and_image_scores(
    store: FileObjectStore, pool: str
) -> None:
    # when
    page = Galleries(store).pool_page(pool, ALL, 0, 100)

    # then: boxes where the map blobs were (10x10 map over 200x100), none in b
    assert (page.kind, page.layers, page.classes) == ("pool", ["pseudo", "map"], ["anomaly"])
    by_name = {i.name: i for i in page.items}
    assert sorted(by_name) == ["a.png", "b.png", "c.png"]
    (box_a,) = by_name["a.png"].pseudo
    assert 60 <= box_a.x1 < box_a.x2 <= 100
    assert 20 <= box_a.y1 < box_a.y2 <= 40
    assert (box_a.score or 0) > 0
    assert by_name["b.png"].pseudo == []
    assert len(by_name["c.png"].pseudo) == 1
    # and each image's map and anomaly score from the map output
    assert by_name["b.png"].map_key == f"{MAPS_OUT}maps/b.npy"
    assert by_name["a.png"].score == pytest.approx(2.1)
    assert by_name["b.png"].score == pytest.approx(0.1)
    assert page.score_range == pytest.approx((0.1, 2.1))


def test_a_pool_filters_by_score_and_sorts_highest_first(store: FileObjectStore, pool: str) -> None:
    galleries = Galleries(store)
    high = galleries.pool_page(pool, GalleryFilter(min_score=1.0), 0, 100)
    low = galleries.pool_page(pool, GalleryFilter(max_score=1.0), 0, 100)
    ranked = galleries.pool_page(pool, GalleryFilter(sort="score"), 0, 100)
    with_boxes = galleries.pool_page(pool, GalleryFilter(has_boxes=True), 0, 100)
    assert _names(high) == ["a.png", "c.png"]
    assert _names(low) == ["b.png"]
    assert _names(ranked)[-1] == "b.png"
    assert _names(with_boxes) == ["a.png", "c.png"]
    with pytest.raises(InvalidInputError) as caught:
        galleries.pool_page(pool, GalleryFilter(min_score=2, max_score=1), 0, 100)
    assert caught.value.code == "invalid_score_range"


def test_maps_brought_without_a_manifest_pair_by_stem(tmp_path: Path) -> None:
    store = FileObjectStore(tmp_path / "store")
    pool = stage_pool(store, tmp_path, with_manifest=False)
    page = Galleries(store).pool_page(pool, ALL, 0, 100)
    assert {i.name: i.map_key for i in page.items} == {
        n: f"{MAPS_OUT}maps/{n[0]}.npy" for n in ("a.png", "b.png", "c.png")
    }
    assert page.score_range is None


def test_pools_are_listed_and_any_image_prefix_is_a_gallery(
    store: FileObjectStore, pool: str
) -> None:
    galleries = Galleries(store)
    (listed,) = galleries.pools()
    assert (listed.prefix, listed.category, listed.images, listed.images_with_boxes) == (
        pool,
        "tile",
        3,
        2,
    )
    plain = galleries.pool_page(POOL_IMAGES.rstrip("/"), ALL, 0, 2)
    assert (plain.kind, plain.layers, plain.total, plain.next_offset) == ("images", [], 3, 2)
    assert plain.items[0].image_key == f"{POOL_IMAGES}a.png"
    with pytest.raises(NotFoundError) as caught:
        galleries.pool_page("nothing/here/", ALL, 0, 2)
    assert caught.value.code == "pool_not_found"


def test_a_thumbnail_is_made_once_then_read_from_the_store(store: FileObjectStore) -> None:
    # given: a 640x320 image
    store.put_bytes("uploads/big/x.png", png(640, 320, 7))

    # when: its thumbnail is asked for, the source removed, and asked for again
    first = thumbnail(ThumbnailStore(store), "uploads/big/x.png", 256, ImageLimits())
    store.delete("uploads/big/x.png")
    again = thumbnail(ThumbnailStore(store), "uploads/big/x.png", 256, ImageLimits())

    # then: a 256x128 JPEG, cached under thumbs/ and served from there
    assert first[:3] == b"\xff\xd8\xff"
    assert _shape(first) == (128, 256, 3)
    assert store.get_bytes(thumbnail_key("uploads/big/x.png", 256)) == first == again
    # and a small image is never enlarged
    small = thumbnail(
        ThumbnailStore(store), f"datasets/{DATASET}/v1/images/{BUSY_IMAGE}", 1024, ImageLimits()
    )
    assert _shape(small) == (60, 80, 3)


def test_a_page_inlines_its_thumbnails_and_skips_an_image_it_cannot_show(
    store: FileObjectStore,
) -> None:
    # given a page of the split, one of whose images went missing from the store
    page = Galleries(store).dataset_page(DATASET, "v1", "val", ALL, 0, 100)
    store.delete(page.items[0].image_key)
    # when its thumbnails are inlined
    inlined = with_thumbnails(ThumbnailStore(store), page, 128, ImageLimits())
    # then every other image carries its JPEG, the same bytes as its thumbnail route's
    assert inlined.items[0].thumbnail is None
    for item in inlined.items[1:]:
        assert item.thumbnail is not None
        body = base64.b64decode(item.thumbnail.removeprefix("data:image/jpeg;base64,"))
        assert body == thumbnail(ThumbnailStore(store), item.image_key, 128, ImageLimits())
    assert page.items[1].thumbnail is None  # the page asked for is left as it was


def test_the_most_recent_thumbnails_are_kept_in_memory_up_to_a_size(
    store: FileObjectStore,
) -> None:
    # given a memory for about two thumbnails and three images
    keys = [f"uploads/m/{i}.png" for i in range(3)]
    for i, key in enumerate(keys):
        store.put_bytes(key, png(300, 200, i))
    size = len(thumbnail(ThumbnailStore(store), keys[0], 128, ImageLimits()))
    thumbs = ThumbnailStore(store, memory_bytes=2 * size + size // 2)
    # when all three are shown, then the store's copies go away
    shown = [thumbnail(thumbs, key, 128, ImageLimits()) for key in keys]
    store.delete_prefix("thumbs/")
    for key in keys:
        store.delete(key)
    # then the two most recent still come back (from memory), the oldest cannot
    assert [thumbnail(thumbs, k, 128, ImageLimits()) for k in keys[1:]] == shown[1:]
    with pytest.raises(NotFoundError):
        thumbnail(thumbs, keys[0], 128, ImageLimits())


@pytest.mark.parametrize(
    ("key", "side", "error", "code"),
    [
        ("uploads/none.png", 256, NotFoundError, "image_not_found"),
        ("uploads/a.txt", 256, InvalidInputError, "not_an_image"),
        ("../etc/passwd.png", 256, InvalidInputError, "invalid_key"),
        ("uploads/a.png", 300, InvalidInputError, "invalid_side"),
    ],
)
def test_thumbnails_refuse_bad_keys_and_sides(
    store: FileObjectStore, key: str, side: int, error: type[Exception], code: str
) -> None:
    with pytest.raises(error) as caught:
        thumbnail(ThumbnailStore(store), key, side, ImageLimits())
    assert caught.value.code == code  # type: ignore[attr-defined]


def test_a_map_goes_out_as_its_float_grid_with_its_range(store: FileObjectStore) -> None:
    values = np.arange(12, dtype=np.float32).reshape(3, 4)
    values[0, 0] = np.nan
    store.put_bytes("maps/x/maps/m.npy", npy(values))
    payload = anomaly_map(store, "maps/x/maps/m.npy")
    decoded = np.frombuffer(base64.b64decode(payload.data), "<f4").reshape(payload.shape)
    assert payload.shape == (3, 4)
    assert (payload.min, payload.max) == (1.0, 11.0)
    assert decoded[0, 0] == 1.0  # NaN drawn as the finite minimum
    assert np.array_equal(decoded.ravel()[1:], values.ravel()[1:])
    store.put_bytes("maps/x/maps/bad.npy", b"not numpy")
    for key, code in (("maps/x/maps/bad.npy", "bad_map"), ("maps/x/m.png", "not_a_map")):
        with pytest.raises(InvalidInputError) as caught:
            anomaly_map(store, key)
        assert caught.value.code == code
    with pytest.raises(NotFoundError):
        anomaly_map(store, "maps/x/maps/none.npy")
