"""``agssp maps``: import description files, fit ToCoAD and evaluate maps on a local dataset.

Runs the anomaly_map service's use cases in this process against the configured store (the
running suite's, from ``STORAGE_*`` / ``S3_*``) with the encoder configured by the
``ANOMALY_MAP_*`` variables (options below override the model choice). ToCoAD commands never
load CLIP, so they work in a plant with no downloaded weights.
"""

from __future__ import annotations

import json
import socket
import sys
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any

import typer

if TYPE_CHECKING:
    from services.anomaly_map.config import AnomalyMapSettings
    from services.anomaly_map.runtime.engine import MapEngine
    from services.anomaly_map.stores.categories import CategoryRecord
    from services.anomaly_map.usecases.categories import ImportResult

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
    from services.anomaly_map.stores.categories import CategoryStore
    from services.anomaly_map.usecases.categories import import_descriptions, prompt_tokenizer
    from shared.imaging.intake import image_limits
    from shared.storage.factory import create_store

    return import_descriptions(
        CategoryStore(create_store(settings.common)),
        _read_json(descriptions),
        tokenizer=prompt_tokenizer(settings),
        limits=image_limits(settings),
        data_root=settings.data_root,
        only=only,
        max_references=settings.max_references,
    )


def _import_category(
    engine: MapEngine, settings: AnomalyMapSettings, descriptions: Path, category: str
) -> CategoryRecord:
    """Put one category of a description file into the engine's (scratch) store."""
    from services.anomaly_map.usecases.categories import import_descriptions, prompt_tokenizer

    imported = import_descriptions(
        engine.categories,
        _read_json(descriptions),
        tokenizer=prompt_tokenizer(settings),
        limits=engine.limits,
        data_root=settings.data_root,
        only=[category],
        max_references=settings.max_references,
    )
    for warning in imported.warnings:
        typer.echo(f"warning: {warning}", err=True)
    return imported.created[0]


@contextmanager
def _engine_and_category(
    settings: AnomalyMapSettings, descriptions: Path | None, category: str
) -> Iterator[tuple[MapEngine, CategoryRecord]]:
    """With ``descriptions``: a scratch store holding that one category (KeAD/WinCLIP tries);
    without: the configured store and its latest version of ``category`` (e.g. a fitted one)."""
    from services.anomaly_map.runtime.engine import build_engine
    from shared.storage.factory import create_store
    from shared.storage.filesystem import FileObjectStore

    if descriptions is None:
        engine = build_engine(settings, create_store(settings.common))
        yield engine, engine.categories.get(category)
        return
    with tempfile.TemporaryDirectory(prefix="agssp-eval-") as scratch:
        engine = build_engine(settings, FileObjectStore(Path(scratch)))
        yield engine, _import_category(engine, settings, descriptions, category)


