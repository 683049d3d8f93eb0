"""``agssp demo data``: the demo's input folders, from the shared data when placed, else generated.

Sources (``--source``; ``auto`` takes NEU-DET when it is there, else the generated set):

* ``neu-det``: NEU-DET (``<data>/neu-det/{images,annotations}``), a seeded draw of
  ``labelled_per_class`` images per class with their VOC boxes; the pool is drawn from the
  rest. Its defects are large enough for a detector trained for a few CPU minutes to find.
* ``generated``: textured grey images with bright spots and dark scratches, written with VOC
  boxes (each box is the extent of the one drawn defect), so the demo runs on any machine.
* ``magnetic-tile``: Magnetic-tile (``<data>/magnetic-tile/MT_*/Imgs``) with its pixel masks,
  a seeded draw per class plus a few defect-free images. Its thin cracks and small blowholes
  need far longer training than a demo (see ``benchmarks/agssp_lift.py``).

Layouts written under OUT (what ``agssp pipeline run`` reads):

    unlabelled/<name>                           the unlabelled pool
    labelled/images/<name>                      VOC sources: the labelled images
    labelled/annotations/<stem>.xml             ... and their boxes
    labelled/images/<class>/<name>              masks source: the labelled images
    labelled/masks/<class>/<stem>.png           ... and their pixel masks
"""

from __future__ import annotations

import random
import shutil
import time
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any, Literal, cast

import numpy as np
import typer
from PIL import Image, ImageDraw

from services.finetune.ml.dataset import Box, ImageRecord
from services.finetune.ml.voc import voc_xml_bytes

if TYPE_CHECKING:  # httpx loads with the command, as in the pipeline commands
    import httpx

app = typer.Typer(help="Demo data for the README's run command.")

IMAGE_SUFFIXES = {".jpg", ".jpeg", ".png", ".bmp"}
Source = Literal["auto", "neu-det", "magnetic-tile", "generated"]
VOC_FLAGS = "--format voc --labelled-images images --annotations annotations"
MASK_FLAGS = "--format masks --labelled-images images --annotations masks"
GENERATED_CLASS = "defect"
# The cpu-demo finetune recipe (YOLOv8n from scratch, 80 epochs, 160 px) on a NEU-DET draw of
# 10 per class reached mAP@0.5 0.12, with boxes on 9 of 60 held-out images; at 20 per class
# 0.38 and 26 of 60 (one seed each, the finetune code run outside the pipeline).
LABELLED_PER_CLASS: dict[str, int] = {"neu-det": 20, "magnetic-tile": 10, "generated": 10}


def neu_det_demo(
    root: Path, out: Path, labelled_per_class: int, pool: int, seed: int = 0
) -> tuple[int, int]:
    """Copy a seeded draw of NEU-DET into the VOC layout; returns (labelled, pool)."""
    rng = random.Random(seed)
    by_class: dict[str, list[Path]] = {}
    for xml in sorted((root / "annotations").glob("*.xml")):
        image = _image_of(xml.stem, root / "images")
        if image is not None:  # the class is the file name's prefix: rolled-in_scale_12
            by_class.setdefault(xml.stem.rsplit("_", 1)[0], []).append(image)
    labelled: list[Path] = []
    rest: list[Path] = []
    for files in by_class.values():
        rng.shuffle(files)
        labelled += files[:labelled_per_class]
        rest += files[labelled_per_class:]
    for image in labelled:
        _copy(image, out / "labelled" / "images" / image.name)
        xml_name = f"{image.stem}.xml"
        _copy(root / "annotations" / xml_name, out / "labelled" / "annotations" / xml_name)
    return len(labelled), _copy_pool(rng, rest, out, pool)


