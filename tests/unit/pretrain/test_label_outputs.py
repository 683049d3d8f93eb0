"""The pseudo-label job's streamed outputs equal the whole-pool ones they replace."""

from __future__ import annotations

import json
from dataclasses import asdict
from pathlib import Path

import numpy as np
import pytest

from services.pretrain.ml.pseudo_boxes import (
    Box,
    ImageBoxes,
    build_coco,
    coco_annotations,
    coco_categories,
    coco_image,
    summarize,
)
from services.pretrain.usecases.label_outputs import (
    AreaRatios,
    BoxTally,
    CocoStream,
    TopExamples,
    job_scratch,
)


def _images(count: int, seed: int = 0) -> list[ImageBoxes]:
    """``count`` images of random sizes with 0-3 random boxes each, some of equal area."""
    rng = np.random.default_rng(seed)
    images = []
    for i in range(count):
        width, height = (int(v) for v in rng.integers(20, 200, 2))
        boxes = tuple(
            Box(0, 0, int(rng.integers(1, 6)), int(rng.integers(1, 6)), float(rng.random()))
            for _ in range(int(rng.integers(0, 4)))
        )
        images.append(ImageBoxes(f"d/{i}é.png", width, height, boxes, "steel"))
    return images


def _streamed(folder: Path, images: list[ImageBoxes]) -> bytes:
    with CocoStream(folder, coco_categories()) as coco:
        for image_id, item in enumerate(images, start=1):
            entry = coco_image(item, image_id) | {"image_key": f"img/{item.file_name}"}
            coco.add(entry, coco_annotations(item, image_id, coco.annotations + 1))
        return coco.finish().read_bytes()


@pytest.mark.parametrize("count", [0, 1, 2, 40])
def test_the_streamed_coco_document_is_byte_for_byte_the_whole_one(
    tmp_path: Path, count: int
) -> None:
    # given
    images = _images(count)
    whole = build_coco(images)
    for entry, item in zip(whole["images"], images, strict=True):
        entry["image_key"] = f"img/{item.file_name}"
    # when
    streamed = _streamed(tmp_path, images)
    # then: what the job wrote before, json.dumps(document, indent=1), and no side file left
    assert streamed == json.dumps(whole, indent=1).encode()
    assert [p.name for p in tmp_path.iterdir()] == ["annotations.json"]


def test_a_document_without_boxes_keeps_an_empty_annotations_list(tmp_path: Path) -> None:
    images = [ImageBoxes("a.png", 10, 10, ())]
    assert json.loads(_streamed(tmp_path, images))["annotations"] == []


@pytest.mark.parametrize("count", [1, 2, 7, 8, 129, 130, 257, 1000, 4099])
def test_mean_and_median_read_back_from_the_file_equal_numpys(tmp_path: Path, count: int) -> None:
    # given: ratios with repeats, added a few at a time
    rng = np.random.default_rng(count)
    values = [float(v) for v in np.round(rng.random(count) ** 3, 3) + rng.random(count) * 1e-9]
    values[: count // 4] = [values[0]] * (count // 4)
    with AreaRatios(tmp_path / "ratios.f64") as ratios:
        for start in range(0, count, 5):
            ratios.add(values[start : start + 5])
        ratios.add([])
        # when
        got = (ratios.mean(), ratios.median(), ratios.minimum, ratios.maximum)
    # then: exactly, not approximately
    expected = (np.mean(values), np.median(values), min(values), max(values))
    assert got == tuple(float(v) for v in expected)


def test_a_long_list_sums_as_numpy_does(tmp_path: Path) -> None:
    # given: enough values that numpy's pairwise sum splits them
    values = list(np.random.default_rng(1).random(20_011) ** 4)
    with AreaRatios(tmp_path / "ratios.f64") as ratios:
        ratios.add(values)
        assert (ratios.mean(), ratios.median()) == (np.mean(values), np.median(values))


def test_the_tally_gives_the_whole_pools_summary(tmp_path: Path) -> None:
    # given
    images = _images(300, seed=3)
    # when
    with AreaRatios(tmp_path / "ratios.f64") as ratios:
        tally = BoxTally(ratios)
        for item in images:
            tally.add([b.width * b.height / (item.width * item.height) for b in item.boxes])
        streamed = tally.summary()
    # then: values and field order of ml.pseudo_boxes.summarize
    whole = asdict(summarize(images)["steel"])
    assert list(streamed.items()) == list(whole.items())


def test_a_tally_of_images_without_boxes_is_all_zero(tmp_path: Path) -> None:
    with AreaRatios(tmp_path / "ratios.f64") as ratios:
        tally = BoxTally(ratios)
        tally.add([])
        tally.add([])
        summary = tally.summary()
    assert summary == asdict(summarize([ImageBoxes("a", 1, 1, ()), ImageBoxes("b", 1, 1, ())])[""])


def test_top_examples_keep_the_first_of_a_stable_sort_and_no_more() -> None:
    # given: ranks with ties
    ranks = [(True, 0.0), (False, -0.5), (False, -0.9), (True, 0.0), (False, -0.5), (False, -0.9)]
    top = TopExamples[tuple[bool, float]](3, lambda rank: rank)
    # when
    for index, rank in enumerate(ranks):
        top.offer(index, rank)
        assert len(top.best()) <= 3
    # then
    expected = sorted(range(len(ranks)), key=lambda i: ranks[i])[:3]
    assert [index for index, _ in top.best()] == expected == [2, 5, 1]


def test_no_examples_keeps_nothing() -> None:
    top = TopExamples[int](0, lambda item: (False, float(item)))
    top.offer(0, 1)
    assert top.best() == []


def test_job_scratch_starts_empty_after_a_killed_run_and_is_removed(tmp_path: Path) -> None:
    # given what a killed delivery of the same job left
    left = tmp_path / "scratch" / "pseudo-labels-job1"
    left.mkdir(parents=True)
    (left / "annotations.json").write_text('{\n "images": [')
    # when
    with job_scratch(tmp_path, "job1") as folder:
        seen = list(folder.iterdir())
    # then
    assert folder == left
    assert seen == []
    assert not folder.exists()
