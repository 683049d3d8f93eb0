"""Init comparison: same split and seed per init, table and plot files, init parsing."""

from __future__ import annotations

import csv
import shutil
from pathlib import Path
from typing import Any

import pytest

from services.finetune.config import FinetuneSettings
from services.finetune.ml.backend import load_backend
from services.finetune.ml.voc import export_voc
from services.finetune.ml.yolov8.detector import build_detector
from services.finetune.params import DatasetImportParams, InitParams
from services.finetune.usecases.comparisons import (
    CompareRow,
    parse_inits,
    run_comparison,
    write_report,
)
from services.finetune.usecases.datasets import import_local_dataset
from shared.config import CommonSettings, PathSettings
from shared.errors import InvalidInputError
from shared.storage.filesystem import FileObjectStore

TINY = {"scale": "n", "epochs": 1, "batch": 4, "imgsz": 64, "seed": 0}


@pytest.fixture(scope="module")
def rows(make_dataset: Any, tmp_path_factory: pytest.TempPathFactory) -> list[CompareRow]:
    # given a stored two-class dataset and a local detector checkpoint
    root = tmp_path_factory.mktemp("compare")
    dataset, images = make_dataset(n=8, classes=("light", "dark"), size=64, seed=5)
    shutil.copytree(images, root / "src" / "images")
    export_voc(dataset, root / "src" / "annotations")
    settings = FinetuneSettings(
        common=CommonSettings(paths=PathSettings(home=root)), device="cpu", work_dir=str(root)
    )
    store = FileObjectStore(root / "store")
    params = DatasetImportParams(name="s", prefix="x/", format="voc", val_fraction=0.25, seed=0)
    import_local_dataset(store, root / "src", params, "v1", settings)
    checkpoint = build_detector("n", 2, seed=9).to_checkpoint().save(root / "start.pt")
    # when
    choices = parse_inits(f"scratch,checkpoint:{checkpoint}")
    return run_comparison(
        store, settings, "s:v1", choices, TINY, root / "out", backends=load_backend
    )


def test_every_init_is_trained_and_scored(rows: list[CompareRow]) -> None:
    # then
    assert [row.label.split(":")[0] for row in rows] == ["scratch", "checkpoint"]
    assert all(row.epochs == 1 for row in rows)
    assert all(0.0 <= row.map50 <= 1.0 for row in rows)
    assert rows[0].transfer is None
    assert rows[1].transfer is not None
    assert rows[1].transfer["loaded"] == rows[1].transfer["total"]


def test_report_files_hold_one_line_per_init(rows: list[CompareRow], tmp_path: Path) -> None:
    # when
    paths = write_report(rows, tmp_path, "tiny")
    # then
    table = list(csv.DictReader(paths["csv"].open()))
    assert [line["init"] for line in table] == [row.label for row in rows]
    assert paths["markdown"].read_text().count("\n| ") == 1 + len(rows)
    assert paths["plot"].read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_init_specs_parse_to_their_kinds() -> None:
    # when
    choices = parse_inits("scratch, agbp:b:v1,agssp:d:v2,checkpoint:/w/x.pt")
    # then
    assert [c.init for c in choices] == [
        InitParams(),
        InitParams(kind="agbp", artifact="b:v1"),
        InitParams(kind="agdp", artifact="d:v2"),
        InitParams(kind="checkpoint", path="/w/x.pt"),
    ]


@pytest.mark.parametrize("text", ["", "imagenet:x", "agbp", "scratch:x"])
def test_unknown_inits_are_refused(text: str) -> None:
    # then
    with pytest.raises(InvalidInputError):
        parse_inits(text)
