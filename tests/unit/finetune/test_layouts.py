"""Labelled sets in every common layout import with no layout flags, keep their own splits,
and give the boxes an explicit-flag import gives; empty or barely labelled imports are
refused or warned about; the stratified split keeps classes, defect-free images and
duplicate groups where they belong."""

from __future__ import annotations

import shutil
from collections.abc import Callable
from pathlib import Path
from typing import Any

import cv2
import numpy as np
import pytest
import yaml

from services.finetune.config import FinetuneSettings
from services.finetune.ml.coco import write_coco
from services.finetune.ml.dataset import Box, DetectionDataset, ImageRecord
from services.finetune.ml.image_files import fingerprint, same_picture
from services.finetune.ml.layout_detect import detect_layout
from services.finetune.ml.splits import split_stratified
from services.finetune.ml.voc import export_voc
from services.finetune.ml.yolo_format import export_yolo
from services.finetune.params import DatasetImportParams
from services.finetune.stores.datasets import DatasetCatalog, DatasetRef
from services.finetune.usecases.datasets import import_local_dataset
from shared.config import CommonSettings, PathSettings
from shared.errors import InvalidInputError
from shared.storage.filesystem import FileObjectStore

SETTINGS = FinetuneSettings(common=CommonSettings(paths=PathSettings(home=Path("unused"))))
CLASSES = ("light", "dark")
Boxes = dict[str, list[tuple[str, float, float, float, float]]]


@pytest.fixture(scope="module")
def drawn(make_dataset: Any) -> tuple[DetectionDataset, Path]:
    return make_dataset(n=12, classes=CLASSES, size=64, seed=11)  # type: ignore[no-any-return]


def _import(root: Path, tmp: Path, version: str = "v1", **fields: Any) -> dict[str, Any]:
    store = FileObjectStore(tmp / f"store-{version}")
    params = DatasetImportParams.model_validate({"name": "set", "prefix": "x/", **fields})
    _, manifest = import_local_dataset(store, root, params, version, SETTINGS)
    manifest["_store"] = store
    return manifest


def _boxes(manifest: dict[str, Any]) -> Boxes:
    """Stored boxes per image (split prefixes dropped), rounded to 0.01 px."""
    store: FileObjectStore = manifest["_store"]
    ref = DatasetRef("set", manifest["version"])
    dataset = DetectionDataset.model_validate_json(DatasetCatalog(store).dataset_bytes(ref))
    return {
        im.file_name.split("__")[-1]: sorted(
            (dataset.classes[b.class_id], *(round(v, 2) for v in (b.x1, b.y1, b.x2, b.y2)))
            for b in im.boxes
        )
        for im in dataset.images
    }


def _same_boxes(got: Boxes, want: Boxes) -> None:
    assert got.keys() == want.keys()
    for name, boxes in want.items():
        assert [b[0] for b in got[name]] == [b[0] for b in boxes], name
        assert np.allclose([b[1:] for b in got[name]], [b[1:] for b in boxes], atol=0.02), name


def _truth(dataset: DetectionDataset) -> Boxes:
    return {
        im.file_name: sorted(
            (dataset.classes[b.class_id], *(round(float(v), 2) for v in (b.x1, b.y1, b.x2, b.y2)))
            for b in im.boxes
        )
        for im in dataset.images
    }


def _split(dataset: DetectionDataset) -> dict[str, DetectionDataset]:
    names = [im.file_name for im in dataset.images]
    return {"train": dataset.subset(names[:8]), "val": dataset.subset(names[8:])}


def _copy_images(dataset: DetectionDataset, images: Path, folder: Path) -> None:
    folder.mkdir(parents=True, exist_ok=True)
    for image in dataset.images:
        shutil.copyfile(images / image.file_name, folder / image.file_name)


def _polygons(dataset: DetectionDataset, labels: Path) -> None:
    """Segment labels: each box as its 4-corner polygon, normalised."""
    labels.mkdir(parents=True, exist_ok=True)
    for im in dataset.images:
        lines = []
        for b in im.boxes:
            xs = [b.x1 / im.width, b.x2 / im.width, b.x2 / im.width, b.x1 / im.width]
            ys = [b.y1 / im.height, b.y1 / im.height, b.y2 / im.height, b.y2 / im.height]
            points = " ".join(f"{x:.6f} {y:.6f}" for x, y in zip(xs, ys, strict=True))
            lines.append(f"{b.class_id} {points}")
        (labels / f"{Path(im.file_name).stem}.txt").write_text("\n".join(lines) + "\n")


