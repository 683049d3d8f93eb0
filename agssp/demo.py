"""``agssp demo data``: the demo's input folders, from Magnetic-tile when placed, else generated.

Layout written under OUT (what ``agssp pipeline run`` reads):

    unlabelled/<name>.png|jpg                     the unlabelled pool
    labelled/images/<class>/<name>                a few labelled images
    labelled/masks/<class>/<stem>.png             their pixel masks (one box per component)

From Magnetic-tile (``<data>/magnetic-tile/MT_*/Imgs``) the labelled set is a fixed, seeded
draw of defect images per class plus a few defect-free ones; the pool is drawn from the rest.
Without the data, textured grey images with bright spots and dark scratches are generated,
so the demo runs on any fresh machine.
"""

from __future__ import annotations

import random
import shutil
from pathlib import Path
from typing import Annotated

import numpy as np
import typer
from PIL import Image, ImageDraw

app = typer.Typer(help="Demo data for the README's run command.")


def magnetic_tile_demo(
    root: Path, out: Path, labelled_per_class: int, pool: int, seed: int = 0
) -> tuple[int, int]:
    """Copy a seeded draw of Magnetic-tile into the demo layout; returns (labelled, pool)."""
    rng = random.Random(seed)
    images = {c.name: sorted(c.glob("Imgs/*.jpg")) for c in sorted(root.glob("MT_*"))}
    labelled: list[tuple[str, Path]] = []
    rest: list[Path] = []
    for cls, files in images.items():
        files = list(files)
        rng.shuffle(files)
        take = labelled_per_class if cls != "MT_Free" else max(1, labelled_per_class // 2)
        labelled += [(cls, f) for f in files[:take]]
        rest += files[take:]
    for cls, image in labelled:
        _copy(image, out / "labelled" / "images" / cls / image.name)
        _copy(image.with_suffix(".png"), out / "labelled" / "masks" / cls / f"{image.stem}.png")
    rng.shuffle(rest)
    for image in rest[:pool]:
        _copy(image, out / "unlabelled" / image.name)
    return len(labelled), min(pool, len(rest))


def _copy(source: Path, target: Path) -> None:
    target.parent.mkdir(parents=True, exist_ok=True)
    shutil.copyfile(source, target)


def synthetic_image(
    rng: np.random.Generator, size: int, defect: bool
) -> tuple[Image.Image, Image.Image]:
    """A textured grey surface, with a bright spot or a dark scratch when ``defect``; its mask."""
    noise = rng.normal(0, 1, (size // 8 + 1, size // 8 + 1))
    texture = Image.fromarray(((noise - noise.min()) / np.ptp(noise) * 60 + 100).astype(np.uint8))
    surface = np.asarray(texture.resize((size, size), Image.Resampling.BICUBIC), np.float32)
    surface = surface + rng.normal(0, 6, (size, size)).astype(np.float32)
    image = Image.fromarray(surface.clip(0, 255).astype(np.uint8)).convert("RGB")
    mask = Image.new("L", (size, size), 0)
    if defect:
        draw, mdraw = ImageDraw.Draw(image), ImageDraw.Draw(mask)
        x, y = (int(v) for v in rng.integers(size // 8, size - size // 4, 2))
        if rng.random() < 0.5:
            r = int(rng.integers(size // 24, size // 10))
            draw.ellipse((x, y, x + r, y + r), fill=(235, 235, 235))
            mdraw.ellipse((x, y, x + r, y + r), fill=255)
        else:
            dx, dy = (int(v) for v in rng.integers(-size // 3, size // 3, 2))
            line = (x, y, min(max(x + dx, 0), size - 1), min(max(y + dy, 0), size - 1))
            draw.line(line, fill=(30, 30, 30), width=3)
            mdraw.line(line, fill=255, width=3)
    return image, mask


def synthetic_demo(out: Path, labelled: int, pool: int, size: int = 160, seed: int = 0) -> None:
    """Generated demo data: ``labelled`` defect images with masks, a pool a third defective."""
    rng = np.random.default_rng(seed)
    for i in range(labelled):
        image, mask = synthetic_image(rng, size, defect=True)
        for sub, picture in (("images", image), ("masks", mask)):
            target = out / "labelled" / sub / "defect" / f"d{i:03d}.png"
            target.parent.mkdir(parents=True, exist_ok=True)
            picture.save(target)
    (out / "unlabelled").mkdir(parents=True, exist_ok=True)
    for i in range(pool):
        image, _ = synthetic_image(rng, size, defect=i % 3 == 0)
        image.save(out / "unlabelled" / f"u{i:04d}.png")


@app.command("data")
def data(
    out: Annotated[Path, typer.Argument(help="folder to write (replaced)")],
    shared_data: Annotated[Path, typer.Option(help="the shared data folder")] = Path(
        "../shared/data"
    ),
    labelled_per_class: int = 10,
    pool: int = 240,
) -> None:
    """Write the demo's unlabelled pool and labelled set to OUT."""
    if out.exists():
        shutil.rmtree(out)
    root = shared_data / "magnetic-tile"
    if (root / "MT_Free").is_dir():
        n_labelled, n_pool = magnetic_tile_demo(root, out, labelled_per_class, pool)
        typer.echo(f"Magnetic-tile: {n_labelled} labelled, {n_pool} unlabelled -> {out}")
        return
    synthetic_demo(out, labelled=4 * labelled_per_class, pool=pool)
    typer.echo(f"{root} not found: generated {4 * labelled_per_class} labelled, {pool} unlabelled")
