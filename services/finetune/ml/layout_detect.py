"""Which labelled-dataset layout a folder holds, found from its files alone.

Recognised, in this order (the first that fits wins):

1. an ultralytics data file (``data.yaml``/``data.yml``, or one other ``*.yaml`` at the top
   with ``names`` and ``train``): detect or segment, its ``train``/``val``/``test`` entries
   kept as named splits; each split's labels are its images folder with the last
   ``images`` path part replaced by ``labels``, as ultralytics resolves them;
2. YOLO folders: ``images/`` beside ``labels/`` holding ``.txt`` files, flat or with split
   subfolders (``images/train`` + ``labels/train``, ...);
3. COCO: a ``.json`` with ``images``, ``annotations`` and ``categories`` (at the top or in
   ``annotations/``), with one split per file when the names say ``train``/``val``/``test``;
4. Pascal VOC: ``Annotations/`` or ``annotations/`` of ``.xml`` files, images in
   ``JPEGImages/`` or ``images/``;
5. masks: ``images/`` beside ``masks/`` (or ``labels/`` of mask images), or masks beside
   their images (a ``.png`` with the stem of a non-PNG image, as Magnetic-tile has).

Anything else is refused with what was found, what was expected and the flags to pass.
No file is decoded here: only names, folder structure and the data file are read.
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path, PurePosixPath
from typing import Any, Literal

import yaml

from services.finetune.ml.image_files import IMAGE_SUFFIXES
from shared.errors import InvalidInputError

Format = Literal["voc", "coco", "yolo", "masks"]
SPLIT_NAMES = ("train", "val", "test")
_SPLIT_ALIASES = {"train": "train", "val": "val", "valid": "val", "validation": "val",
                  "test": "test"}  # fmt: skip
_DATA_FILES = ("data.yaml", "data.yml")
_MASK_SUFFIXES = (".png", ".bmp", ".tif", ".tiff")
_MAX_LISTED = 5  # names shown in a message
EXPECTED = (
    "an ultralytics data.yaml; images/ + labels/ (YOLO txt, optionally with train/val/test "
    "subfolders); a COCO .json; Annotations/ of VOC .xml; or images/ + masks/ (or masks beside "
    "their images)"
)


@dataclass(frozen=True)
class SplitSource:
    """One split's images and annotations, relative to the dataset root (POSIX paths)."""

    name: str
    images: str
    annotations: str


@dataclass(frozen=True)
class FoundLayout:
    """What ``detect_layout`` recognised.

    Attributes:
        format: the importer that reads it.
        splits: one entry per split the dataset defines (a single ``all`` entry when it
            defines none).
        classes: class names the layout states (a data file's ``names``), else None.
        task: ``detect`` or ``segment`` for YOLO labels, else None.
        description: one line saying what was found, for logs and error messages.
    """

    format: Format
    splits: tuple[SplitSource, ...]
    classes: list[str] | None = None
    task: str | None = None
    description: str = ""

    @property
    def named_splits(self) -> bool:
        """Whether the dataset brings its own splits (kept by the import)."""
        return [s.name for s in self.splits] != ["all"]


def detect_layout(root: Path) -> FoundLayout:
    """The layout of the dataset folder ``root``.

    Raises:
        InvalidInputError: ``root`` is not a folder, or no layout fits (code
            ``unknown_layout``; the message lists what was found and what was expected).
    """
    if not root.is_dir():
        raise InvalidInputError(f"{root} is not a folder", code="unknown_layout")
    for finder in (_ultralytics, _yolo_folders, _coco, _voc, _masks):
        found = finder(root)
        if found is not None:
            return found
    raise InvalidInputError(
        f"no labelled-dataset layout recognised under {root}: {_inventory(root)}. Expected "
        f"{EXPECTED}. Name it explicitly: --format voc|coco|yolo|masks with --images and "
        "--annotations (relative to the folder)",
        code="unknown_layout",
    )


# -- 1. ultralytics data file ---------------------------------------------------------------
def _ultralytics(root: Path) -> FoundLayout | None:
    path = _data_file(root)
    if path is None:
        return None
    doc = _yaml(path)
    names = _names(doc.get("names"))
    base = _base(root, path, doc.get("path"))
    splits = []
    for key, value in doc.items():
        split = _SPLIT_ALIASES.get(str(key))
        if split is None or not value:
            continue
        for index, entry in enumerate(value if isinstance(value, list) else [value]):
            folder = _resolve(base, str(entry), root)
            if folder is None:
                continue
            name = split if index == 0 else f"{split}-{index}"
            images = _rel(folder, root)
            splits.append(SplitSource(name, images, _labels_of(images)))
    if not splits:
        raise InvalidInputError(
            f"{path} names no split folder that exists under {root} (train/val/test entries: "
            f"{[doc.get(k) for k in SPLIT_NAMES if k in doc]})",
            code="unknown_layout",
        )
    task = str(doc.get("task") or _label_task(root, splits))
    return FoundLayout(
        "yolo", tuple(splits), names, task,
        f"ultralytics {path.name} ({task}), splits {[s.name for s in splits]}",
    )  # fmt: skip