def _ultralytics(ds: DetectionDataset, images: Path, root: Path, segment: bool = False) -> None:
    for name, part in _split(ds).items():
        _copy_images(part, images, root / "images" / name)
        if segment:
            _polygons(part, root / "labels" / name)
        else:
            export_yolo(part, root / "labels" / name)
    doc = {"path": "/elsewhere/on/another/machine", "train": "images/train",
           "val": "images/val", "names": dict(enumerate(ds.classes))}  # fmt: skip
    if segment:
        doc["task"] = "segment"
    (root / "data.yaml").write_text(yaml.safe_dump(doc))


def _split_first(ds: DetectionDataset, images: Path, root: Path) -> None:
    """Split folders at the top and a data file that climbs out (``../train/images``)."""
    for name, part in _split(ds).items():
        folder = "valid" if name == "val" else name
        _copy_images(part, images, root / folder / "images")
        export_yolo(part, root / folder / "labels")
    doc = {"train": "../train/images", "val": "../valid/images", "nc": 2, "names": list(CLASSES)}
    (root / "data.yaml").write_text(yaml.safe_dump(doc))


def _yolo_flat(ds: DetectionDataset, images: Path, root: Path) -> None:
    _copy_images(ds, images, root / "images")
    export_yolo(ds, root / "labels")
    shutil.move(root / "labels" / "classes.txt", root / "classes.txt")


def _coco(ds: DetectionDataset, images: Path, root: Path) -> None:
    _copy_images(ds, images, root / "images")
    write_coco(ds, root / "annotations" / "instances.json")


def _voc(ds: DetectionDataset, images: Path, root: Path) -> None:
    _copy_images(ds, images, root / "JPEGImages")
    export_voc(ds, root / "Annotations")


def _masks(ds: DetectionDataset, images: Path, root: Path) -> None:
    for im in ds.images:
        cls = ds.classes[im.boxes[0].class_id]
        folder = root / "images" / cls
        folder.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(images / im.file_name, folder / im.file_name)
        mask = np.zeros((im.height, im.width), np.uint8)
        for b in im.boxes:
            mask[int(b.y1) : int(b.y2), int(b.x1) : int(b.x2)] = 255
        (root / "masks" / cls).mkdir(parents=True, exist_ok=True)
        cv2.imwrite(str(root / "masks" / cls / im.file_name), mask)


WRITERS: dict[str, Callable[..., None]] = {
    "ultralytics-detect": _ultralytics,
    "ultralytics-segment": lambda ds, images, root: _ultralytics(ds, images, root, True),
    "split-first": _split_first,
    "yolo-flat": _yolo_flat,
    "coco": _coco,
    "voc": _voc,
    "masks": _masks,
}
EXPLICIT: dict[str, dict[str, Any]] = {
    "yolo-flat": {"format": "yolo", "images": "images", "annotations": "labels"},
    "coco": {"format": "coco", "images": "images", "annotations": "annotations/instances.json"},
    "voc": {"format": "voc", "images": "JPEGImages", "annotations": "Annotations"},
    "masks": {"format": "masks", "images": "images", "annotations": "masks"},
}


@pytest.mark.parametrize("layout", sorted(WRITERS))
def test_each_layout_imports_with_no_flags_and_gives_the_drawn_boxes(
    layout: str, drawn: tuple[DetectionDataset, Path], tmp_path: Path
) -> None:
    # given the drawn set written in this layout
    dataset, images = drawn
    root = tmp_path / layout
    WRITERS[layout](dataset, images, root)
    # when it is imported with no layout flag
    manifest = _import(root, tmp_path)
    # then every image comes back with its boxes (by class name: a masks set names its
    # classes after its folders, in its own order)
    _same_boxes(_boxes(manifest), _truth(dataset))
    assert manifest["layout"]
    assert manifest["summary"]["images"] == len(dataset.images)


@pytest.mark.parametrize("layout", ["ultralytics-detect", "ultralytics-segment", "split-first"])
def test_a_set_with_its_own_splits_keeps_them(
    layout: str, drawn: tuple[DetectionDataset, Path], tmp_path: Path
) -> None:
    dataset, images = drawn
    root = tmp_path / layout
    WRITERS[layout](dataset, images, root)
    manifest = _import(root, tmp_path)
    assert manifest["splits"] == {"train": 8, "val": 4}
    assert manifest["summary"]["splits"]["val"]["images"] == 4


