"""``agssp finetune``: dataset import, model evaluation and init comparisons, run in-process.

Register with ``app.add_typer(finetune_app, name="finetune")``. The service modules (torch,
ultralytics) load inside the commands, so ``agssp --help`` stays fast.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Annotated, Any

import typer

finetune_app = typer.Typer(
    help="Detector datasets, evaluations and init comparisons (local, no worker needed).",
    no_args_is_help=True,
)
datasets_app = typer.Typer(help="Stored detection datasets.", no_args_is_help=True)
finetune_app.add_typer(datasets_app, name="datasets")


def _context() -> tuple[Any, Any]:
    """The finetune settings and the store they point at."""
    from services.finetune.config import get_settings
    from shared.logging import configure_logging
    from shared.storage.factory import create_store

    settings = get_settings()
    configure_logging(settings.common.log)
    return settings, create_store(settings.common)


def _fail(exc: Exception) -> typer.Exit:
    typer.echo(f"error: {exc}", err=True)
    return typer.Exit(2)


@datasets_app.command("import")
def datasets_import(
    path: Annotated[Path, typer.Argument(help="dataset folder", exists=True, file_okay=False)],
    name: Annotated[str, typer.Option(help="dataset name in the store")],
    fmt: Annotated[
        str, typer.Option("--format", help="auto (recognise the layout), voc, coco, yolo, masks")
    ] = "auto",
    images: Annotated[
        str | None, typer.Option(help="images folder inside PATH (default: as found)")
    ] = None,
    annotations: Annotated[
        str | None, typer.Option(help="VOC folder, COCO file, YOLO labels or masks folder in PATH")
    ] = None,
    classes: Annotated[str | None, typer.Option(help="comma-separated class names")] = None,
    val_fraction: float = 0.1,
    seed: int = 2024,
    mini: Annotated[list[int] | None, typer.Option(help="store mini-N subsets of train")] = None,
) -> None:
    """Import a VOC/COCO/YOLO or images + masks folder as a stored dataset version."""
    from services.finetune.ml.dataset_summary import summary_lines
    from services.finetune.params import DatasetImportParams
    from services.finetune.usecases.datasets import import_local_dataset
    from shared.errors import SuiteError
    from shared.jobs.store import new_job_id

    settings, store = _context()
    try:
        body: dict[str, Any] = {
            "name": name,
            "prefix": "local/",
            "format": fmt,
            "annotations": annotations,
            "classes": classes.split(",") if classes else None,
            "val_fraction": val_fraction,
            "seed": seed,
            "mini": mini or [],
        }
        if images is not None:
            body["images"] = images
        params = DatasetImportParams.model_validate(body)
        ref, manifest = import_local_dataset(store, path.resolve(), params, new_job_id(), settings)
    except (SuiteError, ValueError) as exc:
        raise _fail(exc) from exc
    typer.echo(f"{ref}: {manifest.get('layout', fmt)}")
    for line in summary_lines(manifest["summary"]):
        typer.echo(line)
    for warning in manifest.get("warnings", []):
        typer.echo(f"warning: {warning}", err=True)
    typer.echo(json.dumps({k: manifest[k] for k in ("classes", "images", "boxes", "splits")}))


@datasets_app.command("list")
def datasets_list() -> None:
    """Stored datasets and their latest version."""
    from services.finetune.stores.datasets import DatasetCatalog

    _, store = _context()
    catalog = DatasetCatalog(store)
    for name in catalog.names():
        latest = catalog.latest(name)
        typer.echo(f"{name}:{latest.version if latest else '-'}")


@finetune_app.command("evaluate")
def evaluate(
    model: Annotated[str, typer.Option(help="registered model 'name:version' or 'name'")],
    dataset: Annotated[str, typer.Option(help="stored dataset 'name:version' or 'name'")],
    split: str = "val",
) -> None:
    """COCO mAP of a model on a dataset split; saved with the model, printed as JSON."""
    from services.finetune.ml.backend import load_backend
    from services.finetune.params import EvaluationParams
    from services.finetune.usecases.common import workspace
    from services.finetune.usecases.evaluations import DETAIL_KEYS, evaluate_model
    from shared.errors import SuiteError
    from shared.jobs.store import new_job_id

    settings, store = _context()
    try:
        params = EvaluationParams(model=model, dataset=dataset, split=split)
        with workspace(settings, f"cli-evaluate-{new_job_id()}") as work:
            doc, key = evaluate_model(store, params, settings, work, load_backend)
    except (SuiteError, ValueError) as exc:
        raise _fail(exc) from exc
    # the per-image records and curves stay in the saved document (the console shows them)
    shown = {k: v for k, v in doc.items() if k not in DETAIL_KEYS}
    totals = doc["errors"]["totals"]
    typer.echo(json.dumps({**shown, "error_totals": totals, "saved_to": key}, indent=1))


@finetune_app.command("compare")
def compare(
    dataset: Annotated[str, typer.Option(help="stored dataset 'name:version' or 'name'")],
    inits: Annotated[
        str, typer.Option(help="scratch,agbp:NAME:VER,agssp:NAME:VER,checkpoint:PATH")
    ] = "scratch",
    epochs: int = 10,
    seed: int = 2024,
    scale: str = "n",
    imgsz: int = 640,
    batch: int = 16,
    split: str = "train",
    val_split: str = "val",
    mini: Annotated[int | None, typer.Option(help="train on mini-N of train")] = None,
    out: Annotated[Path, typer.Option(help="output folder")] = Path("finetune-compare"),
) -> None:
    """Train the same detector from each init on one split and seed; table and bar plot."""
    from services.finetune.ml.backend import load_backend
    from services.finetune.usecases.comparisons import parse_inits, run_comparison, write_report
    from shared.errors import SuiteError

    settings, store = _context()
    fields = {"epochs": epochs, "seed": seed, "scale": scale, "imgsz": imgsz, "batch": batch}
    try:
        choices = parse_inits(inits)
        rows = run_comparison(
            store,
            settings,
            dataset,
            choices,
            fields,
            out,
            split=f"mini-{mini}" if mini else split,
            val_split=val_split,
            on_progress=lambda label, pct, msg: typer.echo(f"[{label}] {msg}", err=True),
            backends=load_backend,
        )
    except (SuiteError, ValueError) as exc:
        raise _fail(exc) from exc
    title = f"{dataset} YOLOv8{scale} {epochs} epochs @{imgsz}, seed {seed}"
    paths = write_report(rows, out, title)
    typer.echo(paths["markdown"].read_text())
    typer.echo(" ".join(str(p) for p in paths.values()))
