"""Comparison of start weights (the CLI's ``finetune compare``): the same YOLOv8 trained on the
same split with the same seed from several inits (scratch, AGBP, AGSSP = AGBP + AGDP, a
checkpoint), in-process; a CSV and Markdown table and a bar plot of COCO mAP@0.5 and
mAP@0.5:0.95 (the paper's Table 2 setup, agssp-spec §6).
"""

from __future__ import annotations

import csv
import io
import logging
import re
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

from services.finetune.config import FinetuneSettings
from services.finetune.ml.backend import Backends, TrainRequest
from services.finetune.ml.materialize import materialize_yolo
from services.finetune.params import InitParams
from services.finetune.stores.datasets import DatasetCatalog, load_split
from shared.errors import InvalidInputError
from shared.ml.hooks import TrainHooks
from shared.schemas.detector import FinetuneConfig
from shared.storage.base import ObjectStore

log = logging.getLogger(__name__)

# "agssp" is the paper's name for AGBP followed by AGDP: a detector artifact.
_KINDS: dict[str, Literal["agbp", "agdp"]] = {"agbp": "agbp", "agssp": "agdp", "agdp": "agdp"}


@dataclass(frozen=True)
class InitChoice:
    """One bar of the comparison: a label and the init it stands for."""

    label: str
    init: InitParams


@dataclass(frozen=True)
class CompareRow:
    """Result of one init."""

    label: str
    map50: float
    map50_95: float
    per_class: dict[str, Any]
    epochs: int
    train_s: float
    transfer: dict[str, Any] | None


def parse_inits(text: str) -> list[InitChoice]:
    """``scratch,agbp:NAME:VER,agssp:NAME:VER,checkpoint:PATH`` -> choices (labels = items).

    Raises:
        InvalidInputError: an unknown kind or a missing name/path.
    """
    choices = []
    for item in (part.strip() for part in text.split(",")):
        kind, _, target = item.partition(":")
        if kind == "scratch" and not target:
            choices.append(InitChoice(item, InitParams()))
        elif kind in _KINDS and target:
            choices.append(InitChoice(item, InitParams(kind=_KINDS[kind], artifact=target)))
        elif kind == "checkpoint" and target:
            choices.append(InitChoice(item, InitParams(kind="checkpoint", path=target)))
        else:
            raise InvalidInputError(
                f"init {item!r}: use scratch, agbp:NAME:VER, agssp:NAME:VER or checkpoint:PATH",
                code="invalid_init",
            )
    if not choices:
        raise InvalidInputError("give at least one init", code="invalid_init")
    return choices


def run_comparison(
    store: ObjectStore,
    settings: FinetuneSettings,
    dataset: str,
    choices: Sequence[InitChoice],
    config_fields: Mapping[str, Any],
    out_dir: Path,
    split: str = "train",
    val_split: str = "val",
    on_progress: Callable[[str, float, str], None] | None = None,
    *,
    backends: Backends,
) -> list[CompareRow]:
    """Train and evaluate one detector per init; every run sees identical data and seed.

    Args:
        config_fields: ``FinetuneConfig`` fields (epochs, seed, scale, imgsz, batch, ...).
        on_progress: ``(label, percent, message)`` per epoch.
    """
    config = FinetuneConfig(
        **{**config_fields, "device": settings.device, "workers": settings.workers}
    )
    backend = backends(config.family)
    backend.prepare(settings)
    ref = DatasetCatalog(store).resolve(dataset)
    train, images = load_split(store, ref, split, out_dir / "data")
    val, _ = load_split(store, ref, val_split, out_dir / "data")
    folder = materialize_yolo(train, val, images, out_dir / "yolo")
    rows = []
    for index, choice in enumerate(choices):
        hooks = TrainHooks(on_progress=_reporter(choice.label, on_progress))
        run_dir = out_dir / "runs" / f"{index}-{_slug(choice.label)}"
        request = TrainRequest(
            store, choice.init, folder, run_dir, config, hooks, settings, local_ok=True
        )
        start = time.perf_counter()
        run = backend.train(request)
        seconds = time.perf_counter() - start
        doc = backend.evaluate(run.weights, val, images, config.imgsz, settings)
        rows.append(
            CompareRow(
                label=choice.label,
                map50=doc["map50"],
                map50_95=doc["map50_95"],
                per_class=doc["per_class"],
                epochs=run.epochs_completed,
                train_s=seconds,
                transfer=run.transfer,
            )
        )
        log.info("%s: mAP50 %.4f mAP50-95 %.4f", choice.label, doc["map50"], doc["map50_95"])
    return rows


