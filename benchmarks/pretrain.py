"""AGBP throughput: the real data pipeline vs bare forward/backward on pre-made tensors.

Pipeline: synthetic JPEGs and maps in a local-folder store -> pairing -> cache fill ->
``CachedPairSource`` -> joint augmentation -> DataLoader -> ``train_agbp``. Bare: the same
objective, optimiser and batch shape on one batch already in memory. Their ratio is the cost
of the data pipeline. Variants run interleaved in rounds, so load drift on a shared machine
hits all of them. Writes ``benchmarks/results/pretrain.json``.

    python -m benchmarks.pretrain [--rounds 3] [--batch-size 8] [--workers 0 2]
"""

from __future__ import annotations

import argparse
import io
import json
import os
import statistics
import sys
import tempfile
import time
from collections.abc import Callable
from functools import partial
from pathlib import Path
from typing import Any

import numpy as np
import torch
from PIL import Image

from benchmarks import provenance
from services.pretrain.ml.agbp_config import required, resolve_config
from services.pretrain.ml.augment import normalize_images
from services.pretrain.ml.model import build_objective
from services.pretrain.ml.optim import build_optimizer
from services.pretrain.ml.train import train_agbp
from services.pretrain.params import AgbpConfig, SourceSpec
from services.pretrain.stores.maps import collect_pairs
from services.pretrain.stores.pairs import CachedPairSource, prefetch
from services.pretrain.stores.synthetic import synthetic_pair
from shared.imaging.intake import ImageLimits
from shared.ml.backbones import create_backbone
from shared.ml.hooks import TrainHooks
from shared.storage.filesystem import FileObjectStore

ROOT = Path(__file__).resolve().parents[1]
WARMUP_STEPS = 3
STEPS_PER_EPOCH = 5
# (wall clock, CPU time of this process) at each step boundary.
Marks = list[tuple[float, float]]