@app.command("evaluate")
def evaluate(
    data: Annotated[Path, typer.Argument(help="dataset folder, e.g. ../shared/data/magnetic-tile")],
    category: Annotated[str, typer.Option(help="category name (store) or key (descriptions)")],
    descriptions: Annotated[
        Path | None,
        typer.Option(help="import the category from this file into a scratch store first"),
    ] = None,
    normal: Annotated[list[str], typer.Option(help="sub-folders of normal images")] = ["MT_Free"],  # noqa: B006
    data_root: Annotated[Path | None, typer.Option(help="for samples; default DATA/..")] = None,
    mode: Annotated[str | None, typer.Option(help="kead, winclip or tocoad")] = None,
    limit: Annotated[int | None, typer.Option(help="evaluate an evenly spaced subset")] = None,
    out: Annotated[Path | None, typer.Option(help="write the results JSON here")] = None,
    model: ModelOpt = None,
    model_config_dir: ConfigDirOpt = None,
    allow_random_weights: RandomOpt = False,
) -> None:
    """Image AUROC, pixel AUROC and AUPRO of a category on a local folder (images + masks).

    Without ``--descriptions`` the category is read from the configured store, which is where
    ``agssp maps fit-tocoad`` (or a fit job) put its ToCoAD model: ``--mode tocoad`` needs that.
    """
    from services.anomaly_map.usecases.evaluations import evaluate_local_folder

    root = data.expanduser().resolve()
    settings = _settings(
        model, model_config_dir, allow_random_weights, data_root=data_root or root.parent
    )
    if mode == "tocoad" and descriptions is not None:
        raise typer.BadParameter(
            "--mode tocoad evaluates a fitted category of the configured store; "
            "drop --descriptions (fit first with agssp maps fit-tocoad)"
        )
    with _clear_errors(), _engine_and_category(settings, descriptions, category) as (eng, rec):
        result = evaluate_local_folder(
            eng,
            rec,
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


def _upload_normals(store: Any, folders: list[Path], prefix: str) -> int:
    """Copy the image files of local folders under ``prefix``; returns how many."""
    from shared.schemas.dataset_maps import is_image_key

    count = 0
    for folder in folders:
        for path in sorted(folder.expanduser().resolve().rglob("*")):
            if path.is_file() and is_image_key(path.name) and not _is_mask(path):
                store.put_bytes(f"{prefix}{folder.name}/{path.name}", path.read_bytes())
                count += 1
    return count


def _is_mask(path: Path) -> bool:
    # magnetic-tile keeps <stem>.jpg images beside <stem>.png masks
    return path.suffix.lower() == ".png" and path.with_suffix(".jpg").exists()


@app.command("fit-tocoad")
def fit_tocoad(
    category: Annotated[str, typer.Argument(help="category name in the configured store")],
    normal_dir: Annotated[
        list[Path] | None, typer.Option(help="local folders of defect-free images (uploaded)")
    ] = None,
    normal_prefix: Annotated[
        str | None, typer.Option(help="defect-free images already in the store")
    ] = None,
    preset: Annotated[
        str, typer.Option(help="tiny (CI), demo (minutes), cpu (2 cores) or gpu")
    ] = "cpu",
    config: Annotated[str | None, typer.Option(help="TocoadConfig overrides as JSON")] = None,
    max_images: Annotated[int, typer.Option(help="most training images")] = 512,
) -> None:
    """Fit ToCoAD for the latest version of a category, in this process, as a stored job.

    Needs no CLIP weights. The model lands beside the category in the configured store, so the
    running suite's API and workers serve ``mode=tocoad`` maps with it at once.
    """
    from services.anomaly_map.config import AnomalyMapSettings
    from services.anomaly_map.params import TocoadFitParams
    from services.anomaly_map.runtime.engine import build_engine
    from services.anomaly_map.usecases.tocoad_fits import TOCOAD_FIT_TASK, run_tocoad_fit
    from shared.config import load_settings
    from shared.jobs.runner import RunnerOptions, run_job
    from shared.jobs.store import JobStore
    from shared.schemas.jobs import JobState
    from shared.storage.factory import create_store

    settings = load_settings(AnomalyMapSettings)
    with _clear_errors():
        engine = build_engine(settings, create_store(settings.common))
        jobs = JobStore(engine.categories.store)
        record = engine.categories.get(category)
        params: dict[str, Any] = {
            "category": category,
            "category_version": record.version,
            "preset": preset,
            "max_images": max_images,
            "config": json.loads(config) if config else {},
            "normal_prefix": normal_prefix,
        }
        job = jobs.create(
            kind="anomaly_map_tocoad_fit", task_name=TOCOAD_FIT_TASK, queue="local", params={}
        )
        if normal_dir:
            params["normal_prefix"] = f"uploads/tocoad/{category}/{job.id}/"
            count = _upload_normals(jobs.store, normal_dir, params["normal_prefix"])
            typer.echo(f"uploaded {count} normal images to {params['normal_prefix']}", err=True)
        job.params = TocoadFitParams.model_validate(params).model_dump(mode="json")
        jobs.save(job)
        typer.echo(f"job {job.id}: fitting {category} {record.version} ({preset})", err=True)
        opts = RunnerOptions(worker=f"cli@{socket.gethostname()}")
        final = run_job(job.id, jobs, lambda ctx: run_tocoad_fit(ctx, engine), opts)
    typer.echo(json.dumps({"job": final.id, "state": final.state, **final.outputs}, indent=1))
    if final.state != JobState.SUCCEEDED:
        typer.echo(f"error ({final.error_code}): {final.error}", err=True)
        raise typer.Exit(1)