def _data_file(root: Path) -> Path | None:
    for name in _DATA_FILES:
        if (root / name).is_file():
            return root / name
    candidates = [p for p in sorted(root.glob("*.y*ml")) if _looks_like_data_file(p)]
    return candidates[0] if len(candidates) == 1 else None


def _looks_like_data_file(path: Path) -> bool:
    try:
        doc = _yaml(path)
    except InvalidInputError:
        return False
    return "names" in doc and "train" in doc


def _yaml(path: Path) -> dict[str, Any]:
    try:
        doc = yaml.safe_load(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, yaml.YAMLError) as exc:
        raise InvalidInputError(
            f"{path} is not readable YAML: {exc}", code="invalid_dataset"
        ) from exc
    return doc if isinstance(doc, dict) else {}


def _names(value: Any) -> list[str] | None:
    if isinstance(value, list):
        return [str(v) for v in value]
    if isinstance(value, dict):
        return [str(value[k]) for k in sorted(value, key=lambda k: int(k))]
    return None


def _base(root: Path, data_file: Path, declared: Any) -> Path:
    """The folder split entries are relative to: ``path:`` when it exists here (relative to
    the data file), else the data file's folder (a ``path:`` from another machine)."""
    if isinstance(declared, str) and declared:
        candidate = Path(declared)
        candidate = candidate if candidate.is_absolute() else data_file.parent / candidate
        if candidate.is_dir() and _inside(candidate, root):
            return candidate
    return data_file.parent


def _resolve(base: Path, entry: str, root: Path) -> Path | None:
    """A split entry as a folder under ``root``; entries pointing elsewhere are skipped. An
    entry climbing out of the data file's folder (``../train/images``, as exports that keep
    the data file one level down write it) is also tried from ``root`` without the climb."""
    entry = entry.strip()
    parts = [p for p in PurePosixPath(entry).parts if p not in (".", "..")]
    for candidate in (base / entry, root / entry, root.joinpath(*parts) if parts else root):
        if candidate.is_dir() and _inside(candidate, root):
            return candidate
    return None


def _labels_of(images: str) -> str:
    """ultralytics' rule: the last ``images`` part of the split's path becomes ``labels``
    (parts inside the dataset only); without one, the labels sit beside the images."""
    parts = list(PurePosixPath(images).parts)
    for i in range(len(parts) - 1, -1, -1):
        if parts[i] == "images":
            parts[i] = "labels"
            return PurePosixPath(*parts).as_posix()
    return images


def _label_task(root: Path, splits: Sequence[SplitSource]) -> str:
    """``segment`` when label lines carry polygons (more than 5 fields), else ``detect``."""
    for split in splits:
        for label in sorted((root / split.annotations).glob("*.txt"))[:50]:
            for line in label.read_text(encoding="utf-8", errors="replace").splitlines():
                fields = line.split()
                if fields:
                    return "segment" if len(fields) > 5 else "detect"
    return "detect"


# -- 2. YOLO folders ------------------------------------------------------------------------
def _yolo_folders(root: Path) -> FoundLayout | None:
    images, labels = root / "images", root / "labels"
    if not (images.is_dir() and labels.is_dir()) or not _has_txt(labels):
        return _yolo_split_first(root)
    subfolders = [s for s in (*SPLIT_NAMES, "valid") if (images / s).is_dir()]
    if subfolders:
        splits = tuple(
            SplitSource(_SPLIT_ALIASES[s], f"images/{s}", f"labels/{s}")
            for s in subfolders
            if (labels / s).is_dir()
        )
        if splits:
            return FoundLayout(
                "yolo", splits, None, _label_task(root, splits),
                f"YOLO images/ + labels/ with splits {[s.name for s in splits]}",
            )  # fmt: skip
    splits = (SplitSource("all", "images", "labels"),)
    return FoundLayout("yolo", splits, None, _label_task(root, splits), "YOLO images/ + labels/")


def _yolo_split_first(root: Path) -> FoundLayout | None:
    """``train/images`` + ``train/labels``, ``valid/...``: split folders at the top."""
    splits = tuple(
        SplitSource(_SPLIT_ALIASES[s], f"{s}/images", f"{s}/labels")
        for s in (*SPLIT_NAMES, "valid")
        if (root / s / "images").is_dir() and (root / s / "labels").is_dir()
        and _has_txt(root / s / "labels")
    )  # fmt: skip
    if not splits:
        return None
    names = [s.name for s in splits]
    return FoundLayout(
        "yolo", splits, None, _label_task(root, splits), f"YOLO split folders {names}"
    )


def _has_txt(folder: Path) -> bool:
    return any(p.suffix == ".txt" for p in folder.rglob("*.txt"))


