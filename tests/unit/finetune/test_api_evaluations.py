"""Evaluation routes: a saved evaluation with its errors, two compared, and exports for review
that the dataset import takes back with the same boxes (COCO exactly, YOLO to 6 decimals)."""

from __future__ import annotations

import io
import json
import zipfile
from collections.abc import Iterator
from pathlib import Path

import pytest

from services.finetune.ml.dataset import DetectionDataset
from services.finetune.params import DatasetImportParams
from services.finetune.stores.datasets import DatasetCatalog
from services.finetune.stores.models import ModelRegistry
from services.finetune.stores.pseudo_labels import load_pseudo_labels
from services.finetune.usecases.datasets import import_local_dataset
from services.finetune.usecases.evaluations import evaluation_name
from shared.imaging.intake import image_limits
from tests.unit.finetune.conftest import MakeDataset, stage_pseudo_labelled
from tests.unit.finetune.review_support import (
    OURS,
    SHAPES,
    THEIRS,
    World,
    evaluated_world,
    stage_with_manifest,
)


@pytest.fixture
def world(tmp_path: Path, make_dataset: MakeDataset) -> Iterator[World]:
    with evaluated_world(tmp_path, make_dataset) as built:
        yield built


def test_a_saved_evaluation_is_served_with_misses_and_false_alarms(world: World) -> None:
    # when
    response = world.http.get("/v1/models/det/versions/v1/evaluation", params={"split": "val"})
    # then
    assert response.status_code == 200, response.text
    doc = response.json()
    assert doc["dataset"] == "shapes:v1"
    assert doc["conf"] == 0.25
    errors = doc["errors"]
    assert errors["totals"]["misses"] == 1
    assert errors["totals"]["false_alarms"] == 1
    missed = [im["file_name"] for im in errors["images"] if im["misses"]]
    assert missed == [world.val.images[4].file_name]
    assert errors["confusion"]["labels"] == ["light", "dark", "background"]
    assert set(doc["pr_curves"]["classes"]) == {"light", "dark"}
    assert doc["per_class"]["light"]["num_gt"] == 3
    # and naming the dataset finds the same document
    named = world.http.get(
        "/v1/models/det/versions/v1/evaluation", params={"dataset": "shapes", "split": "val"}
    )
    assert named.json() == doc


def test_a_missing_evaluation_is_a_404_naming_the_route_to_make_one(world: World) -> None:
    # when
    response = world.http.get("/v1/models/det/versions/v1/evaluation", params={"split": "train"})
    unknown = world.http.get("/v1/models/det/versions/v9/evaluation")
    # then
    assert response.status_code == 404
    assert response.json()["code"] == "evaluation_not_found"
    assert "POST /v1/evaluations" in response.json()["detail"]
    assert unknown.status_code == 404


def test_compare_lists_every_image_largest_difference_first(world: World) -> None:
    # when
    response = world.http.get(
        "/v1/evaluations/compare", params={"a": "det:v1", "b": "det-scratch", "split": "val"}
    )
    # then
    assert response.status_code == 200, response.text
    body = response.json()
    assert (body["a"]["misses"], body["b"]["misses"]) == (1, 4)
    assert (body["a"]["false_alarms"], body["b"]["false_alarms"]) == (1, 2)
    names = [im.file_name for im in world.val.images]
    rows = [(r["file_name"], r["difference"], r["change"]) for r in body["images"]]
    assert rows == [
        (names[3], 2, 2),
        (names[0], 1, 1),
        (names[1], 1, 1),
        (names[2], 1, 1),
        (names[5], 1, -1),
        (names[4], 0, 0),
    ]
    assert body["images"][0]["b"] == {"misses": 0, "false_alarms": 2, "detections": 3}


def test_compare_refuses_an_evaluation_saved_before_per_image_records(world: World) -> None:
    # given the scratch model's evaluation as older jobs saved it: mAP figures only
    registry = ModelRegistry(world.store)
    name = evaluation_name(str(SHAPES), "val")
    old = registry.evaluation(THEIRS, name)
    assert old is not None
    registry.save_evaluation(THEIRS, name, {k: v for k, v in old.items() if k != "errors"})
    # when
    response = world.http.get("/v1/evaluations/compare", params={"a": "det", "b": "det-scratch"})
    # then
    assert response.status_code == 422
    assert response.json()["code"] == "evaluation_without_errors"


def _unzip(content: bytes, dest: Path) -> Path:
    with zipfile.ZipFile(io.BytesIO(content)) as archive:
        archive.extractall(dest)
    return dest


