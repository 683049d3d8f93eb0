"""Images with pixel masks from any layout the importer recognises, split for map quality.

``benchmarks/tocoad_quality.py`` scores anomaly maps against masks. Its data come from here:

- ``find_masked_images(root)``: every image of a dataset folder with its defect mask, found by
  ``services.finetune.ml.layout_detect.detect_layout`` (the same finder as ``agssp data
  import``). Mask layouts (``images/`` + ``masks/``, masks beside their images as
  Magnetic-tile has them) and ultralytics/YOLO segmentation labels (polygons, filled) give
  masks; a layout with boxes only (VOC, COCO boxes, YOLO detect) is refused, since a box is
  not a pixel mask. An image is defective when its mask holds a defect pixel; its class is
  the first folder of its path under the images folder, or the first polygon's class name.
- ``make_split``: defect-free images split 80/20 into fit and test, defect images to test
  less ``labelled_per_class`` per class that go to the fit side as labelled defects. The unit
  of the split is a *duplicate group* (byte-identical files and one picture stored twice,
  ``services.finetune.ml.image_files.duplicate_groups``), so no picture sits on both sides.
  Without duplicates and on Magnetic-tile this is the split the benchmark always used.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

import cv2
import numpy as np

from services.finetune.ml.image_files import (
    Fingerprint,
    content_hash,
    duplicate_groups,
    fingerprint,
    read_bgr,
)
from services.finetune.ml.layout_detect import FoundLayout, SplitSource, detect_layout
from services.finetune.ml.masks import find_mask, list_mask_images, read_mask
from shared.errors import InvalidInputError

SPLIT_SEED = 0
TRAIN_SHARE = 0.8
DEFAULT_CLASS = "defect"


@dataclass(frozen=True)
class MaskedImage:
    """One image and where its mask comes from (a mask file, polygons, or nothing)."""

    path: Path
    kind: str  # class name of a defective image; "" for a defect-free one
    mask_file: Path | None = None
    polygons: tuple[np.ndarray, ...] = ()  # (K, 2) normalised x, y per polygon

    @property
    def defective(self) -> bool:
        return bool(self.kind)

    def mask(self) -> np.ndarray:
        """The defect mask as a bool (H, W) array at the image's own size."""
        if self.mask_file is not None:
            raw = read_mask(self.mask_file)
            return np.asarray(np.greater(raw, raw.max() / 2), dtype=bool)
        height, width = read_bgr(self.path).shape[:2]
        out = np.zeros((height, width), np.uint8)
        for poly in self.polygons:
            points = np.round(poly * (width, height)).astype(np.int32)
            cv2.fillPoly(out, [points], 1)
        return out.astype(bool)


@dataclass
class Split:
    """Fit normals, test images with labels and masks, and the labelled defects (fit side)."""

    train: list[MaskedImage]
    test: list[MaskedImage]
    labelled: list[MaskedImage] = field(default_factory=list)
    duplicate_groups: int = 0  # groups of two or more images

    @property
    def labels(self) -> list[int]:
        return [int(item.defective) for item in self.test]


def find_masked_images(root: Path) -> tuple[list[MaskedImage], str]:
    """Every image under ``root`` with its mask, and a line saying which layout was read.

    Raises:
        InvalidInputError: no layout recognised, one without pixel masks, or no defect at all.
    """
    layout = detect_layout(root)
    if layout.format == "masks":
        items = [it for s in layout.splits for it in _from_mask_folders(root, s)]
    elif layout.format == "yolo" and layout.task == "segment":
        items = [it for s in layout.splits for it in _from_polygons(root, s, layout)]
    else:
        raise InvalidInputError(
            f"{root} holds {layout.description}: boxes, not pixel masks. Map quality needs "
            "masks (images/ + masks/, masks beside their images, or YOLO segmentation labels)"
        )
    unique = {item.path: item for item in items}  # splits may share a folder (val = train)
    if not any(item.defective for item in unique.values()):
        raise InvalidInputError(f"no mask under {root} holds a defect pixel")
    return sorted(unique.values(), key=lambda item: item.path), layout.description


def _from_mask_folders(root: Path, split: SplitSource) -> list[MaskedImage]:
    images_dir, masks_dir = root / split.images, root / split.annotations
    out = []
    for path in list_mask_images(images_dir, masks_dir):
        mask_file = find_mask(path, images_dir, masks_dir)
        rel = path.relative_to(images_dir)
        defective = mask_file is not None and read_mask(mask_file).max() > 0
        kind = (rel.parts[0] if len(rel.parts) > 1 else DEFAULT_CLASS) if defective else ""
        out.append(MaskedImage(path, kind, mask_file if defective else None))
    return out


