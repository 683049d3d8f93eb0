"""The AGDP job reads a pseudo-label output written with the seam's writer helpers."""

from __future__ import annotations

from pathlib import Path

import pytest

from services.finetune.ml.dataset import DetectionDataset
from services.finetune.ml.yolo_format import yolo_label_text
from services.finetune.stores.pseudo_labels import load_pseudo_labels
from shared.errors import InvalidInputError
from shared.imaging.intake import ImageLimits
from shared.schemas.pseudo_labels import (
    CLASS_NAMES,
    CLASSES_FILE,
    PseudoLabelManifest,
    classes_text,
    file_key,
    label_key,
    manifest_key,
)
from shared.storage.filesystem import FileObjectStore
from tests.unit.finetune.conftest import MakeDataset

OUT = "pseudo/rect/pl-7/"
IMAGES = "uploads/rect/"
LIMITS = ImageLimits(max_bytes=2**20, max_pixels=2**20)


def _write_output(
    store: FileObjectStore, dataset: DetectionDataset, images: Path, manifest: bool
) -> None:
    """Images under IMAGES; labels of all but the last image under OUT, as pretrain writes."""
    keys = {}
    for image in dataset.images:
        keys[image.stem] = IMAGES + image.file_name
        store.put_file(keys[image.stem], images / image.file_name)
    labelled = dataset.images[:-1]
    for image in labelled:
        store.put_bytes(label_key(OUT, image.stem), yolo_label_text(image).encode())
    store.put_bytes(file_key(OUT, CLASSES_FILE), classes_text())
    if manifest:
        doc = PseudoLabelManifest(
            job_id="pl-7",
            category="rect",
            images_prefix=IMAGES,
            maps_prefix="maps/rect/m-1/",
            threshold=0.5,
            count=len(labelled),
            images_with_boxes=len(labelled),
            images={im.stem: keys[im.stem] for im in labelled},
        )
        store.put_bytes(manifest_key(OUT), doc.to_bytes())


@pytest.mark.parametrize("prefix", [OUT, OUT + "labels/"])
def test_a_pseudo_label_output_is_read_from_its_prefix_or_its_labels_folder(
    tmp_path: Path, make_dataset: MakeDataset, prefix: str
) -> None:
    # given: an output with its manifest, one image left unlabelled
    dataset, images = make_dataset(n=4, classes=("rect",), seed=3)
    store = FileObjectStore(tmp_path / "store")
    _write_output(store, dataset, images, manifest=True)

    # when
    data = load_pseudo_labels(store, IMAGES, prefix, tmp_path / "data", LIMITS, threads=2)

    # then: the labelled images with their boxes, and the manifest's job in the lineage
    assert data.dataset.classes == list(CLASS_NAMES)
    assert [im.file_name for im in data.dataset.images] == [
        im.file_name for im in dataset.images[:-1]
    ]
    for read, written in zip(data.dataset.images, dataset.images, strict=False):
        got = [v for b in read.boxes for v in (b.x1, b.y1, b.x2, b.y2)]
        want = [v for b in written.boxes for v in (b.x1, b.y1, b.x2, b.y2)]
        assert got == pytest.approx(want, abs=1e-3)
    assert data.source["pseudo_label_job_id"] == "pl-7"
    assert data.source["category"] == "rect"
    assert data.source["images_without_labels"] == 0  # the manifest names the labelled ones


def test_a_hand_made_label_folder_pairs_labels_with_images_by_stem(
    tmp_path: Path, make_dataset: MakeDataset
) -> None:
    # given: labels without a manifest
    dataset, images = make_dataset(n=4, classes=("rect",), seed=4)
    store = FileObjectStore(tmp_path / "store")
    _write_output(store, dataset, images, manifest=False)

    # when
    data = load_pseudo_labels(store, IMAGES, OUT, tmp_path / "data", LIMITS, threads=2)

    # then
    assert len(data.dataset.images) == 3
    assert data.source["pseudo_label_job_id"] is None
    assert data.source["images_without_labels"] == 1


def test_a_manifest_that_is_not_a_pseudo_label_manifest_is_refused(
    tmp_path: Path, make_dataset: MakeDataset
) -> None:
    # given
    dataset, images = make_dataset(n=2, classes=("rect",), seed=5)
    store = FileObjectStore(tmp_path / "store")
    _write_output(store, dataset, images, manifest=False)
    store.put_bytes(manifest_key(OUT), b'{"images": "not a map"}')

    # when / then
    with pytest.raises(InvalidInputError) as caught:
        load_pseudo_labels(store, IMAGES, OUT, tmp_path / "data", LIMITS, threads=2)
    assert caught.value.code == "bad_manifest"
