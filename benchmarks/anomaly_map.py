"""KeAD vs WinCLIP on one encoder, and the HTTP service against the bare encoder forward.

Random weights (``allow_random_weights``): speed does not depend on weight values. Measures
images/s, with the runners interleaved item by item so they share the machine's load, and
the peak memory growth of one (warm-up) call (CUDA: ``max_memory_allocated``; CPU: RSS
sampled every 2 ms, with glibc's mmap threshold fixed so freed tensors leave the RSS) of (a) the stock open_clip image forward, (b) KeAD scoring, (c) WinCLIP scoring, all on
the same preprocessed batches, and (d) ``POST /v1/anomaly-maps`` through the real app
(TestClient, one image per request). Text features and memory banks are built before timing.
Writes ``benchmarks/results/anomaly_map.json``.

The bare arm is not a floor for KeAD: it runs the final block for every token, where KeAD
needs that block's main stream for the CLS token only (its patch tokens come from the V-V
stream), while KeAD adds a V-V attention and out_proj to every block after the first level.

    python -m benchmarks.anomaly_map [--images 4] [--batch-size 2] [--requests 4] [--device cuda]
"""

from __future__ import annotations

import argparse
import io
import json
import os
import platform
import sys
import tempfile
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from functools import partial
from pathlib import Path
from typing import Any, cast

import numpy as np
import psutil  # type: ignore[import-untyped]
import torch
from fastapi.testclient import TestClient
from PIL import Image

from services.anomaly_map.api.main import create_app
from services.anomaly_map.config import AnomalyMapSettings
from services.anomaly_map.ml.clip.prompts import CategoryDescription
from services.anomaly_map.runtime.clip import ScorerSet, load_scorers
from services.anomaly_map.runtime.engine import MapEngine
from services.anomaly_map.stores.categories import CategoryStore
from shared.config import CommonSettings, PathSettings
from shared.imaging.intake import image_limits
from shared.storage.base import ObjectStore
from shared.storage.filesystem import FileObjectStore

ROOT = Path(__file__).resolve().parents[1]
DESCRIPTION = CategoryDescription(
    name="magnetic_tile",
    object_phrase="magnetic tile surface",
    good=("{} with fine uniform grinding marks", "{} without any cracks"),
    defect=(
        "{} with blowhole defect, it appears as a small dark round hole",
        "{} with crack defect, it appears as a thin dark jagged line",
    ),
)


def _images(count: int, size: int, seed: int = 0) -> list[np.ndarray]:
    rng = np.random.default_rng(seed)
    ramp = np.linspace(40, 200, size, dtype=np.float32)[None, :, None]
    return [
        np.clip(ramp + rng.normal(0, 15, (size, size, 3)), 0, 255).astype(np.uint8)
        for _ in range(count)
    ]


def _jpeg(image: np.ndarray) -> bytes:
    buffer = io.BytesIO()
    Image.fromarray(image).save(buffer, "JPEG", quality=90)
    return buffer.getvalue()


class PeakMemory:
    """Peak memory growth of a block: CUDA allocator peak, or sampled process RSS on CPU."""

    def __init__(self, device: torch.device) -> None:
        self.device = device
        self.peak_mb = 0.0

    @contextmanager
    def measure(self) -> Iterator[None]:
        if self.device.type == "cuda":
            torch.cuda.synchronize()
            base = torch.cuda.memory_allocated()
            torch.cuda.reset_peak_memory_stats()
            yield
            torch.cuda.synchronize()
            self.peak_mb = (torch.cuda.max_memory_allocated() - base) / 2**20
            return
        process, stop = psutil.Process(), threading.Event()
        base = peak = process.memory_info().rss

        def sample() -> None:
            nonlocal peak
            while not stop.wait(0.002):
                peak = max(peak, process.memory_info().rss)

        thread = threading.Thread(target=sample, daemon=True)
        thread.start()
        try:
            yield
        finally:
            stop.set()
            thread.join()
            peak = max(peak, process.memory_info().rss)
            self.peak_mb = (peak - base) / 2**20


def _encoder(scorers: ScorerSet) -> Callable[[Any], object]:
    """The stock open_clip image forward, under inference mode."""
    encode = cast(Callable[[Any], object], scorers.bundle.model.encode_image)
    inference: Callable[[Any], object] = torch.inference_mode()(encode)
    return inference


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize()