@pytest.mark.parametrize("layout", sorted(EXPLICIT))
def test_detection_gives_what_the_explicit_flags_give(
    layout: str, drawn: tuple[DetectionDataset, Path], tmp_path: Path
) -> None:
    dataset, images = drawn
    root = tmp_path / layout
    WRITERS[layout](dataset, images, root)
    found = _import(root, tmp_path, "auto")
    given = _import(root, tmp_path, "given", **EXPLICIT[layout])
    _same_boxes(_boxes(found), _boxes(given))
    assert found["splits"] == given["splits"]


def test_segment_labels_are_recognised_as_such(
    drawn: tuple[DetectionDataset, Path], tmp_path: Path
) -> None:
    dataset, images = drawn
    _ultralytics(dataset, images, tmp_path / "seg", segment=True)
    found = detect_layout(tmp_path / "seg")
    assert (found.format, found.task) == ("yolo", "segment")
    assert [s.name for s in found.splits] == ["train", "val"]
    assert found.classes == list(CLASSES)


def test_an_unknown_layout_says_what_it_found_and_what_to_pass(
    drawn: tuple[DetectionDataset, Path], tmp_path: Path
) -> None:
    dataset, images = drawn
    _copy_images(dataset, images, tmp_path / "only-images" / "pics")
    with pytest.raises(InvalidInputError) as caught:
        _import(tmp_path / "only-images", tmp_path)
    assert caught.value.code == "unknown_layout"
    assert "pics" in caught.value.message
    assert "--format" in caught.value.message


def test_a_labels_folder_that_matches_no_image_is_refused(
    drawn: tuple[DetectionDataset, Path], tmp_path: Path
) -> None:
    # given labels named after other images
    dataset, images = drawn
    root = tmp_path / "mismatch"
    _yolo_flat(dataset, images, root)
    for label in (root / "labels").glob("*.txt"):
        label.rename(label.with_name(f"other_{label.name}"))
    # when / then
    with pytest.raises(InvalidInputError) as caught:
        _import(root, tmp_path)
    assert caught.value.code == "annotations_unmatched"
    assert "labels" in caught.value.message


def test_a_missing_annotations_folder_is_refused(
    drawn: tuple[DetectionDataset, Path], tmp_path: Path
) -> None:
    dataset, images = drawn
    root = tmp_path / "no-labels"
    _yolo_flat(dataset, images, root)
    with pytest.raises(InvalidInputError) as caught:
        _import(root, tmp_path, format="yolo", annotations="labels/train")
    assert caught.value.code == "annotations_missing"
    assert "labels/train" in caught.value.message


def test_a_barely_labelled_set_imports_with_a_warning(tmp_path: Path) -> None:
    # given 100 images of which 2 have label files
    root = tmp_path / "sparse"
    (root / "images").mkdir(parents=True)
    (root / "labels").mkdir()
    rng = np.random.default_rng(0)
    for i in range(100):
        pixels = rng.integers(0, 255, (32, 32, 3), dtype=np.uint8)
        cv2.imwrite(str(root / "images" / f"im_{i:03d}.png"), pixels)
    for i in (0, 1):
        (root / "labels" / f"im_{i:03d}.txt").write_text("0 0.5 0.5 0.25 0.25\n")
    (root / "classes.txt").write_text("scratch\n")
    # when
    manifest = _import(root, tmp_path)
    # then
    assert any("only 2 of 100 images" in w for w in manifest["warnings"])
    assert manifest["summary"]["splits"]["train"]["unlabelled"] > 0


def test_the_summary_counts_defects_sizes_and_duplicates(
    drawn: tuple[DetectionDataset, Path], tmp_path: Path
) -> None:
    dataset, images = drawn
    root = tmp_path / "voc"
    _voc(dataset, images, root)
    shutil.copyfile(root / "JPEGImages" / "img_000.png", root / "JPEGImages" / "twin.png")
    shutil.copyfile(root / "Annotations" / "img_000.xml", root / "Annotations" / "twin.xml")
    xml = root / "Annotations" / "twin.xml"
    xml.write_text(xml.read_text().replace("img_000.png", "twin.png"))
    manifest = _import(root, tmp_path, summary_imgsz=64)
    summary = manifest["summary"]
    assert sum(s["images"] for s in summary["splits"].values()) == 13
    assert summary["duplicates"]["groups"] == 1
    assert sum(summary["box_sizes"]["counts"]) == 13
    assert summary["box_sizes"]["vanishing"] == 0


