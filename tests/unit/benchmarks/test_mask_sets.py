"""Map quality runs on any masked set: the layouts the importer knows give the same images and
masks, the split keeps labelled defects off the test side and duplicate pictures on one
side, and ``benchmarks.tocoad_quality --dataset`` runs end to end on a generated set."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import cv2
import numpy as np
import pytest
import yaml

from benchmarks import tocoad_quality
from benchmarks.mask_sets import find_masked_images, make_split, read_masks
from services.anomaly_map.ml.tocoad.presets import preset_config
from shared.errors import InvalidInputError

pytestmark = pytest.mark.unit
SIZE = 48


def _picture(seed: int) -> np.ndarray:
    rng = np.random.default_rng(seed)
    grain = rng.normal(128, 12, (SIZE, SIZE)).astype(np.float32)
    return np.repeat(cv2.GaussianBlur(grain, (0, 0), 1.0)[..., None], 3, 2).clip(0, 255)


def _defect(seed: int) -> tuple[np.ndarray, np.ndarray]:
    image, mask = _picture(seed), np.zeros((SIZE, SIZE), np.uint8)
    x = 8 + seed % 24
    mask[10:20, x : x + 8] = 255
    image[mask > 0] = 30
    return image, mask


def masks_beside(root: Path, normals: int = 10, per_class: int = 4) -> Path:
    """Magnetic-tile's layout: <class>/Imgs/<stem>.jpg with <stem>.png beside it."""
    for index in range(normals):
        folder = root / "Free" / "Imgs"
        folder.mkdir(parents=True, exist_ok=True)
        cv2.imwrite(str(folder / f"n{index}.jpg"), _picture(index))
        cv2.imwrite(str(folder / f"n{index}.png"), np.zeros((SIZE, SIZE), np.uint8))
    for kind in ("Crack", "Hole"):
        folder = root / kind / "Imgs"
        folder.mkdir(parents=True, exist_ok=True)
        for index in range(per_class):
            image, mask = _defect(100 + index + 10 * len(kind))
            cv2.imwrite(str(folder / f"{kind}{index}.jpg"), image)
            cv2.imwrite(str(folder / f"{kind}{index}.png"), mask)
    return root


def yolo_segment(root: Path) -> Path:
    """An ultralytics segmentation set: data.yaml, images/train, labels/train polygons."""
    (root / "images" / "train").mkdir(parents=True)
    (root / "labels" / "train").mkdir(parents=True)
    for index in range(6):
        cv2.imwrite(str(root / "images" / "train" / f"n{index}.png"), _picture(index))
        (root / "labels" / "train" / f"n{index}.txt").write_text("")
    for index in range(3):
        image, _ = _defect(200 + index)
        cv2.imwrite(str(root / "images" / "train" / f"d{index}.png"), image)
        x0, x1 = (8 + (200 + index) % 24) / SIZE, (16 + (200 + index) % 24) / SIZE
        polygon = f"0 {x0} {10 / SIZE} {x1} {10 / SIZE} {x1} {20 / SIZE} {x0} {20 / SIZE}"
        (root / "labels" / "train" / f"d{index}.txt").write_text(polygon + "\n")
    data = {"path": ".", "train": "images/train", "val": "images/train", "names": ["pit"]}
    (root / "data.yaml").write_text(yaml.safe_dump(data | {"task": "segment"}))
    return root


def test_masks_beside_images_give_classes_and_defect_flags(tmp_path: Path) -> None:
    items, layout = find_masked_images(masks_beside(tmp_path))
    assert "beside" in layout
    assert len(items) == 18
    assert sorted({it.kind for it in items}) == ["", "Crack", "Hole"]
    assert sum(it.defective for it in items) == 8
    defect = next(it for it in items if it.defective)
    assert defect.mask().sum() == 80  # the 10 x 8 block


def test_yolo_polygons_fill_the_same_region_as_a_mask(tmp_path: Path) -> None:
    items, _ = find_masked_images(yolo_segment(tmp_path))
    defects = [it for it in items if it.defective]
    assert [it.kind for it in defects] == ["pit"] * 3
    filled = defects[0].mask()
    ys, _xs = np.nonzero(filled)
    assert (ys.min(), ys.max()) == (10, 20)  # fillPoly includes the polygon's edge
    assert 80 <= filled.sum() <= 99


def test_a_box_only_layout_is_refused_with_the_reason(tmp_path: Path) -> None:
    (tmp_path / "images").mkdir()
    (tmp_path / "labels").mkdir()
    cv2.imwrite(str(tmp_path / "images" / "a.png"), _picture(1))
    (tmp_path / "labels" / "a.txt").write_text("0 0.5 0.5 0.2 0.2\n")
    with pytest.raises(InvalidInputError, match="not pixel masks"):
        find_masked_images(tmp_path)


