"""Evaluation galleries on a local-folder store: a detector's saved evaluation of a split in
pages, each image with its ground truth found or missed and the predictions kept at the
evaluation's conf; the miss, false-alarm and class filters; a re-evaluation picked up; what
is not saved is not found, and error filters are refused on other sets."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from services.finetune.ml.error_analysis import ImageErrors
from services.finetune.stores.models import ModelRegistry
from services.finetune.usecases.evaluation_views import error_analysis
from services.finetune.usecases.evaluations import evaluation_name
from services.finetune.usecases.galleries import Galleries
from services.finetune.usecases.gallery_pages import GalleryFilter, GalleryPage
from shared.errors import InvalidInputError, NotFoundError
from shared.storage.filesystem import FileObjectStore
from tests.unit.finetune.gallery_support import (
    CLASSES,
    CONF,
    DATASET,
    DETECTOR,
    PIT,
    import_plates,
    publish_detector,
    save_evaluation,
)

ALL = GalleryFilter()
EVALUATED_AT = "2026-12-01T10:00:00+00:00"


@pytest.fixture
def store(tmp_path: Path) -> FileObjectStore:
    store = FileObjectStore(tmp_path / "store")
    import_plates(store, tmp_path)
    publish_detector(store)
    return store


@pytest.fixture
def records(store: FileObjectStore) -> list[ImageErrors]:
    """The per-image records of the detector's saved evaluation on the train split."""
    return error_analysis(save_evaluation(store, "train", EVALUATED_AT)).images


def _page(
    galleries: Galleries, filters: GalleryFilter = ALL, dataset: str | None = None
) -> GalleryPage:
    return galleries.evaluation_page(
        DETECTOR.name, DETECTOR.version, dataset, "train", filters, 0, 100
    )


def _names(page: GalleryPage) -> list[str]:
    return [item.name for item in page.items]


def test_each_image_shows_its_truth_found_or_missed_and_the_predictions_at_conf(
    store: FileObjectStore, records: list[ImageErrors]
) -> None:
    # when
    page = _page(Galleries(store))

    # then: the set, titled with model, dataset, split and conf
    assert (page.kind, page.layers, page.classes, page.conf) == (
        "evaluation",
        ["truth", "pred"],
        list(CLASSES),
        CONF,
    )
    assert page.title == f"{DETECTOR} on {DATASET}:v1 · train (conf 0.25)"
    assert _names(page) == [r.file_name for r in records]
    # and every image as its record has it
    for item, record in zip(page.items, records, strict=True):
        assert item.image_key == f"datasets/{DATASET}/v1/images/{record.file_name}"
        assert (item.width, item.height) == (record.width, record.height)
        assert (item.misses, item.false_alarms) == (record.misses, record.false_alarms)
        assert [(b.label, b.found) for b in item.truth] == [
            (CLASSES[m.class_id], m.found) for m in record.gt
        ]
        assert [(b.label, b.score, b.tp) for b in item.predicted or []] == [
            (CLASSES[m.class_id], m.score, m.tp) for m in record.dets
        ]
    # and the pit under the threshold on the first image is not among its predictions
    busy = page.items[0]
    assert [b.tp for b in busy.predicted or []] == [True, True, True]
    assert [b.found for b in busy.truth] == [True, True, True]


@pytest.mark.parametrize(
    ("wanted", "unwanted", "count", "expected"),
    [
        (
            GalleryFilter(has_miss=True),
            GalleryFilter(has_miss=False),
            "misses",
            ["p_01.png", "p_05.png", "p_10.png"],
        ),
        (
            GalleryFilter(has_false_alarm=True),
            GalleryFilter(has_false_alarm=False),
            "false_alarms",
            ["p_02.png", "p_06.png", "p_11.png"],
        ),
    ],
)
def test_error_filters_list_exactly_the_images_whose_record_has_them(
    store: FileObjectStore,
    records: list[ImageErrors],
    wanted: GalleryFilter,
    unwanted: GalleryFilter,
    count: str,
    expected: list[str],
) -> None:
    # given
    galleries = Galleries(store)

    # when
    with_errors, without = _page(galleries, wanted), _page(galleries, unwanted)

    # then: the images whose record counts some, and the others
    assert _names(with_errors) == [r.file_name for r in records if getattr(r, count) > 0]
    assert _names(with_errors) == expected
    assert with_errors.total == len(expected)
    assert _names(without) == [r.file_name for r in records if getattr(r, count) == 0]


