"""A seam's file names are spelled once: in its schema module under shared/schemas.

Writers and readers that spell ``"classes.json"`` themselves drift apart silently; this test
walks every string constant of the product code (docstrings aside, f-string parts included)
and fails on a seam file name outside its schema module.
"""

from __future__ import annotations

import ast
import re
from collections.abc import Iterator
from pathlib import Path
from types import ModuleType

import pytest

from shared.schemas import backbones, dataset_maps, detector_artifact, evaluation, pseudo_labels

ROOT = Path(__file__).resolve().parents[3]
PRODUCT = ("services", "shared", "agssp")

# Names distinctive enough to belong to one seam (``manifest.json`` is every store's, and
# ``model.pt`` / ``annotations.json`` name other things too).
SEAM_FILES = {
    dataset_maps: (dataset_maps.SCORES_FILE,),
    pseudo_labels: (pseudo_labels.CLASSES_FILE,),  # annotations.json is any COCO set's
    detector_artifact: (
        detector_artifact.ONNX_FILE,
        detector_artifact.CLASSES_FILE,
        detector_artifact.WEIGHTS_FILE,
    ),
    backbones: (backbones.BACKBONE_FILE,),
    evaluation: (evaluation.PER_IMAGE_FILE,),
}


def _docstring_nodes(tree: ast.AST) -> set[int]:
    found = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Module | ast.ClassDef | ast.FunctionDef | ast.AsyncFunctionDef):
            body = node.body
            if body and isinstance(body[0], ast.Expr) and isinstance(body[0].value, ast.Constant):
                found.add(id(body[0].value))
    return found


def string_constants(source: str) -> Iterator[tuple[int, str]]:
    """(line, value) of every str constant that is not a docstring."""
    tree = ast.parse(source)
    docstrings = _docstring_nodes(tree)
    for node in ast.walk(tree):
        if not isinstance(node, ast.Constant) or id(node) in docstrings:
            continue
        if isinstance(node.value, str):
            yield node.lineno, node.value


def names_file(value: str, name: str) -> bool:
    """``value`` is the file name or a path ending in it (``f"{out}classes.json"`` too)."""
    return re.search(rf"(^|/){re.escape(name)}$", value) is not None


def _product_files() -> Iterator[Path]:
    for top in PRODUCT:
        if (ROOT / top).is_dir():
            yield from sorted((ROOT / top).rglob("*.py"))


def test_names_file_matches_paths_not_prose() -> None:
    assert names_file("classes.json", "classes.json")
    assert names_file("models/a/1/classes.json", "classes.json")
    assert not names_file("reads classes.json first", "classes.json")
    assert not names_file("myclasses.json", "classes.json")


def test_docstrings_are_skipped_but_fstring_parts_are_seen() -> None:
    source = '"""model.onnx"""\nx = f"{p}model.onnx"\n'
    assert [v for _, v in string_constants(source)] == ["model.onnx"]


@pytest.mark.parametrize("seam", list(SEAM_FILES), ids=lambda m: m.__name__.rsplit(".", 1)[1])
def test_seam_file_names_live_only_in_their_schema(seam: ModuleType) -> None:
    own = Path(str(seam.__file__)).resolve()
    offenders = []
    for path in _product_files():
        if path.resolve() == own:
            continue
        for line, value in string_constants(path.read_text()):
            for name in SEAM_FILES[seam]:
                if names_file(value, name):
                    offenders.append(f"{path.relative_to(ROOT)}:{line}: {value!r}")
    assert not offenders, "seam file names spelled outside their schema:\n" + "\n".join(offenders)