def _reimport(world: World, root: Path) -> dict[str, list[tuple[float, ...]]]:
    """Import the folder as ``agssp data import`` does; boxes by image name."""
    params = DatasetImportParams.model_validate({"name": "back", "prefix": "x/"})
    ref, _ = import_local_dataset(world.store, root, params, "r1", world.settings)
    back = DetectionDataset.model_validate_json(DatasetCatalog(world.store).dataset_bytes(ref))
    return _boxes(back)


def _boxes(dataset: DetectionDataset) -> dict[str, list[tuple[float, ...]]]:
    return {
        im.file_name: sorted((b.class_id, b.x1, b.y1, b.x2, b.y2) for b in im.boxes)
        for im in dataset.images
    }


def _saved_predictions(world: World) -> dict[str, list[tuple[float, ...]]]:
    doc = ModelRegistry(world.store).evaluation(OURS, evaluation_name(str(SHAPES), "val"))
    assert doc is not None
    return {
        im["file_name"]: sorted((d["class_id"], *d["box"]) for d in im["dets"])
        for im in doc["errors"]["images"]
    }


def test_exported_predictions_come_back_with_identical_boxes_from_coco(
    world: World, tmp_path: Path
) -> None:
    # when the predictions are exported as COCO and the folder imported again
    response = world.http.get(
        "/v1/review-exports/predictions", params={"model": "det:v1", "format": "coco"}
    )
    # then the zip holds the images and the annotations, scores included
    assert response.status_code == 200, response.text
    assert response.headers["content-type"] == "application/zip"
    assert 'filename="det-v1-val-coco.zip"' in response.headers["content-disposition"]
    root = _unzip(response.content, tmp_path / "coco")
    document = json.loads((root / "annotations.json").read_text())
    assert sorted(a["score"] for a in document["annotations"])[-1] == pytest.approx(0.9)
    assert len(list((root / "images").iterdir())) == 6
    # and every box comes back exactly
    assert _reimport(world, root) == _saved_predictions(world)


def test_exported_predictions_come_back_from_yolo_within_its_decimals(
    world: World, tmp_path: Path
) -> None:
    # when
    response = world.http.get(
        "/v1/review-exports/predictions", params={"model": "det:v1", "format": "yolo"}
    )
    # then
    assert response.status_code == 200, response.text
    root = _unzip(response.content, tmp_path / "yolo")
    assert (root / "classes.txt").read_text() == "light\ndark\n"
    back, saved = _reimport(world, root), _saved_predictions(world)
    assert back.keys() == saved.keys()
    for name, boxes in saved.items():
        assert len(back[name]) == len(boxes)
        for got, want in zip(back[name], boxes, strict=True):
            assert got[0] == want[0]
            assert got[1:] == pytest.approx(want[1:], abs=64 * 1e-6)


@pytest.mark.parametrize("fmt", ["coco", "yolo"])
def test_exported_pseudo_boxes_come_back_identical(
    world: World, make_dataset: MakeDataset, tmp_path: Path, fmt: str
) -> None:
    # given a pseudo-label output with its manifest (which names the images)
    stage_with_manifest(world, make_dataset)
    limits = image_limits(world.settings)
    source = load_pseudo_labels(
        world.store, "uploads/rect/", "pseudo/rect/pl-1/", tmp_path / "src", limits
    )
    # when it is exported and imported again
    response = world.http.get(
        "/v1/review-exports/pseudo-labels",
        params={"labels_prefix": "pseudo/rect/pl-1/labels/", "format": fmt},
    )
    # then the boxes are those AGDP trains on, to the last bit
    assert response.status_code == 200, response.text
    assert 'filename="pseudo-pl-1-' in response.headers["content-disposition"]
    assert _reimport(world, _unzip(response.content, tmp_path / fmt)) == _boxes(source.dataset)


def test_pseudo_boxes_without_a_manifest_need_the_images_prefix(
    world: World, make_dataset: MakeDataset
) -> None:
    # given hand-made labels: no manifest names the images
    stage_pseudo_labelled(world.store, make_dataset)
    # when / then
    response = world.http.get(
        "/v1/review-exports/pseudo-labels", params={"labels_prefix": "pseudo/rect/pl-1/"}
    )
    assert response.status_code == 422
    assert response.json()["code"] == "images_prefix_required"
    given = world.http.get(
        "/v1/review-exports/pseudo-labels",
        params={"labels_prefix": "pseudo/rect/pl-1/", "images_prefix": "uploads/rect/"},
    )
    assert given.status_code == 200, given.text
