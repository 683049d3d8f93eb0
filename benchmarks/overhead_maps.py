"""Section (c) of ``benchmarks.train_overhead``: a dataset-map job (ToCoAD) against the
fitted ToCoAD model's own ``score`` on the same images, already decoded, at the same batch.

The category, the ToCoAD fit (a short one: map speed depends on the architecture, not on
how long it trained) and the images are set up once, untimed. The job runs in-process
through ``run_job`` + ``run_dataset_maps`` on a local-folder store: listing, reading and
decoding each image, one ``.npy`` write per map, checkpoint segments, progress, the scores
CSV and the manifest all count. The bare arm holds the decoded images in memory.
"""

from __future__ import annotations

import io
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
# The CLIP config the GPU check's dry run uses: ToCoAD never runs CLIP, but a category's
# prompts are checked with a tokenizer when it is created.
TINY_CLIP_DIR = ROOT / "tests" / "fixtures"
PREFIX = "data/bench/"


@dataclass
class MapsBench:
    settings: Any
    engine: Any
    jobs: Any
    arrays: list[np.ndarray]
    batch: int
    model: Any
    fit: dict[str, Any]


def _jpeg(rng: np.random.Generator, side: int) -> bytes:
    from PIL import Image

    blocks = rng.integers(60, 200, (side // 16, side // 16, 3), dtype=np.uint8)
    image = Image.fromarray(blocks).resize((side, side), Image.Resampling.BILINEAR)
    out = io.BytesIO()
    image.save(out, format="JPEG", quality=90)
    return out.getvalue()


def _fit_config(args: Any) -> dict[str, Any]:
    if args.quick:
        return {"preset": "tiny", "config": {}}
    # The cpu preset's network (ResNet-18, 128 px, segmentation maps) with a short Stage I.
    return {"preset": "cpu", "config": {"stage1": {"iters": 20, "val_every": 20}}}


def setup(work: Path, args: Any) -> MapsBench:
    """Category, a fitted ToCoAD model, ``args.map_images`` JPEGs under one prefix."""
    from services.anomaly_map.config import AnomalyMapSettings
    from services.anomaly_map.runtime.engine import build_engine
    from services.anomaly_map.stores.categories import CategorySpec
    from services.anomaly_map.stores.tocoad_models import load_model
    from services.anomaly_map.usecases.categories import prompt_tokenizer, put_category
    from services.anomaly_map.usecases.tocoad_fits import run_tocoad_fit
    from shared.config import CommonSettings, PathSettings
    from shared.imaging.intake import decode_image
    from shared.jobs.runner import RunnerOptions, run_job
    from shared.jobs.store import JobStore
    from shared.schemas.jobs import JobState
    from shared.storage.filesystem import FileObjectStore

    settings = AnomalyMapSettings(
        common=CommonSettings(paths=PathSettings(home=work / "home")),
        clip_model="tiny-vit", allow_random_weights=True, device="cpu",
        extra_model_config_dir=TINY_CLIP_DIR / "tiny-vit.json", max_batch_size=args.map_batch,
    )  # fmt: skip
    store = FileObjectStore(work / "store")
    engine = build_engine(settings, store)
    rng = np.random.default_rng(args.seed)
    for i in range(args.map_normals):
        store.put_bytes(f"normals/n{i:04d}.jpg", _jpeg(rng, args.map_side))
    spec = CategorySpec(map="metal surface", good=["{} without defects"],
                        defect=["{} with a scratch"], method="tocoad")  # fmt: skip
    put_category(engine.categories, "bench", spec, [("r.jpg", _jpeg(rng, args.map_side))],
                 tokenizer=prompt_tokenizer(settings), limits=engine.limits,
                 max_references=settings.max_references)  # fmt: skip
    jobs = JobStore(store)
    fit = _fit_config(args) | {"category": "bench", "normal_prefix": "normals/"}
    record = jobs.create(kind="anomaly_map_tocoad_fit", task_name="t", queue="maps", params=fit)
    done = run_job(
        record.id, jobs, lambda ctx: run_tocoad_fit(ctx, engine), RunnerOptions(worker="bench-fit")
    )
    if done.state != JobState.SUCCEEDED:
        raise RuntimeError(f"ToCoAD fit {done.id} ended {done.state}: {done.error}")
    images = [_jpeg(rng, args.map_side) for _ in range(args.map_images)]
    for i, data in enumerate(images):
        store.put_bytes(f"{PREFIX}m{i:04d}.jpg", data, "image/jpeg")
    arrays = [decode_image(data, engine.limits).array for data in images]
    model = load_model(engine.categories, engine.categories.get("bench"), engine.device)
    return MapsBench(settings, engine, jobs, arrays, args.map_batch, model, fit)


def run_job_arm(bench: MapsBench, index: int) -> dict[str, Any]:
    """One dataset-map job over every image under the prefix, to a fresh output prefix."""
    from services.anomaly_map.usecases.dataset_maps import run_dataset_maps
    from shared.jobs.runner import RunnerOptions, run_job
    from shared.schemas.jobs import JobState

    params = {"category": "bench", "prefix": PREFIX, "output_prefix": f"out/{index}/"}
    record = bench.jobs.create(
        kind="anomaly_map_dataset", task_name="t", queue="maps", params=params
    )
    started = time.perf_counter()
    done = run_job(
        record.id,
        bench.jobs,
        lambda ctx: run_dataset_maps(ctx, bench.engine, bench.settings),
        RunnerOptions(worker="bench"),
    )
    wall = time.perf_counter() - started
    if done.state != JobState.SUCCEEDED or done.outputs.get("count") != len(bench.arrays):
        raise RuntimeError(f"map job {done.id} ended {done.state}: {done.error}")
    return _arm(wall, len(bench.arrays)) | {"job": done.id}


def run_bare_arm(bench: MapsBench, index: int) -> dict[str, Any]:
    """``TocoadModel.score`` on the decoded images, batch by batch."""
    started = time.perf_counter()
    for start in range(0, len(bench.arrays), bench.batch):
        chunk = bench.arrays[start : start + bench.batch]
        maps, scores = bench.model.score(chunk)
        if len(maps) != len(chunk) or len(scores) != len(chunk):
            raise RuntimeError("the bare model returned the wrong number of maps")
    return _arm(time.perf_counter() - started, len(bench.arrays))


def _arm(wall: float, images: int) -> dict[str, Any]:
    return {"wall_s": round(wall, 3), "images": images, "images_per_s": round(images / wall, 2)}


def ratios(rounds: list[dict[str, dict[str, Any]]]) -> dict[str, Any]:
    """Per round, job images/s over bare images/s; median of rounds."""
    values = [r["job"]["images_per_s"] / r["bare"]["images_per_s"] for r in rounds]
    return {"job_over_bare_images_per_s": round(float(np.median(values)), 3)}