# -- 3. COCO --------------------------------------------------------------------------------
def _coco(root: Path) -> FoundLayout | None:
    files = [p for folder in (root, root / "annotations") if folder.is_dir()
             for p in sorted(folder.glob("*.json")) if _is_coco(p)]  # fmt: skip
    if not files:
        return _coco_split_first(root)
    images = _coco_images_dir(root)
    if len(files) == 1:
        split = SplitSource("all", images, _rel(files[0], root))
        return FoundLayout("coco", (split,), None, None, f"COCO {split.annotations}")
    splits: list[SplitSource] = []
    for path in files:
        name = next((s for a, s in _SPLIT_ALIASES.items() if a in path.stem.lower()), None)
        if name is None or any(s.name == name for s in splits):
            raise InvalidInputError(
                f"several COCO files under {root} ({[p.name for p in files]}) and no one-to-one "
                "train/val/test names: pass --annotations with the one to import",
                code="unknown_layout",
            )
        folder = root / images / name
        split_images = _rel(folder, root) if folder.is_dir() else images
        splits.append(SplitSource(name, split_images, _rel(path, root)))
    return FoundLayout("coco", tuple(splits), None, None, f"COCO files {[p.name for p in files]}")


def _coco_split_first(root: Path) -> FoundLayout | None:
    """``train/<file>.json`` with its images beside it, ``valid/...``: one split per folder."""
    splits = []
    for name in (*SPLIT_NAMES, "valid"):
        folder = root / name
        found = [p for p in sorted(folder.glob("*.json")) if _is_coco(p)] if folder.is_dir() else []
        if len(found) == 1:
            splits.append(SplitSource(_SPLIT_ALIASES[name], name, f"{name}/{found[0].name}"))
    if not splits:
        return None
    names = [s.name for s in splits]
    return FoundLayout("coco", tuple(splits), None, None, f"COCO split folders {names}")


def _is_coco(path: Path) -> bool:
    if path.stat().st_size > 512 * 2**20:
        return False  # not opened blind; pass --annotations for a file this large
    try:
        doc = json.loads(path.read_bytes())
    except (OSError, ValueError):
        return False
    return isinstance(doc, dict) and {"images", "annotations", "categories"} <= set(doc)


def _coco_images_dir(root: Path) -> str:
    for name in ("images", "JPEGImages", "imgs"):
        if (root / name).is_dir():
            return name
    return "."


# -- 4. VOC ---------------------------------------------------------------------------------
def _voc(root: Path) -> FoundLayout | None:
    for name in ("Annotations", "annotations"):
        folder = root / name
        if folder.is_dir() and any(folder.glob("*.xml")):
            images = next((n for n in ("JPEGImages", "images") if (root / n).is_dir()), None)
            if images is None:
                raise InvalidInputError(
                    f"VOC annotations in {folder} but no JPEGImages/ or images/ folder under "
                    f"{root}: pass --images",
                    code="unknown_layout",
                )
            split = SplitSource("all", images, name)
            return FoundLayout("voc", (split,), None, None, f"VOC {name}/ + {images}/")
    return None


# -- 5. masks -------------------------------------------------------------------------------
def _masks(root: Path) -> FoundLayout | None:
    images = root / "images"
    for name in ("masks", "labels", "ground_truth", "gt"):
        folder = root / name
        if images.is_dir() and folder.is_dir() and _image_files(folder.rglob("*")):
            split = SplitSource("all", "images", name)
            return FoundLayout("masks", (split,), None, None, f"images/ + {name}/ (pixel masks)")
    if _masks_beside_images(root):
        split = SplitSource("all", ".", ".")
        return FoundLayout("masks", (split,), None, None, "masks beside their images")
    return None


def _masks_beside_images(root: Path) -> bool:
    files = _image_files(root.rglob("*"))
    others = {(p.parent, p.stem) for p in files if p.suffix.lower() not in _MASK_SUFFIXES}
    return any(p.suffix.lower() == ".png" and (p.parent, p.stem) in others for p in files)


# -- helpers --------------------------------------------------------------------------------
def _image_files(paths: Iterable[Path]) -> list[Path]:
    return [p for p in paths if p.is_file() and p.suffix.lower() in IMAGE_SUFFIXES]


def _inside(path: Path, root: Path) -> bool:
    return path.resolve().is_relative_to(root.resolve())


def _rel(path: Path, root: Path) -> str:
    rel = path.resolve().relative_to(root.resolve()).as_posix()
    return rel or "."


def _inventory(root: Path) -> str:
    """What a folder holds, in a few words: top-level folders and file kinds."""
    folders = sorted(p.name for p in root.iterdir() if p.is_dir())
    images = len(_image_files(root.rglob("*")))
    kinds = sorted({p.suffix.lower() for p in root.rglob("*") if p.is_file()} - {""})
    shown = folders[:_MAX_LISTED] + (["..."] if len(folders) > _MAX_LISTED else [])
    return f"folders {shown}, {images} image files, file types {kinds[:8]}"