def magnetic_tile_demo(
    root: Path, out: Path, labelled_per_class: int, pool: int, seed: int = 0
) -> tuple[int, int]:
    """Copy a seeded draw of Magnetic-tile into the masks layout; returns (labelled, pool)."""
    rng = random.Random(seed)
    labelled: list[tuple[str, Path]] = []
    rest: list[Path] = []
    for folder in sorted(root.glob("MT_*")):
        files = sorted(folder.glob("Imgs/*.jpg"))
        rng.shuffle(files)
        take = labelled_per_class if folder.name != "MT_Free" else max(1, labelled_per_class // 2)
        labelled += [(folder.name, f) for f in files[:take]]
        rest += files[take:]
    for cls, image in labelled:
        _copy(image, out / "labelled" / "images" / cls / image.name)
        _copy(image.with_suffix(".png"), out / "labelled" / "masks" / cls / f"{image.stem}.png")
    return len(labelled), _copy_pool(rng, rest, out, pool)


def _image_of(stem: str, images: Path) -> Path | None:
    found = sorted(p for p in images.glob(f"{stem}.*") if p.suffix.lower() in IMAGE_SUFFIXES)
    return found[0] if found else None


def _copy_pool(rng: random.Random, rest: list[Path], out: Path, pool: int) -> int:
    rng.shuffle(rest)
    for image in rest[:pool]:
        _copy(image, out / "unlabelled" / image.name)
    return min(pool, len(rest))


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


def mask_box(mask: Image.Image) -> Box | None:
    """The extent of a mask's defect pixels as one box (pixel-edge corners), if any."""
    ys, xs = np.nonzero(np.asarray(mask))
    if xs.size == 0:
        return None
    x1, y1, x2, y2 = int(xs.min()), int(ys.min()), int(xs.max()) + 1, int(ys.max()) + 1
    return Box(x1=x1, y1=y1, x2=x2, y2=y2, class_id=0)


def synthetic_demo(out: Path, labelled: int, pool: int, size: int = 160, seed: int = 0) -> None:
    """Generated demo data: ``labelled`` defect images with VOC boxes, a pool a third defective."""
    rng = np.random.default_rng(seed)
    (out / "labelled" / "annotations").mkdir(parents=True, exist_ok=True)
    (out / "labelled" / "images").mkdir(parents=True, exist_ok=True)
    for i in range(labelled):
        image, mask = synthetic_image(rng, size, defect=True)
        box = mask_box(mask)
        name = f"d{i:03d}.png"
        image.save(out / "labelled" / "images" / name)
        record = ImageRecord(file_name=name, width=size, height=size, boxes=[box] if box else [])
        xml = voc_xml_bytes(record, (GENERATED_CLASS,))
        (out / "labelled" / "annotations" / f"d{i:03d}.xml").write_bytes(xml)
    (out / "unlabelled").mkdir(parents=True, exist_ok=True)
    for i in range(pool):
        image, _ = synthetic_image(rng, size, defect=i % 3 == 0)
        image.save(out / "unlabelled" / f"u{i:04d}.png")


def write_demo(
    out: Path, shared_data: Path, source: Source, labelled_per_class: int | None, pool: int
) -> tuple[str, str]:
    """Write the demo folders; returns (what was written, the pipeline's labelled-set flags).

    ``labelled_per_class`` None takes the source's default (:data:`LABELLED_PER_CLASS`).
    """
    neu, tiles = shared_data / "neu-det", shared_data / "magnetic-tile"
    if source == "auto":
        source = "neu-det" if (neu / "annotations").is_dir() else "generated"
    per_class = labelled_per_class or LABELLED_PER_CLASS[source]
    if source == "neu-det":
        _require(neu / "annotations", source)
        n, m = neu_det_demo(neu, out, per_class, pool)
        return f"NEU-DET: {n} labelled, {m} unlabelled", VOC_FLAGS
    if source == "magnetic-tile":
        _require(tiles / "MT_Free", source)
        n, m = magnetic_tile_demo(tiles, out, per_class, pool)
        return f"Magnetic-tile: {n} labelled, {m} unlabelled", MASK_FLAGS
    synthetic_demo(out, labelled=4 * per_class, pool=pool)
    return f"generated: {4 * per_class} labelled, {pool} unlabelled", VOC_FLAGS


def _require(folder: Path, source: str) -> None:
    if not folder.is_dir():
        raise typer.BadParameter(f"{folder} not found: place the data or pick another --source")


@app.command("data")
def data(
    out: Annotated[Path, typer.Argument(help="folder to write (replaced)")],
    shared_data: Annotated[Path, typer.Option(help="the shared data folder")] = Path(
        "../shared/data"
    ),
    source: Annotated[
        str,
        typer.Option(
            help="auto (NEU-DET when placed, else generated), neu-det, magnetic-tile or generated"
        ),
    ] = "auto",
    labelled_per_class: Annotated[
        int | None,
        typer.Option(
            min=1,
            help="labelled images per class (default: neu-det 20, "
            "magnetic-tile 10, generated 10 = 40 images of one class)",
        ),
    ] = None,
    pool: int = 240,
) -> None:
    """Write the demo's unlabelled pool and labelled set to OUT."""
    if source not in ("auto", "neu-det", "magnetic-tile", "generated"):
        raise typer.BadParameter(f"unknown source {source!r}", param_hint="--source")
    if out.exists():
        shutil.rmtree(out)
    written, flags = write_demo(out, shared_data, cast(Source, source), labelled_per_class, pool)
    typer.echo(f"{written} -> {out}")
    typer.echo(f"labelled set flags for `agssp pipeline run`: {flags}")


def detect_folder(
    client: httpx.Client, images: list[Path], conf: float | None, wait_s: float
) -> list[Any]:
    """``POST /detect`` every image; returns one ``(image, answer)`` pair per image.

    A 503 (no model served yet: the service re-reads the registry every
    ``INFERENCE_POLL_INTERVAL_S``) is retried for up to ``wait_s`` seconds.
    """
    params = {} if conf is None else {"conf": conf}
    deadline = time.monotonic() + wait_s
    answers = []
    for image in images:
        response = _post_image(client, image, params)
        while response.status_code == 503 and time.monotonic() < deadline:
            time.sleep(1.0)
            response = _post_image(client, image, params)
        if not response.is_success:
            typer.echo(f"error {response.status_code} on {image}: {response.text[:500]}", err=True)
            raise typer.Exit(2)
        answers.append((image, response.json()))
    return answers


def _post_image(client: httpx.Client, image: Path, params: dict[str, float]) -> httpx.Response:
    with image.open("rb") as handle:
        return client.post("/detect", params=params, files={"image": handle})


def reload_models(client: httpx.Client) -> None:
    """Ask the service to re-read the registry now, so a just-promoted model is the one served.

    Needs the admin scope where API keys are on; without it the service's own poll (and the
    503 retries of :func:`detect_folder`) picks the model up instead.
    """
    response = client.post("/v1/models/reload")
    if not response.is_success:
        typer.echo(f"models reload answered {response.status_code}; waiting for the service's poll")


def _summary(image: Path, body: dict[str, Any]) -> str:
    found = ", ".join(f"{d['class_name']} {d['score']:.2f}" for d in body["detections"][:5])
    more = len(body["detections"]) - 5
    return f"  {image.name}: {found}" + (f" (+{more} more)" if more > 0 else "")


@app.command("detect")
def detect(
    folder: Annotated[Path, typer.Argument(help="images to send (searched recursively)")],
    url: Annotated[
        str, typer.Option(envvar="AGSSP_INFERENCE_URL", help="inference service base URL")
    ] = "http://127.0.0.1:8004",
    api_key: Annotated[str, typer.Option(envvar="AGSSP_API_KEY", help="API key")] = "",
    conf: Annotated[float | None, typer.Option(help="confidence threshold")] = None,
    wait: Annotated[float, typer.Option(help="seconds to wait for a served model")] = 60.0,
    show: int = 5,
) -> None:
    """Send every image under FOLDER to the served detector and count the answers with boxes."""
    import httpx

    images = sorted(p for p in folder.rglob("*") if p.suffix.lower() in IMAGE_SUFFIXES)
    if not images:
        raise typer.BadParameter(f"no images under {folder}", param_hint="FOLDER")
    headers = {"X-API-Key": api_key} if api_key else {}
    with httpx.Client(base_url=url.rstrip("/"), headers=headers, timeout=60) as client:
        reload_models(client)
        answers = detect_folder(client, images, conf, wait)
    hits = [(image, body) for image, body in answers if body["detections"]]
    model = answers[0][1]["model"]
    typer.echo(
        f"/detect ({url}, model {model['name']} {model['version']}): boxes on "
        f"{len(hits)} of {len(answers)} images"
    )
    for image, body in hits[:show]:
        typer.echo(_summary(image, body))
    if hits:
        typer.echo(f"one of them: curl -s -F image=@{hits[0][0]} {url.rstrip('/')}/detect")