def test_a_class_filter_matches_ground_truth_or_predictions_of_it(
    store: FileObjectStore, records: list[ImageErrors]
) -> None:
    # when
    pits = _page(Galleries(store), GalleryFilter("pit"))

    # then: p_02 and p_06 hold no pit but a false pit prediction
    marks = {
        r.file_name: {m.class_id for m in r.gt} | {m.class_id for m in r.dets} for r in records
    }
    assert _names(pits) == [name for name, ids in marks.items() if PIT in ids]
    assert _names(pits) == ["p_00.png", "p_01.png", "p_02.png", "p_05.png", "p_06.png", "p_11.png"]


def test_has_boxes_on_an_evaluation_counts_ground_truth_boxes_only(
    store: FileObjectStore, records: list[ImageErrors]
) -> None:
    # when
    clean = _page(Galleries(store), GalleryFilter(has_boxes=False))

    # then: p_06 has a (false) prediction but no box
    assert _names(clean) == [r.file_name for r in records if not r.gt] == ["p_06.png", "p_09.png"]


def test_a_re_evaluation_is_picked_up_by_the_same_galleries(
    store: FileObjectStore, records: list[ImageErrors]
) -> None:
    # given a page read (and its index kept) before the model is evaluated again
    galleries = Galleries(store)
    before = _page(galleries, GalleryFilter(has_miss=True))

    # when the evaluation is saved again, now finding every box
    save_evaluation(store, "train", "2026-12-02T10:00:00+00:00", perfect=True)
    after = _page(galleries, GalleryFilter(has_miss=True))

    # then
    assert (before.total, after.total) == (3, 0)


@pytest.mark.parametrize("dataset", [DATASET, f"{DATASET}:v1", f"{DATASET}:latest"])
def test_the_dataset_may_be_named_and_latest_names_the_newest_model_version(
    store: FileObjectStore, records: list[ImageErrors], dataset: str
) -> None:
    page = Galleries(store).evaluation_page(DETECTOR.name, "latest", dataset, "train", ALL, 0, 5)
    assert (page.total, page.next_offset, page.conf) == (len(records), 5, CONF)


@pytest.mark.parametrize(
    ("name", "version", "dataset", "split", "code"),
    [
        ("nope", "v1", None, "train", "artifact_not_found"),
        ("nope", "latest", None, "train", "model_not_found"),
        (DETECTOR.name, "v9", None, "train", "artifact_not_found"),
        (DETECTOR.name, "v1", None, "val", "evaluation_not_found"),
        (DETECTOR.name, "v1", f"{DATASET}:v9", "train", "dataset_not_found"),
    ],
)
def test_what_is_not_saved_is_not_found(
    store: FileObjectStore,
    records: list[ImageErrors],
    name: str,
    version: str,
    dataset: str | None,
    split: str,
    code: str,
) -> None:
    with pytest.raises(NotFoundError) as caught:
        Galleries(store).evaluation_page(name, version, dataset, split, ALL, 0, 10)
    assert caught.value.code == code


def test_an_evaluation_saved_before_per_image_records_is_refused(store: FileObjectStore) -> None:
    # given an evaluation document without its per-image records
    document: dict[str, Any] = save_evaluation(store, "train", EVALUATED_AT)
    del document["errors"]
    name = evaluation_name(f"{DATASET}:v1", "train")
    ModelRegistry(store).save_evaluation(DETECTOR, name, document)

    # when / then
    with pytest.raises(InvalidInputError) as caught:
        _page(Galleries(store))
    assert caught.value.code == "evaluation_without_errors"


@pytest.mark.parametrize(
    "filters", [GalleryFilter(has_miss=True), GalleryFilter(has_false_alarm=False)]
)
def test_error_filters_are_refused_on_sets_that_are_not_evaluations(
    store: FileObjectStore, filters: GalleryFilter
) -> None:
    galleries = Galleries(store)
    with pytest.raises(InvalidInputError) as split:
        galleries.dataset_page(DATASET, "v1", "train", filters, 0, 10)
    with pytest.raises(InvalidInputError) as prefix:
        galleries.pool_page(f"datasets/{DATASET}/v1/images/", filters, 0, 10)
    assert (split.value.code, prefix.value.code) == ("no_evaluation", "no_evaluation")