# -- the stratified split -------------------------------------------------------------------
def _stratified_set(tmp_path: Path) -> tuple[DetectionDataset, dict[str, str]]:
    """3 classes x 10 images, 10 defect-free, and 3 duplicate pairs (one key per pair)."""
    images, groups = [], {}
    for i in range(40):
        boxes = [] if i >= 30 else [Box(x1=1, y1=1, x2=9, y2=9, class_id=i % 3)]
        images.append(ImageRecord(file_name=f"im_{i:02d}.png", width=32, height=32, boxes=boxes))
    for i in range(3):  # duplicates: im_0i and im_1i share a group
        groups[f"im_{i:02d}.png"] = groups[f"im_{10 + i:02d}.png"] = f"dup{i}"
    return DetectionDataset(classes=["a", "b", "c"], images=images), groups


@pytest.mark.parametrize("seed", range(8))
def test_val_holds_every_class_and_defect_free_images_and_no_split_pair(
    seed: int, tmp_path: Path
) -> None:
    dataset, groups = _stratified_set(tmp_path)
    train, val = split_stratified(dataset, 0.1, seed, groups)
    present = {b.class_id for im in val.images for b in im.boxes}
    assert present == {0, 1, 2}
    assert any(not im.boxes for im in val.images)
    assert len(train.images) + len(val.images) == 40
    val_names = {im.file_name for im in val.images}
    for i in range(3):
        pair = {f"im_{i:02d}.png", f"im_{10 + i:02d}.png"}
        assert pair <= val_names or not pair & val_names


def test_near_duplicates_are_grouped_across_the_split(
    drawn: tuple[DetectionDataset, Path], tmp_path: Path
) -> None:
    # given a VOC set where one image is there twice: the copy a little brighter, so its
    # bytes differ and its picture does not
    dataset, images = drawn
    root = tmp_path / "near"
    _voc(dataset, images, root)
    pixels = cv2.imread(str(root / "JPEGImages" / "img_003.png")).astype(np.int16)
    brighter = np.clip(pixels + 6, 0, 255).astype(np.uint8)
    cv2.imwrite(str(root / "JPEGImages" / "img_003_copy.png"), brighter)
    xml = (root / "Annotations" / "img_003.xml").read_text()
    (root / "Annotations" / "img_003_copy.xml").write_text(
        xml.replace("img_003.png", "img_003_copy.png")
    )
    for seed in range(6):
        manifest = _import(root, tmp_path, f"s{seed}", seed=seed, val_fraction=0.3)
        splits = DatasetCatalog(manifest["_store"]).splits(DatasetRef("set", f"s{seed}"))
        pair = {"img_003.png", "img_003_copy.png"}
        assert pair <= set(splits["train"]) or pair <= set(splits["val"]), seed
    assert manifest["duplicates"] == 0  # no byte-identical pair: the grouping is perceptual
    assert manifest["summary"]["duplicates"]["groups"] == 1


def test_textures_under_one_light_are_not_duplicates_and_a_re_exposed_copy_is() -> None:
    # given two different noise textures under the same left-to-right lighting ramp (their
    # dHashes follow the ramp and agree), and one of them again, brighter and re-encoded
    rng = np.random.default_rng(5)
    ramp = np.linspace(40, 200, 128, dtype=np.float32)[None, :]
    first = np.clip(ramp + rng.normal(0, 25, (128, 128)), 0, 255).astype(np.uint8)
    second = np.clip(ramp + rng.normal(0, 25, (128, 128)), 0, 255).astype(np.uint8)
    brighter = np.clip(first.astype(np.int16) + 8, 0, 255).astype(np.uint8)
    ok, jpeg = cv2.imencode(".jpg", brighter)
    assert ok
    again = cv2.imdecode(jpeg, cv2.IMREAD_GRAYSCALE)
    a, b, c = fingerprint(first), fingerprint(second), fingerprint(again)
    # then
    assert (a.dhash ^ b.dhash).bit_count() <= 6  # the hash alone would call them one picture
    assert not same_picture(a, b)
    assert same_picture(a, c)
