"""What an imported data set holds, before any training: the summary stored with a version.

Per split: images, how many carry a defect box, how many are labelled defect-free, how many
have no label at all; boxes per class; a histogram of box sizes as the detector will see
them at its input size (``imgsz``: the longer image side scaled to it), with the boxes too
small to survive flagged; duplicate groups; images that could not be decoded.
"""

from __future__ import annotations

import itertools
from collections.abc import Collection, Mapping, Sequence
from typing import Any

from services.finetune.ml.dataset import Box, DetectionDataset, ImageRecord

# Edges (pixels at imgsz) of the box-size histogram, on a box's shorter side.
SIZE_EDGES = (2, 4, 8, 16, 32, 64, 128)
VANISH_PX = 2  # a box whose shorter side is below this at imgsz is about gone for the detector


def summarize(
    dataset: DetectionDataset,
    splits: Mapping[str, Sequence[str]],
    imgsz: int,
    *,
    labelled: Collection[str] | None = None,
    groups: Mapping[str, str] | None = None,
    failed: Sequence[str] = (),
) -> dict[str, Any]:
    """The summary document of a stored version.

    Args:
        dataset: every imported image with its boxes.
        splits: split name -> file names.
        imgsz: the training input side the box sizes are measured at.
        labelled: images whose annotation exists (a label file, a mask, an XML); None when
            the format lists only annotated images (VOC, COCO), so every image counts.
        groups: file name -> duplicate group key (exact and near duplicates).
        failed: images left out because they could not be decoded.
    """
    by_name = {im.file_name: im for im in dataset.images}
    per_split = {
        name: _split_counts([by_name[n] for n in names if n in by_name], dataset.classes, labelled)
        for name, names in splits.items()
    }
    sizes = [_shorter_side_at(im, box, imgsz) for im in dataset.images for box in im.boxes]
    histogram = _histogram(sizes)
    return {
        "images": len(dataset.images),
        "classes": list(dataset.classes),
        "splits": per_split,
        "box_sizes": {
            "imgsz": imgsz,
            "edges_px": list(SIZE_EDGES),
            "counts": histogram,
            "vanishing": sum(1 for s in sizes if s < VANISH_PX),
            "vanish_px": VANISH_PX,
        },
        "duplicates": _duplicates(groups or {}),
        "failed_to_decode": list(failed),
    }


def _split_counts(
    images: Sequence[ImageRecord], classes: Sequence[str], labelled: Collection[str] | None
) -> dict[str, Any]:
    defective = sum(1 for im in images if im.boxes)
    annotated = [im for im in images if labelled is None or im.file_name in labelled]
    boxes = dict.fromkeys(classes, 0)
    for im in images:
        for box in im.boxes:
            boxes[classes[box.class_id]] += 1
    return {
        "images": len(images),
        "defective": defective,
        "defect_free": sum(1 for im in annotated if not im.boxes),
        "unlabelled": len(images) - len(annotated),
        "boxes": boxes,
    }


def _shorter_side_at(image: ImageRecord, box: Box, imgsz: int) -> float:
    scale = imgsz / max(image.width, image.height)
    return float(min(box.x2 - box.x1, box.y2 - box.y1) * scale)


def _histogram(sizes: Sequence[float]) -> list[int]:
    """Counts per bin: below the first edge, between edges, at or above the last."""
    counts = [0] * (len(SIZE_EDGES) + 1)
    for size in sizes:
        counts[sum(1 for edge in SIZE_EDGES if size >= edge)] += 1
    return counts


def _duplicates(groups: Mapping[str, str]) -> dict[str, Any]:
    members: dict[str, list[str]] = {}
    for name, key in groups.items():
        members.setdefault(key, []).append(name)
    shared = sorted(sorted(names) for names in members.values() if len(names) > 1)
    return {
        "groups": len(shared),
        "images": sum(len(g) for g in shared),
        "examples": shared[:5],
    }


def summary_lines(summary: Mapping[str, Any]) -> list[str]:
    """The summary as a few lines of text (the CLI prints them after an import)."""
    lines = [f"{summary['images']} images, classes {summary['classes']}"]
    for name, counts in summary["splits"].items():
        lines.append(
            f"  {name}: {counts['images']} images, {counts['defective']} with defects, "
            f"{counts['defect_free']} defect-free, {counts['unlabelled']} unlabelled; "
            f"boxes {counts['boxes']}"
        )
    sizes = summary["box_sizes"]
    edges = sizes["edges_px"]
    labels = [f"<{edges[0]}"] + [f"{a}-{b}" for a, b in itertools.pairwise(edges)]
    labels.append(f">={edges[-1]}")
    bins = ", ".join(f"{lab}: {n}" for lab, n in zip(labels, sizes["counts"], strict=True))
    lines.append(f"  box shorter side at {sizes['imgsz']} px: {bins}")
    if sizes["vanishing"]:
        lines.append(
            f"  warning: {sizes['vanishing']} boxes are under {sizes['vanish_px']} px at "
            f"{sizes['imgsz']} px: train at a larger imgsz or tile the images"
        )
    dups = summary["duplicates"]
    if dups["groups"]:
        lines.append(f"  {dups['groups']} duplicate groups ({dups['images']} images), kept "
                     f"on one side of every split; e.g. {dups['examples'][:2]}")  # fmt: skip
    if summary["failed_to_decode"]:
        lines.append(f"  left out, not decodable: {summary['failed_to_decode'][:10]}")
    return lines
