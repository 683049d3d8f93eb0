"""The detector-family table is the one place that names a family: product code elsewhere
reads the table, and each family's code is reached only through its row."""

from __future__ import annotations

import ast
import importlib
from pathlib import Path

from services.finetune.ml.backend import load_backend
from services.inference.ml.layouts import DETECTORS
from shared.schemas.detector_families import FAMILIES

ROOT = Path(__file__).resolve().parents[3]
PRODUCT = ("services", "shared", "agssp")
TABLE = "shared/schemas/detector_families.py"


def _backend_file(module: str) -> str:
    return module.replace(".", "/") + ".py"


def _product_files() -> list[Path]:
    return sorted(p for top in PRODUCT for p in (ROOT / top).rglob("*.py"))


def _string_constants(path: Path) -> set[str]:
    """Whole string literals (parts of f-strings, such as ``f"yolov8{scale}.yaml"``, are
    file names, not a family's id)."""
    tree = ast.parse(path.read_text(encoding="utf-8"))
    parts = {
        id(v) for node in ast.walk(tree) if isinstance(node, ast.JoinedStr) for v in node.values
    }
    return {
        node.value
        for node in ast.walk(tree)
        if isinstance(node, ast.Constant) and isinstance(node.value, str) and id(node) not in parts
    }


def test_only_the_table_and_each_familys_backend_spell_a_family_name() -> None:
    # given: the table and, for each family, the module its row names
    allowed = {name: {TABLE, _backend_file(row.backend.partition(":")[0])}
               for name, row in FAMILIES.items()}  # fmt: skip
    # when
    found = {
        (name, path.relative_to(ROOT).as_posix())
        for path in _product_files()
        for name in FAMILIES
        if name in _string_constants(path)
    }
    # then
    stray = sorted((name, where) for name, where in found if where not in allowed[name])
    assert not stray, f"family names spelt outside the table and their backends: {stray}"


def test_family_model_code_is_imported_only_by_its_backend() -> None:
    # given: each family's model code (Faster R-CNN's module, YOLOv8's folder)
    backends = {_backend_file(row.backend.partition(":")[0]) for row in FAMILIES.values()}
    model_code = {
        "services.finetune.ml.faster_rcnn": "services/finetune/ml/faster_rcnn/",
        "services.finetune.ml.yolov8": "services/finetune/ml/yolov8/",
    }
    # when
    importers: dict[str, set[str]] = {module: set() for module in model_code}
    for path in _product_files():
        where = path.relative_to(ROOT).as_posix()
        tree = ast.parse(path.read_text(encoding="utf-8"))
        for node in ast.walk(tree):
            if not isinstance(node, ast.ImportFrom) or node.module is None:
                continue
            for module, home in model_code.items():
                inside = where.startswith(home) or where == home
                if (node.module + ".").startswith(module + ".") and not inside:
                    importers[module].add(where)
    # then
    for module, found in importers.items():
        assert found, f"nothing imports {module}"
        assert found <= backends, (module, found - backends)


def test_every_row_names_a_loadable_backend_and_a_served_layout() -> None:
    for name, row in FAMILIES.items():
        module, _, attribute = row.backend.partition(":")
        backend = getattr(importlib.import_module(module), attribute)
        assert backend is load_backend(name)
        methods = ("prepare", "train", "package", "read_weights", "evaluate", "predict", "quantize")
        for method in methods:
            assert callable(getattr(backend, method)), (name, method)
        assert row.output_layout in DETECTORS, (name, row.output_layout)
        assert row.backbone_names(), f"{name} takes no known backbone"