def _interleaved(
    runners: dict[str, Callable[[Any], object]],
    items: list[Any],
    device: torch.device,
    repeats: int,
) -> dict[str, float]:
    """Seconds per runner; every item goes through each runner in turn, so all runners see
    the same machine load (the shared CI machine's load changes from minute to minute)."""
    totals = dict.fromkeys(runners, 0.0)
    for _ in range(repeats):
        for item in items:
            for name, run in runners.items():
                _sync(device)
                start = time.perf_counter()
                run(item)
                _sync(device)
                totals[name] += time.perf_counter() - start
    return totals


def _peak_mb(run: Callable[[], object], device: torch.device) -> float:
    memory = PeakMemory(device)
    with memory.measure():
        run()
    return round(memory.peak_mb, 1)


def _report(
    totals: dict[str, float], images: int, peaks: dict[str, float]
) -> dict[str, dict[str, Any]]:
    report = {}
    for name, seconds in totals.items():
        report[name] = {
            "images": images,
            "seconds": round(seconds, 3),
            "images_per_s": round(images / seconds, 3),
            "peak_memory_mb": peaks[name],
        }
        print(f"{name:22s} {images / seconds:8.3f} images/s  peak +{peaks[name]:8.1f} MiB")
    return report


def bench_models(scorers: ScorerSet, args: argparse.Namespace) -> dict[str, Any]:
    """Bare encoder, KeAD and WinCLIP on the same batches (text and banks built first)."""
    device = scorers.bundle.device
    images = _images(args.images, args.image_side)
    batches = [
        scorers["kead"].preprocess(images[i : i + args.batch_size])
        for i in range(0, len(images), args.batch_size)
    ]
    refs = scorers["kead"].preprocess(_images(args.refs, args.image_side, seed=1))
    runners: dict[str, Callable[[Any], object]] = {"bare_encoder": _encoder(scorers)}
    for mode, scorer in (("kead", scorers["kead"]), ("winclip", scorers["winclip"])):
        text, bank = scorer.text_features(DESCRIPTION), scorer.build_memory_bank(refs)
        runners[mode] = partial(scorer.score, text=text, bank=bank)
    # First call of each: warm-up, and the peak memory of one batch.
    peaks = {name: _peak_mb(partial(run, batches[0]), device) for name, run in runners.items()}
    totals = _interleaved(runners, batches, device, args.repeats)
    results: dict[str, Any] = _report(totals, len(images) * args.repeats, peaks)
    results["winclip_over_kead_time"] = round(totals["winclip"] / totals["kead"], 3)
    results["kead_over_bare_time"] = round(totals["kead"] / totals["bare_encoder"], 3)
    return results


def _settings(scorers: ScorerSet, tmp: Path) -> AnomalyMapSettings:
    return AnomalyMapSettings(
        common=CommonSettings(paths=PathSettings(home=tmp / "home")),
        clip_model=scorers.bundle.model_name,
        allow_random_weights=True,
    )


def _create_category(client: TestClient, args: argparse.Namespace) -> None:
    refs = [
        ("references", (f"r{i}.jpg", _jpeg(image), "image/jpeg"))
        for i, image in enumerate(_images(args.refs, args.image_side, seed=1))
    ]
    spec = {
        "map": DESCRIPTION.object_phrase,
        "good": DESCRIPTION.good,
        "defect": DESCRIPTION.defect,
    }
    created = client.put("/v1/categories/bench", data={"spec": json.dumps(spec)}, files=refs)
    assert created.status_code == 201, created.text


