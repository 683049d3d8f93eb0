"""Building blocks for detection benchmarks: offline YOLOv8 ONNX exports and bare ORT timings.

Importing this module is cheap; ultralytics and onnxruntime load inside the functions.
"""

from __future__ import annotations

import os
import statistics
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from benchmarks import provenance


@dataclass(frozen=True)
class OrtTiming:
    """Wall-clock timings of ``session.run`` at one batch size (milliseconds)."""

    batch_size: int
    imgsz: int
    intra_op_threads: int | None
    median_ms: float
    p90_ms: float
    per_image_ms: float
    images_per_s: float


def _offline_ultralytics() -> None:
    # No network: no weight/font downloads, no pip auto-install (field-notes §0.4, §B2).
    os.environ.setdefault("YOLO_OFFLINE", "1")
    os.environ.setdefault("YOLO_AUTOINSTALL", "False")
    os.environ.setdefault("YOLO_VERBOSE", "False")
    os.environ.setdefault("YOLO_CONFIG_DIR", tempfile.mkdtemp(prefix="yolo-config-"))


def export_yolo_onnx(
    variant: str,
    out_dir: Path,
    *,
    imgsz: int = 640,
    dynamic: bool = True,
    seed: int = 0,
) -> Path:
    """Build a random-init YOLOv8 from ultralytics' YAML and export it to ONNX.

    Random weights time the same as trained ones (same graph, same shapes), so no download
    is needed. ``simplify`` is off because onnxslim is not installed.

    Args:
        variant: ``yolov8n``, ``yolov8s``, ... (any ultralytics model YAML stem).
        out_dir: Folder that receives ``<variant>-<imgsz>-<dynamic|static>.onnx``.
        imgsz: Export input side.
        dynamic: Dynamic batch/height/width axes (else batch 1, fixed size).
        seed: torch seed for the random weights.

    Returns:
        Path of the ONNX file.
    """
    _offline_ultralytics()
    import torch
    from ultralytics.models.yolo.model import YOLO

    torch.manual_seed(seed)
    out_dir.mkdir(parents=True, exist_ok=True)
    stem = f"{variant}-{imgsz}-{'dynamic' if dynamic else 'static'}"
    model: Any = YOLO(f"{variant}.yaml")
    # The exporter writes next to ``pt_path`` (else into the working directory).
    model.model.pt_path = str(out_dir / f"{stem}.pt")
    return Path(model.export(format="onnx", imgsz=imgsz, dynamic=dynamic, simplify=False))


def time_ort_session(
    onnx_path: Path,
    batch_size: int,
    *,
    imgsz: int = 640,
    iterations: int = 20,
    warmup: int = 3,
    intra_op_threads: int | None = None,
    providers: list[str] | None = None,
) -> OrtTiming:
    """Time a bare ONNX Runtime session (no pre/post-processing) at one batch size.

    Args:
        onnx_path: A dynamic-batch export (a fixed-batch one only supports its own size).
        batch_size: B of the (B, 3, imgsz, imgsz) random input.
        imgsz: Input side.
        iterations: Timed runs.
        warmup: Untimed runs first (arena allocation, kernel selection).
        intra_op_threads: ORT intra-op threads; ``None`` keeps ORT's default.
        providers: ORT providers; default CPU only.

    Returns:
        Median and p90 per batch, plus per-image cost and throughput at the median.
    """
    import onnxruntime as ort

    options = ort.SessionOptions()
    if intra_op_threads is not None:
        options.intra_op_num_threads = intra_op_threads
    session = ort.InferenceSession(
        str(onnx_path), options, providers=providers or ["CPUExecutionProvider"]
    )
    batch = np.random.default_rng(0).random((batch_size, 3, imgsz, imgsz), dtype=np.float32)
    samples = _time_runs(session, {session.get_inputs()[0].name: batch}, iterations, warmup)
    median = statistics.median(samples)
    p90 = statistics.quantiles(samples, n=10)[-1] if len(samples) > 1 else median
    return OrtTiming(
        batch_size=batch_size,
        imgsz=imgsz,
        intra_op_threads=intra_op_threads,
        median_ms=median,
        p90_ms=p90,
        per_image_ms=median / batch_size,
        images_per_s=1000.0 * batch_size / median,
    )


def _time_runs(session: Any, feed: dict[str, Any], iterations: int, warmup: int) -> list[float]:
    for _ in range(warmup):
        session.run(None, feed)
    samples = []
    for _ in range(iterations):
        start = time.perf_counter()
        session.run(None, feed)
        samples.append((time.perf_counter() - start) * 1000.0)
    return samples


TILED_HW = (3000, 4000)


def measure_tiled(work: Path, args: Any) -> dict[str, Any]:
    """Latency of ``/detect?tile=true`` on one 4000x3000 JPEG (YOLOv8n FP32, 640 px tiles).

    ``args`` carries ``max_batch_size``, ``max_queue_delay_ms`` and ``tiled_requests``.
    """
    import httpx

    from benchmarks.detect_server import IMGSZ, Server
    from benchmarks.loadgen import synthetic_image

    onnx = export_yolo_onnx("yolov8n", work / "models", imgsz=IMGSZ, dynamic=True)
    frame = synthetic_image(TILED_HW[1], TILED_HW[0], seed=3)
    server = Server(onnx, work, max_batch=args.max_batch_size, delay_ms=args.max_queue_delay_ms)
    try:
        server.wait_ready()
        samples, tiles = [], 0
        with httpx.Client(timeout=300) as client:
            for index in range(args.tiled_requests + 1):
                started = time.perf_counter()
                response = client.post(
                    f"{server.url}/v1/detect",
                    params={"tile": "true"},
                    content=frame,
                    headers={"content-type": "image/jpeg"},
                )
                response.raise_for_status()
                if index:  # the first one warms up
                    samples.append((time.perf_counter() - started) * 1000.0)
                tiles = int(response.json()["tiles"])
    finally:
        server.stop()
    return {
        "frame": f"{TILED_HW[1]}x{TILED_HW[0]} JPEG ({len(frame)} bytes)",
        "model": "yolov8n FP32, ONNX Runtime",
        "tiles": tiles,
        "tile_overlap": 0.2,
        "requests": len(samples),
        "median_ms": round(statistics.median(samples), 1),
        "max_ms": round(max(samples), 1),
        "ms_per_tile": round(statistics.median(samples) / max(tiles, 1), 1),
    }


def machine() -> dict[str, Any]:
    """Platform, CPU and the versions of the runtimes compared."""
    import onnxruntime

    info: dict[str, Any] = provenance.machine() | {
        "onnxruntime": onnxruntime.__version__,
        "onnxruntime_providers": onnxruntime.get_available_providers(),
    }
    for module in ("openvino", "torch"):
        try:
            info[module] = __import__(module).__version__
        except ImportError:
            info[module] = None
    return info