def test_split_keeps_labelled_defects_off_the_test_side(tmp_path: Path) -> None:
    items, _ = find_masked_images(masks_beside(tmp_path))
    split = make_split(items, labelled_per_class=2)
    assert [it.kind for it in split.labelled].count("Crack") == 2
    assert [it.kind for it in split.labelled].count("Hole") == 2
    train, test = {it.path for it in split.train}, {it.path for it in split.test}
    labelled = {it.path for it in split.labelled}
    assert not (train | labelled) & test
    assert len(train) == 8
    assert sum(split.labels) == 4
    assert make_split(items, labelled_per_class=2).test == split.test  # seeded


def test_duplicate_pictures_never_straddle_the_split(tmp_path: Path) -> None:
    root = masks_beside(tmp_path)
    free = root / "Free" / "Imgs"
    for index in range(10):  # each normal stored again, once byte-identical, once re-encoded
        shutil.copy(free / f"n{index}.jpg", free / f"copy{index}.jpg")
        shutil.copy(free / f"n{index}.png", free / f"copy{index}.png")
        picture = cv2.imread(str(free / f"n{index}.jpg"))
        assert picture is not None
        cv2.imwrite(str(free / f"re{index}.jpg"), picture, [cv2.IMWRITE_JPEG_QUALITY, 80])
        shutil.copy(free / f"n{index}.png", free / f"re{index}.png")
    items, _ = find_masked_images(root)
    split = make_split(items)
    assert split.duplicate_groups == 10
    sides = {it.path.stem: "train" if it in split.train else "test" for it in items}
    for index in range(10):
        assert sides[f"n{index}"] == sides[f"copy{index}"] == sides[f"re{index}"]
    bytes_only = make_split(items, prints=False)
    assert bytes_only.duplicate_groups == 10  # the byte-identical copies still grouped


def test_read_masks_squashes_to_the_model_size(tmp_path: Path) -> None:
    items, _ = find_masked_images(masks_beside(tmp_path))
    masks = read_masks(items, 24)
    assert masks.shape == (18, 24, 24)
    assert [bool(m.any()) for m in masks] == [it.defective for it in items]


def test_quality_benchmark_runs_on_a_users_masked_set(tmp_path: Path) -> None:
    data, out = masks_beside(tmp_path / "my-set"), tmp_path / "q.json"
    tocoad_quality.main(
        ["--dataset", str(data), "--quick", "--labelled-per-class", "1", "--out", str(out)]
    )
    report = json.loads(out.read_text())
    assert report["complete"]
    assert "beside" in report["dataset"]["layout"]
    assert report["split"]["labelled_defects"] == 2
    assert report["split"]["test_defects"] == 6
    for name in ("median_residual", "pixel_gaussian", "tocoad", "tocoad_labelled", "tocoad_native"):
        assert 0.0 <= report["results"][name]["pixel_auroc"] <= 1.0
    assert (report["labelled_p_native"], report["labelled_native_samples"]) == (0.0, 0)
    assert report["native_p_native"] == 0.5
    assert report["native_native_samples"] >= 2  # every tile of the two labelled images


def test_native_fit_alone_runs_only_the_baselines_beside_it(tmp_path: Path) -> None:
    data, out = masks_beside(tmp_path / "my-set"), tmp_path / "q.json"
    config = '{"generator": {"p_native": 0.25}}'
    tocoad_quality.main(
        [*("--dataset", str(data), "--quick", "--labelled-per-class", "1", "--out", str(out)),
         *("--fits", "native", "--config", config)]
    )  # fmt: skip
    report = json.loads(out.read_text())
    assert set(report["results"]) == {"median_residual", "pixel_gaussian", "tocoad_native"}
    assert report["native_p_native"] == 0.25
    assert report["native_exemplars"] > 0
    assert report["native_native_samples"] > 0


def test_labelled_images_become_natives_with_their_masks_as_targets(tmp_path: Path) -> None:
    items, _ = find_masked_images(masks_beside(tmp_path))
    labelled = make_split(items, labelled_per_class=2).labelled
    cfg = preset_config("tiny")
    exemplars, natives = tocoad_quality.labelled_samples(labelled, cfg)
    assert len(exemplars) >= len(labelled)
    assert len(natives) == len(labelled)  # a 48 px square is one tile
    for native in natives:
        assert native.image.shape == (cfg.image_size, cfg.image_size, 3)
        grey, target = native.image.mean(2), native.mask > 0
        assert 0.01 < target.mean() < 0.1  # the 10 x 8 block of a 48 x 48 picture
        assert grey[target].mean() < 60 < grey[~target].mean()  # on the dark defect only


def test_the_labelled_fit_keeps_p_native_0_so_it_repeats_the_old_variant(tmp_path: Path) -> None:
    items, _ = find_masked_images(masks_beside(tmp_path))
    labelled = make_split(items, labelled_per_class=2).labelled
    cfg = preset_config("tiny")
    old = tocoad_quality.without_natives(cfg)
    assert old.generator.p_native == 0.0
    assert old.model_dump(exclude={"generator"}) == cfg.model_dump(exclude={"generator"})
    exemplars, natives = tocoad_quality.labelled_samples(labelled, old)
    assert natives == []
    assert len(exemplars) == len(tocoad_quality.labelled_samples(labelled, cfg)[0])