def bench_service(scorers: ScorerSet, args: argparse.Namespace, tmp: Path) -> dict[str, Any]:
    """``POST /v1/anomaly-maps`` through the real app (TestClient; multipart JPEG in, JSON out)
    against the bare encoder and KeAD on the same images, all one image at a time."""
    device = scorers.bundle.device
    images = _images(args.requests, args.image_side, seed=2)
    items = [(_jpeg(image), scorers["kead"].preprocess([image])) for image in images]
    text = scorers["kead"].text_features(DESCRIPTION)
    bank = scorers["kead"].build_memory_bank(
        scorers["kead"].preprocess(_images(args.refs, args.image_side, 1))
    )

    def engine(s: AnomalyMapSettings, store: ObjectStore) -> MapEngine:
        return MapEngine(scorers, CategoryStore(store), limits=image_limits(s))

    app = create_app(
        _settings(scorers, tmp), store=FileObjectStore(tmp / "store"), load_engine=engine
    )
    with TestClient(app) as client:
        _create_category(client, args)

        def post(item: tuple[bytes, Any]) -> None:
            response = client.post(
                "/v1/anomaly-maps",
                files={"image": ("x.jpg", item[0], "image/jpeg")},
                data={"category": "bench"},
            )
            assert response.status_code == 200, response.text

        encode = _encoder(scorers)
        runners: dict[str, Callable[[Any], object]] = {
            "service_http": post,
            "bare_encoder_batch1": lambda item: encode(item[1]),
            "kead_batch1": lambda item: scorers["kead"].score(item[1], text, bank),
        }
        post(items[0])  # text features and the bank of the stored category, outside timing
        peaks = {name: _peak_mb(partial(run, items[0]), device) for name, run in runners.items()}
        totals = _interleaved(runners, items, device, 1)
    results: dict[str, Any] = _report(totals, len(items), peaks)
    results["service_over_bare_encoder_time"] = round(
        totals["service_http"] / totals["bare_encoder_batch1"], 3
    )
    results["service_over_kead_batch1_time"] = round(
        totals["service_http"] / totals["kead_batch1"], 3
    )
    return results


def _machine(device: torch.device) -> dict[str, Any]:
    machine = {
        "platform": platform.platform(),
        "python": platform.python_version(),
        "cpu_count": os.cpu_count(),
        "torch": torch.__version__,
        "torch_threads": torch.get_num_threads(),
        "device": str(device),
    }
    if device.type == "cuda":
        machine["gpu"] = torch.cuda.get_device_name(device)
    return machine


def _reexec_with_fixed_mmap_threshold(argv: list[str]) -> None:
    """Restart once with glibc's mmap threshold fixed, so freed tensors leave the RSS.

    Without it glibc raises the threshold after the first large free and keeps later
    allocations in the heap: peak RSS growth would read ~0 after a warm-up.
    """
    if os.environ.get("MALLOC_MMAP_THRESHOLD_") or platform.system() != "Linux":
        return
    env = dict(os.environ, MALLOC_MMAP_THRESHOLD_="65536")
    os.execve(sys.executable, [sys.executable, "-m", "benchmarks.anomaly_map", *argv], env)


def main(argv: list[str] | None = None) -> None:
    _reexec_with_fixed_mmap_threshold(sys.argv[1:] if argv is None else argv)
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="ViT-B-16-plus-240")
    parser.add_argument("--model-config-dir", type=Path, default=None)
    parser.add_argument("--device", default="auto")
    parser.add_argument("--precision", default="fp32", choices=["fp32", "fp16"], help="fp16: CUDA")
    parser.add_argument("--images", type=int, default=4)
    parser.add_argument("--batch-size", type=int, default=2)
    parser.add_argument("--refs", type=int, default=2)
    parser.add_argument("--image-side", type=int, default=320)
    parser.add_argument("--repeats", type=int, default=1)
    parser.add_argument("--requests", type=int, default=4)
    parser.add_argument("--threads", type=int, default=0, help="torch threads; 0 = default")
    parser.add_argument(
        "--out", type=Path, default=ROOT / "benchmarks" / "results" / "anomaly_map.json"
    )
    args = parser.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    settings = AnomalyMapSettings(
        clip_model=args.model,
        allow_random_weights=True,
        device=args.device,
        precision=args.precision,
        extra_model_config_dir=args.model_config_dir,
    )
    started, loadavg_start = time.perf_counter(), os.getloadavg()
    scorers = load_scorers(settings)
    print(f"{args.model} on {scorers.bundle.device}, grid {scorers.bundle.grid_size}", flush=True)
    with tempfile.TemporaryDirectory(prefix="bench-anomaly-map-") as tmp:
        report: dict[str, Any] = {
            "command": " ".join(["python -m benchmarks.anomaly_map", *(argv or sys.argv[1:])]),
            "machine": _machine(scorers.bundle.device),
            "config": {k: str(v) if isinstance(v, Path) else v for k, v in vars(args).items()},
            "note": "random weights; speed does not depend on weight values",
            "models": bench_models(scorers, args),
            "service": bench_service(scorers, args, Path(tmp)),
        }
    report["wall_s"] = round(time.perf_counter() - started, 1)
    report["loadavg_start"] = [round(x, 2) for x in loadavg_start]
    report["loadavg_end"] = [round(x, 2) for x in os.getloadavg()]
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(report, indent=1) + "\n")
    print(f"wrote {args.out} in {report['wall_s']} s")


if __name__ == "__main__":
    main()
