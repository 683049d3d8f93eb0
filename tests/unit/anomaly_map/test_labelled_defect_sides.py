"""The labelled defect images divided between the ToCoAD fit (paste) and the gate check
(reference): deterministic, disjoint, stratified, with a fallback when there are too few."""

from __future__ import annotations

from pathlib import Path

import pytest

from services.anomaly_map.params import LabelledDefects
from services.anomaly_map.stores.labelled_defects import select_defects, split_sides
from shared.schemas.detection_dataset import Box, ImageRecord
from shared.storage.filesystem import FileObjectStore
from tests.unit.anomaly_map.test_service_tocoad import _store_labelled_dataset


def _records(count: int, classes: int = 1) -> list[ImageRecord]:
    return [
        ImageRecord(
            file_name=f"img_{i:03d}.jpg",
            width=64,
            height=64,
            boxes=[Box(x1=1, y1=1, x2=9, y2=9, class_id=i % classes)],
        )
        for i in range(count)
    ]


def test_the_split_is_disjoint_covers_every_image_and_holds_out_the_share() -> None:
    # given
    records = _records(60, classes=6)
    # when
    sides = split_sides(records, share=0.3, min_reference=5)
    # then
    assert sides.held_out
    assert set(sides.paste).isdisjoint(sides.reference)
    assert set(sides.paste) | set(sides.reference) == {r.file_name for r in records}
    assert len(sides.reference) == 18
    assert sides.names("all") == tuple(r.file_name for r in records)


def test_the_split_depends_on_the_names_only_not_on_their_order() -> None:
    # given the same images listed in two orders (a fit and a map job read the same split)
    records = _records(40, classes=4)
    # when
    first = split_sides(records)
    second = split_sides(list(reversed(records)))
    # then
    assert set(first.reference) == set(second.reference)
    assert first.reference == tuple(r.file_name for r in records if r.file_name in first.reference)


def test_every_class_gets_its_share_of_reference_images() -> None:
    # given 5 classes of 10 images each
    records = _records(50, classes=5)
    # when
    sides = split_sides(records, share=0.3)
    # then each class sends 3 images to the gate check and keeps 7 for the fit
    by_class = {r.file_name: r.boxes[0].class_id for r in records}
    for cls in range(5):
        assert sum(by_class[n] == cls for n in sides.reference) == 3


@pytest.mark.parametrize("count", [1, 4, 15])
def test_too_few_images_give_every_image_to_both_sides(count: int) -> None:
    # given fewer images than 0.3 * n >= 5 needs (15 * 0.3 = 4.5 rounds up to 5: enough)
    records = _records(count)
    # when
    sides = split_sides(records, share=0.3, min_reference=5)
    # then
    if count < 15:
        assert not sides.held_out
        assert sides.paste == sides.reference == tuple(r.file_name for r in records)
    else:
        assert sides.held_out
        assert len(sides.reference) == 5


def test_a_selection_caps_its_side_and_records_both_sides_counts(tmp_path: Path) -> None:
    # given a stored dataset of 20 defect images and one without a box
    store = FileObjectStore(tmp_path / "store")
    boxes = [[10 + i, 10, 40, 30] for i in range(20)] + [[]]
    name = _store_labelled_dataset(store, boxes)
    # when
    paste = select_defects(store, LabelledDefects(dataset=name, side="paste", max_images=10))
    reference = select_defects(store, LabelledDefects(dataset=name, side="reference"))
    # then the sides are computed over all 20 before the paste side is capped to 10
    assert reference.outputs() == {
        "side": "reference",
        "images": 6,
        "paste_images": 14,
        "reference_images": 6,
        "reference_held_out": True,
        "reference_share": 0.3,
    }
    assert paste.outputs()["images"] == 10
    pasted = {r.file_name for r in paste.records}
    assert pasted <= set(paste.sides.paste)
    assert pasted.isdisjoint(r.file_name for r in reference.records)
    assert paste.warning() is None


def test_a_selection_that_cannot_hold_out_says_the_check_may_be_biased(tmp_path: Path) -> None:
    # given only 6 labelled defect images (0.3 * 6 rounds to 2 < 5)
    store = FileObjectStore(tmp_path / "store")
    name = _store_labelled_dataset(store, [[10, 10, 40, 30]] * 6)
    # when
    reference = select_defects(store, LabelledDefects(dataset=name, side="reference"))
    everything = select_defects(store, LabelledDefects(dataset=name))
    # then
    assert reference.outputs()["reference_held_out"] is False
    assert reference.outputs()["images"] == 6
    assert "may be biased" in (reference.warning() or "")
    assert everything.warning() is None  # side 'all' asked for no hold-out
