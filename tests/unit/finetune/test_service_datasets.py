"""Stored datasets: local VOC/COCO import, deterministic splits, duplicates, mini-N, bad input."""

from __future__ import annotations

import json
import shutil
from pathlib import Path
from typing import Any

import pytest

from services.finetune.config import FinetuneSettings
from services.finetune.ml.coco import write_coco
from services.finetune.ml.dataset import DetectionDataset, ImageRecord
from services.finetune.ml.voc import export_voc
from services.finetune.params import DatasetImportParams
from services.finetune.stores.datasets import DatasetCatalog, DatasetRef, load_split
from services.finetune.usecases.datasets import import_local_dataset
from shared.config import CommonSettings, PathSettings
from shared.errors import InvalidInputError, NotFoundError
from shared.storage.filesystem import FileObjectStore

SETTINGS = FinetuneSettings(common=CommonSettings(paths=PathSettings(home=Path("unused"))))


def _voc_folder(dataset: DetectionDataset, images: Path, root: Path) -> Path:
    shutil.copytree(images, root / "images")
    export_voc(dataset, root / "annotations")
    return root


def _with_duplicate(dataset: DetectionDataset, images: Path) -> DetectionDataset:
    # NEU-DET has a byte-identical pair under two names; mimic it with the first image
    first = dataset.images[0]
    shutil.copyfile(images / first.file_name, images / "copy_of_first.png")
    twin = ImageRecord(
        file_name="copy_of_first.png", width=first.width, height=first.height, boxes=first.boxes
    )
    return DetectionDataset(classes=dataset.classes, images=[*dataset.images, twin])


@pytest.fixture
def store(tmp_path: Path) -> FileObjectStore:
    return FileObjectStore(tmp_path / "store")


@pytest.fixture(scope="module")
def voc_root(make_dataset: Any, tmp_path_factory: pytest.TempPathFactory) -> Path:
    dataset, images = make_dataset(n=12, classes=("light", "dark"), size=64, seed=3)
    dataset = _with_duplicate(dataset, images)
    return _voc_folder(dataset, images, tmp_path_factory.mktemp("voc") / "set")


def _import(store: FileObjectStore, root: Path, version: str, **fields: Any) -> dict[str, Any]:
    params = DatasetImportParams(
        name="set", prefix="unused/", **{"format": "voc", "val_fraction": 0.5, **fields}
    )
    _, manifest = import_local_dataset(store, root, params, version, SETTINGS)
    return manifest


def test_voc_import_publishes_images_labels_and_splits(
    store: FileObjectStore, voc_root: Path
) -> None:
    # when
    manifest = _import(store, voc_root, "v1")
    # then
    catalog = DatasetCatalog(store)
    assert catalog.resolve("set") == DatasetRef("set", "v1")
    assert manifest["classes"] == ["dark", "light"]
    assert manifest["images"] == 13
    assert manifest["duplicates"] == 1
    assert sum(manifest["splits"][s] for s in ("train", "val")) == 13
    assert store.exists("datasets/set/v1/images/copy_of_first.png")


def test_same_seed_gives_the_same_split(store: FileObjectStore, voc_root: Path) -> None:
    # when the folder is imported twice with one seed
    _import(store, voc_root, "v1", seed=7)
    _import(store, voc_root, "v2", seed=7)
    # then
    catalog = DatasetCatalog(store)
    assert catalog.splits(DatasetRef("set", "v1")) == catalog.splits(DatasetRef("set", "v2"))
    assert catalog.resolve("set:latest").version == "v2"


@pytest.mark.parametrize("seed", range(6))
def test_duplicates_never_straddle_train_and_val(
    store: FileObjectStore, voc_root: Path, seed: int
) -> None:
    # when
    _import(store, voc_root, "v1", seed=seed)
    # then the byte-identical pair sits on one side
    splits = DatasetCatalog(store).splits(DatasetRef("set", "v1"))
    pair = {"img_000.png", "copy_of_first.png"}
    assert pair <= set(splits["train"]) or pair <= set(splits["val"])