def _reporter(
    label: str, on_progress: Callable[[str, float, str], None] | None
) -> Callable[[float, str, Mapping[str, float]], None]:
    def report(percent: float, message: str, metrics: Mapping[str, float]) -> None:
        if on_progress is not None:
            on_progress(label, percent, message)

    return report


def _slug(label: str) -> str:
    return re.sub(r"[^A-Za-z0-9._-]+", "_", label)[:60]


def write_report(rows: Sequence[CompareRow], out_dir: Path, title: str) -> dict[str, Path]:
    """``compare.csv``, ``compare.md`` and ``compare.png`` in ``out_dir``; returns their paths."""
    out_dir.mkdir(parents=True, exist_ok=True)
    paths = {
        "csv": out_dir / "compare.csv",
        "markdown": out_dir / "compare.md",
        "plot": out_dir / "compare.png",
    }
    paths["csv"].write_text(_csv(rows), encoding="utf-8")
    paths["markdown"].write_text(markdown_table(rows, title), encoding="utf-8")
    paths["plot"].write_bytes(_bar_plot(rows, title))
    return paths


def _csv(rows: Sequence[CompareRow]) -> str:
    buffer = io.StringIO()
    writer = csv.writer(buffer, lineterminator="\n")
    writer.writerow(["init", "map50", "map50_95", "epochs", "train_s", "loaded", "total"])
    for row in rows:
        loaded, total = _transfer_counts(row)
        scores = [f"{row.map50:.4f}", f"{row.map50_95:.4f}"]
        writer.writerow([row.label, *scores, row.epochs, f"{row.train_s:.1f}", loaded, total])
    return buffer.getvalue()


def markdown_table(rows: Sequence[CompareRow], title: str) -> str:
    """The comparison as a Markdown table under a heading."""
    lines = [
        f"## {title}",
        "",
        "| init | mAP@0.5 | mAP@0.5:0.95 | epochs | train s | tensors loaded |",
        "|---|---:|---:|---:|---:|---:|",
    ]
    for row in rows:
        loaded, total = _transfer_counts(row)
        tensors = f"{loaded}/{total}" if total else "-"
        lines.append(
            f"| {row.label} | {row.map50:.4f} | {row.map50_95:.4f} | {row.epochs} "
            f"| {row.train_s:.1f} | {tensors} |"
        )
    return "\n".join(lines) + "\n"


def _transfer_counts(row: CompareRow) -> tuple[int | str, int | str]:
    if row.transfer is None:
        return "", ""
    return row.transfer["loaded"], row.transfer["total"]


def _bar_plot(rows: Sequence[CompareRow], title: str) -> bytes:
    import matplotlib

    matplotlib.use("Agg")  # no display on servers
    from matplotlib import pyplot as plt

    width = 0.38
    positions = list(range(len(rows)))
    figure, axes = plt.subplots(figsize=(max(4.0, 1.6 * len(rows) + 1.5), 3.6), dpi=100)
    for offset, attr, name in (
        (-width / 2, "map50", "mAP@0.5"),
        (width / 2, "map50_95", "mAP@0.5:0.95"),
    ):
        values = [getattr(row, attr) for row in rows]
        bars = axes.bar([p + offset for p in positions], values, width, label=name)
        axes.bar_label(bars, fmt="%.3f", fontsize=7)
    axes.set_xticks(positions, [row.label for row in rows], rotation=15, ha="right", fontsize=8)
    axes.set_ylim(0, max(0.05, *(row.map50 for row in rows)) * 1.2)
    axes.set_ylabel("COCO mAP")
    axes.set_title(title, fontsize=9)
    axes.legend(fontsize=8)
    figure.tight_layout()
    buffer = io.BytesIO()
    figure.savefig(buffer, format="png")
    plt.close(figure)
    return buffer.getvalue()
