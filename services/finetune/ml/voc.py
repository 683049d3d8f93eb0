"""Pascal VOC XML import/export (one XML per image) to and from :class:`DetectionDataset`.

VOC boxes are 1-based inclusive pixel indices (devkit convention): ``xmin = 1, xmax = 10``
covers the first ten pixel columns, i.e. ``x1 = xmin - 1 = 0, x2 = xmax = 10`` in our format.
Export rounds to whole pixels, so integer boxes round-trip exactly.
"""

from __future__ import annotations

import math
import xml.etree.ElementTree as ET
from collections.abc import Sequence
from pathlib import Path

from services.finetune.ml.dataset import Box, DetectionDataset, ImageRecord, dataset_error
from services.finetune.ml.image_files import IMAGE_SUFFIXES, read_image_size, require_dir

# One parsed object before class names are turned into ids: (name, x1, y1, x2, y2, difficult).
_RawBox = tuple[str, float, float, float, float, bool]
_CORNERS = ("xmin", "ymin", "xmax", "ymax")


def import_voc(
    annotations_dir: Path, images_dir: Path, classes: Sequence[str] | None = None
) -> DetectionDataset:
    """Read every ``*.xml`` in ``annotations_dir`` and pair it with its image.

    The image is the file in ``images_dir`` whose stem equals the XML file's stem; the XML
    ``<filename>`` is ignored because real datasets get it wrong (NEU-DET: 174 names lack
    the extension). Labels come from each ``<object><name>``, never from file names.

    Args:
        annotations_dir: folder of VOC XML files (not searched recursively).
        images_dir: folder holding the images.
        classes: class names in id order; when omitted, the sorted set of names found.

    Returns:
        The dataset, images sorted by XML file name.

    Raises:
        InvalidInputError: unreadable XML, a missing image, a bad box, an unknown class.
    """
    require_dir(annotations_dir, "annotations")
    images_by_stem = {
        p.stem: p
        for p in require_dir(images_dir, "images").iterdir()
        if p.suffix.lower() in IMAGE_SUFFIXES
    }
    parsed: list[tuple[str, int, int, list[_RawBox]]] = []
    for xml_path in sorted(annotations_dir.glob("*.xml")):
        image_path = images_by_stem.get(xml_path.stem)
        if image_path is None:
            raise dataset_error(str(xml_path), f"no image named {xml_path.stem}.* in {images_dir}")
        width, height, raw = parse_voc_xml(xml_path.read_bytes(), source=str(xml_path))
        if width <= 0 or height <= 0:  # <size> absent or zero: trust the image header
            width, height = read_image_size(image_path)
        parsed.append((image_path.name, width, height, raw))
    names = list(classes) if classes is not None else sorted({b[0] for *_, r in parsed for b in r})
    index = {name: i for i, name in enumerate(names)}
    images = [
        ImageRecord(
            file_name=file_name,
            width=width,
            height=height,
            boxes=[_to_box(raw_box, index, file_name) for raw_box in raw],
        )
        for file_name, width, height, raw in parsed
    ]
    return DetectionDataset(classes=names, images=images)


def parse_voc_xml(data: bytes, source: str = "<bytes>") -> tuple[int, int, list[_RawBox]]:
    """Parse one VOC annotation.

    Returns:
        ``(width, height, boxes)`` where width/height are 0 when ``<size>`` is missing and
        each box is ``(name, x1, y1, x2, y2, difficult)`` already in our coordinates.

    Raises:
        InvalidInputError: malformed XML or an object without a name or ``<bndbox>``.
    """
    # xml.etree on CPython >= 3.7.1 ships expat with entity-expansion limits (billion laughs).
    try:
        root = ET.fromstring(data)
    except ET.ParseError as exc:
        raise dataset_error(source, f"malformed XML ({exc})") from exc
    size = root.find("size")
    width = _int_text(size, "width", source) if size is not None else 0
    height = _int_text(size, "height", source) if size is not None else 0
    boxes: list[_RawBox] = []
    for obj in root.iter("object"):
        name = (obj.findtext("name") or "").strip()
        bndbox = obj.find("bndbox")
        if not name or bndbox is None:
            raise dataset_error(source, "an <object> lacks <name> or <bndbox>")
        xmin, ymin, xmax, ymax = (_float_text(bndbox, tag, source) for tag in _CORNERS)
        difficult = (obj.findtext("difficult") or "0").strip() in {"1", "true", "True"}
        boxes.append((name, xmin - 1.0, ymin - 1.0, xmax, ymax, difficult))
    return width, height, boxes


def export_voc(dataset: DetectionDataset, out_dir: Path) -> list[Path]:
    """Write one ``<stem>.xml`` per image into ``out_dir`` (created); returns the paths."""
    out_dir.mkdir(parents=True, exist_ok=True)
    written = []
    for image in dataset.images:
        path = out_dir / f"{image.stem}.xml"
        path.write_bytes(voc_xml_bytes(image, dataset.classes))
        written.append(path)
    return written


def voc_xml_bytes(image: ImageRecord, classes: Sequence[str]) -> bytes:
    """One image's VOC XML; coordinates rounded half up to whole 1-based pixel indices."""
    root = ET.Element("annotation")
    ET.SubElement(root, "filename").text = image.file_name
    size = ET.SubElement(root, "size")
    for tag, value in (("width", image.width), ("height", image.height), ("depth", 3)):
        ET.SubElement(size, tag).text = str(value)
    for box in image.boxes:
        obj = ET.SubElement(root, "object")
        ET.SubElement(obj, "name").text = classes[box.class_id]
        ET.SubElement(obj, "difficult").text = "1" if box.difficult else "0"
        bndbox = ET.SubElement(obj, "bndbox")
        corners = (_round(box.x1) + 1, _round(box.y1) + 1, _round(box.x2), _round(box.y2))
        for tag, value in zip(_CORNERS, corners, strict=True):
            ET.SubElement(bndbox, tag).text = str(value)
    ET.indent(root)
    return bytes(ET.tostring(root, encoding="utf-8", xml_declaration=False)) + b"\n"


def _to_box(raw: _RawBox, index: dict[str, int], file_name: str) -> Box:
    name, x1, y1, x2, y2, difficult = raw
    if name not in index:
        raise dataset_error(file_name, f"class {name!r} is not in {list(index)}")
    try:
        return Box(x1=x1, y1=y1, x2=x2, y2=y2, class_id=index[name], difficult=difficult)
    except ValueError as exc:
        raise dataset_error(file_name, f"bad box {raw[1:5]}: {exc}") from exc


def _round(value: float) -> int:
    return math.floor(value + 0.5)


def _float_text(parent: ET.Element, tag: str, source: str) -> float:
    text = parent.findtext(tag)
    try:
        return float(text) if text is not None else math.nan
    except ValueError as exc:
        raise dataset_error(source, f"<{tag}> is not a number: {text!r}") from exc


def _int_text(parent: ET.Element, tag: str, source: str) -> int:
    value = _float_text(parent, tag, source)
    return 0 if math.isnan(value) else int(value)