def write_dataset(store: FileObjectStore, count: int, size: int, grid: int) -> list[SourceSpec]:
    """``count`` JPEGs (size x size) with (grid, grid) maps, split over two categories."""
    rng = np.random.default_rng(0)
    specs = []
    for category in ("a", "b"):
        for i in range(count // 2):
            image, amap, _ = synthetic_pair(rng, size, size, grid, with_blob=i % 3 != 2)
            jpeg = io.BytesIO()
            Image.fromarray(image).save(jpeg, format="JPEG", quality=90)
            store.put_bytes(f"img/{category}/{i:05d}.jpg", jpeg.getvalue())
            npy = io.BytesIO()
            np.save(npy, amap, allow_pickle=False)
            store.put_bytes(f"maps/{category}/maps/{i:05d}.npy", npy.getvalue())
        prefixes = {"images_prefix": f"img/{category}/", "maps_prefix": f"maps/{category}/"}
        specs.append(SourceSpec(category=category, **prefixes))
    return specs


def _mark(marks: Marks) -> None:
    marks.append((time.perf_counter(), time.process_time()))


def pipeline_marks(cfg: AgbpConfig, source: CachedPairSource) -> Marks:
    """``train_agbp``'s step boundaries: ``should_stop`` runs once per step, after the batch."""
    marks: Marks = []

    def stop() -> bool:
        _mark(marks)
        return False

    train_agbp(cfg, source, hooks=TrainHooks(should_stop=stop), device=torch.device("cpu"))
    return marks


def bare_marks(cfg: AgbpConfig, steps: int) -> Marks:
    """The same objective and optimiser stepping on one pre-made, already-augmented batch."""
    cfg = resolve_config(cfg)
    size = required(cfg.input_size, "input_size")
    batch_size = required(cfg.batch_size, "batch_size")
    backbone = create_backbone(
        cfg.backbone,
        frozen_stages=required(cfg.frozen_stages, "frozen_stages"),
        out_indices=required(cfg.stages, "stages"),
        img_size=size,
    )
    objective = build_objective(cfg, backbone)
    optimizer = build_optimizer(objective, cfg)
    gen = torch.Generator().manual_seed(0)
    images = torch.randint(0, 256, (batch_size, 3, size, size), dtype=torch.uint8, generator=gen)
    batch = {
        "image": normalize_images(images, required(cfg.mean, "mean"), required(cfg.std, "std")),
        "map": torch.rand(batch_size, 1, size, size, generator=gen),
        "label": torch.randint(0, 2, (batch_size,), generator=gen),
    }
    objective.train()
    marks: Marks = []
    for _ in range(steps):
        _mark(marks)
        losses = objective(batch)
        optimizer.zero_grad(set_to_none=True)
        losses["loss"].backward()
        optimizer.step()
    _mark(marks)
    return marks


def _intervals(marks: Marks) -> tuple[list[float], list[float]]:
    wall = np.diff([m[0] for m in marks])[WARMUP_STEPS:]
    cpu = np.diff([m[1] for m in marks])[WARMUP_STEPS:]
    return [float(x) for x in wall], [float(x) for x in cpu]


def _summary(wall: list[float], cpu: list[float], batch_size: int) -> dict[str, Any]:
    median = statistics.median(wall)
    return {
        "timed_steps": len(wall),
        "median_step_s": round(median, 4),
        "mean_step_s": round(statistics.fmean(wall), 4),
        "images_per_s_median": round(batch_size / median, 2),
        "median_step_cpu_s": round(statistics.median(cpu), 4),
    }


def run(args: argparse.Namespace) -> dict[str, Any]:
    """Dataset, cache fill, then rounds of (bare, pipeline per worker count)."""
    count = STEPS_PER_EPOCH * args.batch_size
    epochs = 3
    steps = epochs * STEPS_PER_EPOCH
    base = AgbpConfig(
        backbone="yolov8n",
        objective="cls_distill",
        num_classes=2,
        epochs=epochs,
        batch_size=args.batch_size,
        input_size=args.input_size,
        amp=False,
        checkpoint_every=0,
        seed=0,
    )
    with tempfile.TemporaryDirectory(prefix="bench-pretrain-") as tmp:
        store = FileObjectStore(Path(tmp) / "store")
        pairing = collect_pairs(store, write_dataset(store, count, args.image_size, grid=15))
        source = CachedPairSource(pairing.pairs, Path(tmp) / "cache", ImageLimits())
        start = time.perf_counter()
        prefetch(store, source, threads=4, on_progress=lambda d, t: None, should_stop=lambda: False)
        cache_s = time.perf_counter() - start
        variants: dict[str, Callable[[], Marks]] = {"bare": partial(bare_marks, base, steps)}
        for w in args.workers:
            cfg = base.model_copy(update={"num_workers": w})
            variants[f"pipeline_workers_{w}"] = partial(pipeline_marks, cfg, source)
        rounds = [
            {name: _intervals(fn()) for name, fn in variants.items()} for _ in range(args.rounds)
        ]
    setup = {
        "backbone": "yolov8n",
        "objective": "cls_distill",
        "device": "cpu",
        "batch_size": args.batch_size,
        "input_size": args.input_size,
        "images": count,
        "image_size": args.image_size,
        "image_format": "JPEG q90",
        "map_grid": 15,
        "resize_base": 512,
        "rounds": args.rounds,
        "steps_per_round": steps,
        "warmup_steps_excluded": WARMUP_STEPS,
        "cache_fill_s": round(cache_s, 3),
        "cache_fill_files": 2 * count,
    }
    return {"setup": setup} | _results(rounds, args.batch_size)


def _results(
    rounds: list[dict[str, tuple[list[float], list[float]]]], batch_size: int
) -> dict[str, Any]:
    names = list(rounds[0])
    pooled = {
        name: _summary(
            [x for r in rounds for x in r[name][0]],
            [x for r in rounds for x in r[name][1]],
            batch_size,
        )
        for name in names
    }
    # Per-round ratio of median step times, then the median over rounds (drift cancels).
    ratios = {
        name: round(
            statistics.median(
                statistics.median(r[name][0]) / statistics.median(r["bare"][0]) for r in rounds
            ),
            3,
        )
        for name in names
        if name != "bare"
    }
    cpu = {
        name: round(pooled[name]["median_step_cpu_s"] / pooled["bare"]["median_step_cpu_s"], 3)
        for name in names
        if name != "bare"
    }
    return {
        "timings": pooled,
        "overhead": {
            "pipeline_over_bare_step_time": ratios,
            "pipeline_over_bare_cpu_time_in_process": cpu,
        },
    }


def machine() -> dict[str, Any]:
    return provenance.machine() | {
        "torch": torch.__version__,
        "torch_threads": torch.get_num_threads(),
        "cuda": torch.cuda.is_available(),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=3, help="interleaved rounds of every variant")
    parser.add_argument("--batch-size", type=int, default=8)
    parser.add_argument("--input-size", type=int, default=224)
    parser.add_argument("--image-size", type=int, default=512, help="side of the synthetic JPEGs")
    parser.add_argument("--workers", type=int, nargs="+", default=[0, 2], help="DataLoader workers")
    parser.add_argument(
        "--out", type=Path, default=ROOT / "benchmarks" / "results" / "pretrain.json"
    )
    args = parser.parse_args()
    # ultralytics (imported when the backbone is built) must stay offline, quiet, out of $HOME.
    os.environ.setdefault("YOLO_OFFLINE", "1")
    os.environ.setdefault("YOLO_AUTOINSTALL", "False")
    os.environ.setdefault("YOLO_VERBOSE", "False")
    os.environ.setdefault("YOLO_CONFIG_DIR", tempfile.mkdtemp(prefix="yolo-config-"))
    load_before = os.getloadavg()
    start = time.perf_counter()
    results = run(args)
    report = {
        "benchmark": "pretrain: AGBP data pipeline vs bare forward/backward",
        "command": " ".join(["python -m benchmarks.pretrain", *sys.argv[1:]]),
        "machine": machine(),
        "loadavg_before": [round(x, 2) for x in load_before],
        "loadavg_after": [round(x, 2) for x in os.getloadavg()],
        "duration_s": round(time.perf_counter() - start, 1),
        **results,
        "notes": "Step intervals of the pipeline include loading the next batch and epoch ends "
        "(DataLoader restart, end-of-epoch checkpoint state); the bare loop reuses one batch. "
        "Ratios > 1 mean the pipeline is slower. CPU time counts this process only (not "
        "DataLoader worker processes). Shared machine: see loadavg.",
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(report, indent=1) + "\n")
    print(json.dumps(report, indent=1))


if __name__ == "__main__":
    main()