def test_mini_subsets_come_from_train_with_every_class(
    store: FileObjectStore, voc_root: Path
) -> None:
    # when
    _import(store, voc_root, "v1", mini=[1])
    # then
    ref = DatasetRef("set", "v1")
    splits = DatasetCatalog(store).splits(ref)
    assert set(splits["mini-1"]) <= set(splits["train"])
    dataset = DetectionDataset.model_validate_json(DatasetCatalog(store).dataset_bytes(ref))
    mini = dataset.subset(splits["mini-1"])
    assert all(count >= 1 for count in mini.image_counts().values())


def test_a_mini_split_not_stored_is_drawn_like_a_stored_one(
    store: FileObjectStore, voc_root: Path, tmp_path: Path
) -> None:
    # given one version with mini-2 stored and one without
    _import(store, voc_root, "stored", mini=[2])
    _import(store, voc_root, "computed")
    # when
    stored, _ = load_split(store, DatasetRef("set", "stored"), "mini-2", tmp_path / "a")
    computed, images = load_split(store, DatasetRef("set", "computed"), "mini-2", tmp_path / "b")
    # then
    assert stored == computed
    assert all((images / im.file_name).is_file() for im in computed.images)


def test_coco_import_keeps_the_category_order(
    store: FileObjectStore, make_dataset: Any, tmp_path: Path
) -> None:
    # given
    dataset, images = make_dataset(n=4, classes=("b-class", "a-class"), size=64, seed=4)
    shutil.copytree(images, tmp_path / "images")
    write_coco(dataset, tmp_path / "annotations.json")
    # when
    manifest = _import(store, tmp_path, "v1", format="coco")
    # then
    assert manifest["classes"] == ["b-class", "a-class"]
    assert manifest["boxes"] == 4


def test_a_corrupt_image_is_left_out_and_named(
    store: FileObjectStore, voc_root: Path, tmp_path: Path
) -> None:
    # given
    root = shutil.copytree(voc_root, tmp_path / "broken")
    (root / "images" / "img_003.png").write_bytes(b"\x89PNG\r\n\x1a\n not really")
    # when
    manifest = _import(store, root, "v1")
    # then the rest is stored, and the summary and the warnings name the bad file
    assert manifest["images"] == 12
    assert manifest["summary"]["failed_to_decode"] == ["img_003.png"]
    assert any("img_003.png" in warning for warning in manifest["warnings"])
    assert not store.exists("datasets/set/v1/images/img_003.png")


def test_a_set_with_no_decodable_image_is_refused_and_publishes_nothing(
    store: FileObjectStore, voc_root: Path, tmp_path: Path
) -> None:
    # given
    root = shutil.copytree(voc_root, tmp_path / "all-broken")
    for image in (root / "images").glob("*.png"):
        image.write_bytes(b"\x89PNG\r\n\x1a\n not really")
    # when
    with pytest.raises(InvalidInputError) as caught:
        _import(store, root, "v1")
    # then
    assert caught.value.code == "no_decodable_images"
    assert DatasetCatalog(store).names() == []


def test_labels_for_another_image_size_are_refused(
    store: FileObjectStore, voc_root: Path, tmp_path: Path
) -> None:
    # given an annotation claiming 128 x 128 for a 64 x 64 image
    root = shutil.copytree(voc_root, tmp_path / "resized")
    xml = root / "annotations" / "img_001.xml"
    xml.write_text(xml.read_text().replace("<width>64</width>", "<width>128</width>"))
    # when / then
    with pytest.raises(InvalidInputError) as caught:
        _import(store, root, "v1")
    assert caught.value.code == "image_size_mismatch"


def test_an_unknown_dataset_is_not_found(store: FileObjectStore) -> None:
    # when / then
    with pytest.raises(NotFoundError):
        DatasetCatalog(store).resolve("missing:v1")


def test_the_stored_dataset_json_round_trips(store: FileObjectStore, voc_root: Path) -> None:
    # when
    _import(store, voc_root, "v1")
    # then
    raw = json.loads(DatasetCatalog(store).dataset_bytes(DatasetRef("set", "v1")))
    assert DetectionDataset.model_validate(raw).num_boxes == 13