def _from_polygons(root: Path, split: SplitSource, layout: FoundLayout) -> list[MaskedImage]:
    images_dir, labels_dir = root / split.images, root / split.annotations
    out = []
    for path in list_mask_images(images_dir, images_dir):
        label = (labels_dir / path.relative_to(images_dir)).with_suffix(".txt")
        text = label.read_text() if label.is_file() else ""
        polygons, first_class = _polygons(text, str(label))
        names = layout.classes or []
        kind = ""
        if polygons:
            kind = names[first_class] if first_class < len(names) else str(first_class)
        out.append(MaskedImage(path, kind, None, tuple(polygons)))
    return out


def _polygons(text: str, source: str) -> tuple[list[np.ndarray], int]:
    """Polygons of a YOLO segmentation label file, and the class id of the first one."""
    polygons, first = [], -1
    for line_no, line in enumerate(text.splitlines(), start=1):
        fields = line.split()
        if not fields:
            continue
        if len(fields) < 7 or len(fields) % 2 == 0:
            raise InvalidInputError(f"{source}:{line_no}: not a polygon (class x1 y1 x2 y2 ...)")
        first = int(fields[0]) if first < 0 else first
        polygons.append(np.array(fields[1:], dtype=np.float64).reshape(-1, 2))
    return polygons, first


def make_split(
    items: Sequence[MaskedImage], labelled_per_class: int = 0, prints: bool = True
) -> Split:
    """The seeded split of the module docstring; ``prints=False`` skips the near-duplicate
    search (byte-identical files are still grouped)."""
    groups = _groups(items, prints)
    normal = [g for g in groups if not any(it.defective for it in g)]
    order = np.random.default_rng(SPLIT_SEED).permutation(len(normal))
    cut = round(TRAIN_SHARE * len(normal))
    train = [it for i in sorted(order[:cut]) for it in normal[i]]
    test = [it for i in sorted(order[cut:]) for it in normal[i]]
    picker = np.random.default_rng(SPLIT_SEED + 1)
    labelled: list[MaskedImage] = []
    for kind in sorted({_kind(g) for g in groups} - {""}):
        of_kind = [g for g in groups if _kind(g) == kind]
        count = min(labelled_per_class, len(of_kind))
        chosen = set(picker.choice(len(of_kind), count, replace=False).tolist())
        for index, group in enumerate(of_kind):
            if index in chosen:
                labelled += [it for it in group if it.defective]
                train += [it for it in group if not it.defective]
            else:
                test += group
    shared = sum(len(g) > 1 for g in groups)
    return Split(train, test, labelled, shared)


def limit_test(split: Split, limit: int | None) -> Split:
    """``split`` with an evenly spaced subset of ``limit`` test images."""
    if limit is None or limit >= len(split.test):
        return split
    picks = sorted({int(i) for i in np.linspace(0, len(split.test) - 1, limit).round()})
    test = [split.test[i] for i in picks]
    return Split(split.train, test, split.labelled, split.duplicate_groups)


def _kind(group: Sequence[MaskedImage]) -> str:
    return next((it.kind for it in group if it.defective), "")


def _groups(items: Sequence[MaskedImage], prints: bool) -> list[list[MaskedImage]]:
    """Duplicate groups, each in path order, listed by their first path."""
    by_name = {str(item.path): item for item in items}
    hashes: dict[str, str] = {}
    found: dict[str, Fingerprint] = {}
    for name, item in by_name.items():
        data = item.path.read_bytes()
        hashes[name] = content_hash(data)
        if prints:
            found[name] = fingerprint(cv2.cvtColor(read_bgr(item.path), cv2.COLOR_BGR2RGB))
    key_of = duplicate_groups(hashes, found)
    grouped: dict[str, list[MaskedImage]] = {}
    for name in sorted(by_name):
        grouped.setdefault(key_of[name], []).append(by_name[name])
    return sorted(grouped.values(), key=lambda g: g[0].path)


def read_masks(items: Sequence[MaskedImage], size: int) -> np.ndarray:
    """(N, size, size) bool masks (squashed, binarised at 0.5); defect-free images all False."""
    out = np.zeros((len(items), size, size), dtype=bool)
    for index, item in enumerate(items):
        if item.defective:
            binary = item.mask().astype(np.float32)
            out[index] = cv2.resize(binary, (size, size)) > 0.5
    return out
