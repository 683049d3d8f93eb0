"""``agssp models``: fetch open_clip weights into the local model folder, list what is there.

The one place that goes online, and only when a person runs it; services never download.
"""

from __future__ import annotations

import shutil
from pathlib import Path
from typing import Annotated

import typer

from shared.config import get_common_settings

app = typer.Typer(help="Local model weights (AGSSP_MODEL_DIR).", no_args_is_help=True)

# agssp-spec §1.1: the weight tags KeAD uses for its three encoders.
DEFAULT_TAGS = {
    "ViT-B-16-plus-240": "laion400m_e32",
    "ViT-L-14-336": "openai",
    "ViT-H-14-378-quickgelu": "dfn5b",
}
_WEIGHT_SUFFIXES = (".safetensors", ".bin", ".pt", ".pth")


def _model_dir(model_dir: Path | None) -> Path:
    return (model_dir or get_common_settings().paths.resolved_model_dir()).expanduser().resolve()


def clip_folder(model: str, model_dir: Path) -> Path:
    """Where the anomaly_map service looks for ``model``'s weights."""
    return model_dir / "open_clip" / model


def _pretrained_cfg(model: str, tag: str | None) -> tuple[str, dict[str, object]]:
    from open_clip.pretrained import get_pretrained_cfg, list_pretrained_tags_by_model

    tags = list_pretrained_tags_by_model(model)
    if not tags:
        raise typer.BadParameter(f"open_clip registers no weights for {model!r}")
    chosen = tag or DEFAULT_TAGS.get(model) or tags[0]
    if chosen not in tags:
        raise typer.BadParameter(f"tag {chosen!r} unknown for {model}; one of {', '.join(tags)}")
    return chosen, dict(get_pretrained_cfg(model, chosen))


def _download(cfg: dict[str, object], staging: Path) -> Path:
    from open_clip.pretrained import download_pretrained

    # The release URL names the exact epoch; some hub entries point at a neighbour tag.
    prefer_hub = not cfg.get("url")
    return Path(download_pretrained(cfg, prefer_hf_hub=prefer_hub, cache_dir=str(staging)))


@app.command("fetch-clip")
def fetch_clip(
    model: Annotated[str, typer.Argument(help="open_clip model name, e.g. ViT-B-16-plus-240")],
    tag: Annotated[str | None, typer.Option(help="weight tag; default the one KeAD uses")] = None,
    model_dir: Annotated[Path | None, typer.Option(help="default AGSSP_MODEL_DIR")] = None,
) -> None:
    """Download open_clip weights into MODEL_DIR/open_clip/<model>/ (needs the internet)."""
    chosen, cfg = _pretrained_cfg(model, tag)
    folder = clip_folder(model, _model_dir(model_dir))
    staging = folder.parent / f".{model}.download"
    staging.mkdir(parents=True, exist_ok=True)
    try:
        downloaded = _download(cfg, staging)
    except Exception as exc:  # offline machines fail in many library-specific ways
        shutil.rmtree(staging, ignore_errors=True)
        typer.echo(
            f"could not download {model} ({chosen}): {type(exc).__name__}: {exc}\n"
            f"This machine may be offline. Copy the weights file by hand into {folder}/ "
            "(open_clip_pytorch_model.bin, open_clip_model.safetensors or a *.pt file).",
            err=True,
        )
        raise typer.Exit(2) from exc
    folder.mkdir(parents=True, exist_ok=True)
    target = folder / downloaded.name
    partial = folder / f".{downloaded.name}.partial"
    shutil.copyfile(downloaded.resolve(), partial)
    partial.replace(target)  # a half-copied file must never look like weights
    shutil.rmtree(staging, ignore_errors=True)
    typer.echo(f"{model} ({chosen}) -> {target} ({target.stat().st_size / 2**20:.1f} MiB)")


@app.command("list")
def list_models(
    model_dir: Annotated[Path | None, typer.Option(help="default AGSSP_MODEL_DIR")] = None,
) -> None:
    """Show the open_clip weights present under MODEL_DIR/open_clip/."""
    root = _model_dir(model_dir) / "open_clip"
    folders = (
        sorted(p for p in root.iterdir() if p.is_dir() and not p.name.startswith("."))
        if root.is_dir()
        else []
    )
    shown = 0
    for folder in folders:
        for file in sorted(folder.iterdir()):
            if file.suffix in _WEIGHT_SUFFIXES and file.is_file():
                typer.echo(
                    f"{folder.name:28s} {file.name:44s} {file.stat().st_size / 2**20:9.1f} MiB"
                )
                shown += 1
    if not shown:
        typer.echo(f"no open_clip weights under {root}; fetch with `agssp models fetch-clip MODEL`")
