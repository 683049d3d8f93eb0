"""Magnetic-tile's real images and masks import as boxes through the ``masks`` format."""

from __future__ import annotations

from pathlib import Path

import pytest

from services.finetune.ml.masks import read_mask
from services.finetune.usecases.datasets import import_folder

MT_DEFECTS = ["MT_Blowhole", "MT_Break", "MT_Crack", "MT_Fray", "MT_Uneven"]


@pytest.fixture(scope="module")
def mt_root(shared_data: Path) -> Path:
    root = shared_data / "magnetic-tile"
    if not (root / "MT_Free").is_dir():
        pytest.skip(f"{root} has no MT_Free folder (Magnetic-tile is not placed)")
    return root


def test_every_image_imports_and_only_defect_images_have_boxes(mt_root: Path) -> None:
    # when the shared folder is read with masks beside the images
    dataset, sources = import_folder(mt_root, "masks", images=".", annotations=".")
    # then all 1344 images, the five defect classes, no box on a defect-free image
    assert len(dataset.images) == 1344
    assert dataset.classes == MT_DEFECTS
    free = [im for im in dataset.images if sources[im.file_name].parts[-3] == "MT_Free"]
    assert len(free) == 952
    assert all(not im.boxes for im in free)
    defect = [im for im in dataset.images if sources[im.file_name].parts[-3] != "MT_Free"]
    # a few MT_Uneven masks are empty or hold a faint speck only: those stay background
    for image in (im for im in defect if not im.boxes):
        mask = read_mask(sources[image.file_name].with_suffix(".png"))
        assert int((mask > mask.max() / 2).sum()) < 4
    with_boxes = [im for im in defect if im.boxes]
    assert len(with_boxes) > 0.95 * len(defect)
    for image in with_boxes:
        cls = sources[image.file_name].parts[-3]
        assert {dataset.classes[b.class_id] for b in image.boxes} == {cls}
        assert all(0 <= b.x1 < b.x2 <= image.width for b in image.boxes)
