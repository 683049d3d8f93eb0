"""Boxes from pixel masks: images with a defect mask each become a detection dataset.

A mask is a single-channel image of the same size as its image; every pixel above half of
the mask's own maximum is defect (so 0/1, 0/255 and 16-bit masks all work). Each
8-connected component of defect pixels becomes one box: its extent in the COCO convention
of :mod:`services.finetune.ml.dataset` (a component over columns 3..7 gives ``x1 = 3,
x2 = 8``). Components smaller than ``min_area`` pixels are dropped as annotation noise.

Layouts (``images`` and ``masks`` are folders under the dataset root):

* ``images/<rel>/<stem>.<ext>`` with ``masks/<rel>/<stem>.png`` (or ``<stem>_mask.png``),
* one folder for both (``masks == images``), the mask being the ``.png`` beside a non-PNG
  image of the same stem (Magnetic-tile: ``MT_Crack/Imgs/exp1_num_4.jpg`` + ``.png``).

The class of an image is the first folder of its relative path (``MT_Crack``), or
``default_class`` for images at the top. An image without a mask, or with an empty one, is a
background image. Only classes that have at least one box are listed unless ``classes`` is
given.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import cv2
import numpy as np

from services.finetune.ml.dataset import Box, DetectionDataset, ImageRecord, dataset_error
from services.finetune.ml.image_files import IMAGE_SUFFIXES, require_dir

MASK_SUFFIXES = (".png", ".bmp", ".tif", ".tiff")


def boxes_from_mask(mask: np.ndarray, class_id: int, min_area: int = 4) -> list[Box]:
    """One box per 8-connected defect component of a 2-D mask, largest first.

    Args:
        mask: (H, W) array of any integer or float dtype.
        class_id: class of every box.
        min_area: components with fewer pixels are ignored.
    """
    if mask.ndim != 2:
        raise ValueError(f"mask must be 2-D, got shape {mask.shape}")
    peak = float(mask.max()) if mask.size else 0.0
    if peak <= 0:
        return []
    binary = (mask > peak / 2).astype(np.uint8)
    count, _, stats, _ = cv2.connectedComponentsWithStats(binary, connectivity=8)
    boxes = []
    for x, y, w, h, area in sorted(stats[1:count].tolist(), key=lambda s: -s[4]):
        if area >= min_area:
            boxes.append(Box(x1=x, y1=y, x2=x + w, y2=y + h, class_id=class_id))
    return boxes


def read_mask(path: Path) -> np.ndarray:
    """A mask file as a 2-D array (colour masks are reduced to their maximum channel)."""
    data = np.frombuffer(path.read_bytes(), dtype=np.uint8)
    mask = cv2.imdecode(data, cv2.IMREAD_UNCHANGED) if data.size else None
    if mask is None:
        raise dataset_error(str(path), "not a decodable mask image")
    return mask.max(axis=2) if mask.ndim == 3 else mask


def find_mask(image: Path, images_dir: Path, masks_dir: Path) -> Path | None:
    """The mask file of ``image`` in either layout of the module docstring, if any."""
    rel = image.relative_to(images_dir)
    folder = masks_dir / rel.parent
    for name in (f"{image.stem}{s}" for s in MASK_SUFFIXES):
        candidate = folder / name
        if candidate != image and candidate.is_file():
            return candidate
    candidate = folder / f"{image.stem}_mask.png"
    return candidate if candidate.is_file() else None


def list_mask_images(images_dir: Path, masks_dir: Path) -> list[Path]:
    """Image files under ``images_dir`` (recursive), masks of a shared folder left out."""
    files = sorted(
        p
        for p in require_dir(images_dir, "images").rglob("*")
        if p.suffix.lower() in IMAGE_SUFFIXES
    )
    if images_dir.resolve() != masks_dir.resolve():
        return files
    stems = {(p.parent, p.stem) for p in files if p.suffix.lower() not in MASK_SUFFIXES}
    # In a shared folder a PNG beside a non-PNG image of the same stem is that image's mask.
    return [
        p
        for p in files
        if not (p.suffix.lower() in MASK_SUFFIXES and (p.parent, p.stem) in stems)
        and not p.stem.endswith("_mask")
    ]


def import_masks(
    images_dir: Path,
    masks_dir: Path,
    classes: Sequence[str] | None = None,
    default_class: str = "defect",
    min_area: int = 4,
) -> tuple[DetectionDataset, dict[str, Path]]:
    """Images + masks -> a dataset and ``file name -> source path`` of every image.

    File names are the images' own names where unique, else their relative paths joined
    with ``__`` (names in a stored dataset hold no folders).

    Raises:
        InvalidInputError: no images, an undecodable mask, a mask whose size differs from
            its image, an image of a class outside ``classes``.
    """
    images = list_mask_images(images_dir, masks_dir)
    if not images:
        raise dataset_error(str(images_dir), "no images found")
    rels = [p.relative_to(images_dir) for p in images]
    class_of = [r.parts[0] if len(r.parts) > 1 else default_class for r in rels]
    masks = {p: read_mask(m) for p in images if (m := find_mask(p, images_dir, masks_dir))}
    names = _class_names(images, class_of, masks, classes)
    stems = [p.stem for p in images]
    records, sources = [], {}
    for path, rel, cls in zip(images, rels, class_of, strict=True):
        file_name = path.name if stems.count(path.stem) == 1 else "__".join(rel.parts)
        mask = masks.get(path)
        boxes = []
        if mask is not None and mask.max() > 0:
            if cls not in names:
                raise dataset_error(str(path), f"class {cls!r} is not one of {list(names)}")
            boxes = boxes_from_mask(mask, names.index(cls), min_area)
        height, width = _image_size(path, mask)
        records.append(ImageRecord(file_name=file_name, width=width, height=height, boxes=boxes))
        sources[file_name] = path
    return DetectionDataset(classes=names, images=records), sources


def _class_names(
    images: list[Path],
    class_of: list[str],
    masks: dict[Path, np.ndarray],
    classes: Sequence[str] | None,
) -> list[str]:
    if classes is not None:
        return list(classes)
    found = {c for p, c in zip(images, class_of, strict=True) if p in masks and masks[p].max() > 0}
    if not found:
        raise dataset_error("masks", "no mask holds a defect pixel; nothing to learn boxes from")
    return sorted(found)


def _image_size(path: Path, mask: np.ndarray | None) -> tuple[int, int]:
    data = np.frombuffer(path.read_bytes(), dtype=np.uint8)
    image = cv2.imdecode(data, cv2.IMREAD_UNCHANGED) if data.size else None
    if image is None:
        raise dataset_error(str(path), "not a decodable image")
    height, width = image.shape[:2]
    if mask is not None and mask.shape[:2] != (height, width):
        raise dataset_error(
            str(path), f"mask is {mask.shape[1]}x{mask.shape[0]}, image is {width}x{height}"
        )
    return int(height), int(width)
