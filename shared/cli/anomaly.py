"""``agssp maps``: import description files and evaluate anomaly maps on a local dataset.

Runs the anomaly_map service's use cases in this process with the encoder configured by the
``ANOMALY_MAP_*`` variables (options below override the model choice).
"""

from __future__ import annotations

import json
import sys
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any

import typer

if TYPE_CHECKING:
    from services.anomaly_map.categories import CategoryRecord
    from services.anomaly_map.category_admin import ImportResult
    from services.anomaly_map.config import AnomalyMapSettings
    from services.anomaly_map.engine import MapEngine

app = typer.Typer(help="Anomaly maps: categories and evaluation.", no_args_is_help=True)

ModelOpt = Annotated[str | None, typer.Option(help="open_clip model (ANOMALY_MAP_CLIP_MODEL)")]
ConfigDirOpt = Annotated[
    Path | None, typer.Option(help="extra open_clip configs (ANOMALY_MAP_EXTRA_MODEL_CONFIG_DIR)")
]
RandomOpt = Annotated[
    bool, typer.Option(help="allow random weights (ANOMALY_MAP_ALLOW_RANDOM_WEIGHTS; demos only)")
]


def _settings(
    model: str | None, config_dir: Path | None, random_weights: bool, **extra: Any
) -> AnomalyMapSettings:
    """Settings from the environment (read now, not cached), with the options on top."""
    from services.anomaly_map.config import AnomalyMapSettings
    from shared.config import load_settings

    overrides = {k: v for k, v in extra.items() if v is not None}
    if model:
        overrides["clip_model"] = model
    if config_dir:
        overrides["extra_model_config_dir"] = config_dir
    if random_weights:
        overrides["allow_random_weights"] = True
    return load_settings(AnomalyMapSettings, **overrides)


@contextmanager
def _clear_errors() -> Iterator[None]:
    """Domain errors (missing weights, bad descriptions) as one line and exit code 1."""
    from shared.errors import SuiteError

    try:
        yield
    except SuiteError as exc:
        typer.echo(f"error ({exc.code}): {exc.message}", err=True)
        raise typer.Exit(1) from exc


def _read_json(path: Path) -> dict[str, Any]:
    data = json.loads(path.read_text(encoding="utf-8"))
    if not isinstance(data, dict):
        raise typer.BadParameter(f"{path} does not hold a JSON object")
    return data


@app.command("import")
def import_file(
    descriptions: Annotated[Path, typer.Argument(help="a description JSON file (agssp-spec §2)")],
    only: Annotated[list[str] | None, typer.Option(help="import only these categories")] = None,
    data_root: Annotated[Path | None, typer.Option(help="resolve relative samples here")] = None,
    model: ModelOpt = None,
    model_config_dir: ConfigDirOpt = None,
) -> None:
    """Create a new version of every category of a description file in the configured store."""
    settings = _settings(model, model_config_dir, False, data_root=data_root)
    with _clear_errors():
        result = _import(settings, descriptions, only or [])
    for record in result.created:
        typer.echo(f"{record.name} {record.version} references={len(record.references)}")
    for warning in result.warnings:
        typer.echo(f"warning: {warning}", err=True)


def _import(settings: AnomalyMapSettings, descriptions: Path, only: list[str]) -> ImportResult:
    from services.anomaly_map import service
    from services.anomaly_map.categories import CategoryStore
    from shared.storage.factory import create_store

    return service.import_descriptions(
        CategoryStore(create_store(settings.common)),
        _read_json(descriptions),
        tokenizer=service.prompt_tokenizer(settings),
        limits=service.image_limits(settings),
        data_root=settings.data_root,
        only=only,
        max_references=settings.max_references,
    )


def _import_category(
    engine: MapEngine, settings: AnomalyMapSettings, descriptions: Path, category: str
) -> CategoryRecord:
    """Put one category of a description file into the engine's (scratch) store."""
    from services.anomaly_map import service

    imported = service.import_descriptions(
        engine.categories,
        _read_json(descriptions),
        tokenizer=service.prompt_tokenizer(settings),
        limits=engine.limits,
        data_root=settings.data_root,
        only=[category],
        max_references=settings.max_references,
    )
    for warning in imported.warnings:
        typer.echo(f"warning: {warning}", err=True)
    return imported.created[0]


@app.command("evaluate")
def evaluate(
    data: Annotated[Path, typer.Argument(help="dataset folder, e.g. ../shared/data/magnetic-tile")],
    descriptions: Annotated[Path, typer.Option(help="description JSON holding the category")],
    category: Annotated[str, typer.Option(help="category key in the description file")],
    normal: Annotated[list[str], typer.Option(help="sub-folders of normal images")] = ["MT_Free"],  # noqa: B006
    data_root: Annotated[Path | None, typer.Option(help="for samples; default DATA/..")] = None,
    mode: Annotated[str | None, typer.Option(help="kead or winclip")] = None,
    limit: Annotated[int | None, typer.Option(help="evaluate an evenly spaced subset")] = None,
    out: Annotated[Path | None, typer.Option(help="write the results JSON here")] = None,
    model: ModelOpt = None,
    model_config_dir: ConfigDirOpt = None,
    allow_random_weights: RandomOpt = False,
) -> None:
    """Image AUROC, pixel AUROC and AUPRO of a category on a local folder (images + masks)."""
    from services.anomaly_map import service
    from shared.storage.filesystem import FileObjectStore

    root = data.expanduser().resolve()
    settings = _settings(
        model, model_config_dir, allow_random_weights, data_root=data_root or root.parent
    )
    with _clear_errors(), tempfile.TemporaryDirectory(prefix="agssp-eval-") as scratch:
        engine = service.build_engine(settings, FileObjectStore(Path(scratch)))
        record = _import_category(engine, settings, descriptions, category)
        result = service.evaluate_local_folder(
            engine,
            record,
            root,
            normal_dirs=normal,
            mode=mode,
            max_images=limit,
            batch_size=settings.max_batch_size,
            on_batch=lambda done, total: typer.echo(f"{done}/{total}", err=True),
        )
    text = json.dumps({**result.summary, "dataset": str(root)}, indent=1)
    if out:
        out.write_text(text + "\n", encoding="utf-8")
    sys.stdout.write(text + "\n")
