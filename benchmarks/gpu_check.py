"""One-call GPU check: what a lent GPU machine gives in a few minutes, in one JSON.

Run by ``scripts/gpu-check.sh`` after ``scripts/setup.sh``; needs no network and installs
nothing. Each step is bounded, runs on its own, and records ``ok``, ``skipped`` (with why)
or ``failed`` (with the error), so one broken step never costs the others:

1. ``environment``: torch and CUDA, the device, ONNX Runtime's providers, ``nvidia-smi``;
2. ``tests``: the ``slow``-marked tests (real weights and/or GPU);
3. ``kead``: KeAD and WinCLIP maps/s against the bare encoder (``benchmarks.anomaly_map``),
   ViT-B-16-plus-240 with random weights, at fp32 and fp16;
4. ``agbp``: AGBP distillation steps/s for YOLOv8s and ResNet-50 at batch 64 with AMP,
   random batches already on the device (the training step alone);
5. ``detect``: YOLOv8s at 640, random weights: bare ONNX Runtime on CUDA (and TensorRT where
   installed) at batch 1 and 8, and ``/detect`` of ``agssp serve inference`` at concurrency 1
   and 16 (images/s, p50/p99 latency).

Not covered yet: a pipeline at a GPU preset to a served model (the integration tests run it on
CPU). ``--dry-run`` runs every step on the CPU with tiny models and counts (a check of the
code, numbers meaningless; the test suite runs it); the real run writes
``benchmarks/results/gpu-check-<device>.json`` and prints a one-screen summary.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import re
import shutil
import statistics
import subprocess
import sys
import tempfile
import threading
import time
import traceback
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import numpy as np
import torch

ROOT = Path(__file__).resolve().parents[1]
RESULTS = ROOT / "benchmarks" / "results"


@dataclass(frozen=True)
class Sizes:
    """What each step measures: the real check's sizes, or the dry run's."""

    device: str
    clip_model: str
    clip_config_dir: Path | None
    kead_images: int
    kead_side: int
    agbp_backbones: tuple[str, ...]
    agbp_batch: int
    agbp_size: int
    agbp_steps: int
    yolo: str
    imgsz: int
    bare_batches: tuple[int, ...]
    concurrency: tuple[int, ...]
    requests: int
    step_timeout_s: float


REAL = Sizes("cuda", "ViT-B-16-plus-240", None, 32, 640, ("yolov8s", "resnet50"), 64, 224,
             30, "yolov8s", 640, (1, 8), (1, 16), 256, 240.0)  # fmt: skip
DRY = Sizes("cpu", "tiny-vit", ROOT / "tests" / "fixtures", 2, 64, ("resnet18-test",), 2, 64,
            3, "yolov8n", 64, (1, 2), (1, 4), 8, 240.0)  # fmt: skip


def step_environment(sizes: Sizes, work: Path) -> dict[str, Any]:
    import onnxruntime as ort

    info: dict[str, Any] = {
        "torch": torch.__version__,
        "cuda_available": torch.cuda.is_available(),
        "ort": ort.__version__,
        "ort_providers": ort.get_available_providers(),
    }
    if torch.cuda.is_available():
        props = torch.cuda.get_device_properties(0)
        info |= {"device": props.name, "capability": f"{props.major}.{props.minor}",
                 "memory_gb": round(props.total_memory / 2**30, 1)}  # fmt: skip
    if shutil.which("nvidia-smi"):
        query = "name,driver_version,memory.total,utilization.gpu"
        answer = subprocess.run(
            ["nvidia-smi", f"--query-gpu={query}", "--format=csv,noheader"],
            capture_output=True, text=True, timeout=30, check=False,
        )  # fmt: skip
        info["nvidia_smi"] = answer.stdout.strip() or answer.stderr.strip()
    return info


def step_tests(sizes: Sizes, work: Path) -> dict[str, Any]:
    argv = [
        sys.executable,
        "-m",
        "pytest",
        "-q",
        "-m",
        "slow",
        "tests/slow",
        "-p",
        "no:cacheprovider",
    ]
    if sizes.device == "cpu":
        argv.append("--collect-only")  # the dry run checks they load, not that they pass
    done = subprocess.run(argv, cwd=ROOT, capture_output=True, text=True,
                          timeout=sizes.step_timeout_s, check=False)  # fmt: skip
    lines = [line for line in done.stdout.splitlines() if line.strip()]
    return {"exit_code": done.returncode, "summary": lines[-1] if lines else done.stderr[-300:]}


def step_kead(sizes: Sizes, work: Path) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for precision in ("fp32", "fp16") if sizes.device == "cuda" else ("fp32",):
        target = work / f"kead-{precision}.json"
        argv = [sys.executable, "-m", "benchmarks.anomaly_map", "--model", sizes.clip_model,
                "--device", sizes.device, "--precision", precision, "--images",
                str(sizes.kead_images), "--batch-size", str(min(8, sizes.kead_images)),
                "--image-side", str(sizes.kead_side), "--requests", str(sizes.kead_images),
                "--out", str(target)]  # fmt: skip
        if sizes.clip_config_dir is not None:
            argv += ["--model-config-dir", str(sizes.clip_config_dir)]
        _run(argv, sizes.step_timeout_s)
        report = json.loads(target.read_text())
        models = report["models"]
        out[precision] = {
            "kead_maps_per_s": models["kead"]["images_per_s"],
            "winclip_maps_per_s": models["winclip"]["images_per_s"],
            "bare_encoder_images_per_s": models["bare_encoder"]["images_per_s"],
            "winclip_over_kead_time": models["winclip_over_kead_time"],
            "service_images_per_s": report["service"]["service_http"]["images_per_s"],
        }
    return out


def agbp_steps_per_s(backbone: str, sizes: Sizes, device: torch.device) -> float:
    """Distillation steps/s of one AGBP objective on a random batch already on ``device``."""
    from services.pretrain.ml.agbp_config import required, resolve_config
    from services.pretrain.ml.model import build_objective
    from services.pretrain.ml.optim import build_optimizer
    from services.pretrain.params import AgbpConfig
    from shared.ml.backbones import create_backbone

    cfg = resolve_config(AgbpConfig(
        backbone=backbone, batch_size=sizes.agbp_batch, input_size=sizes.agbp_size,
        objective="distill", amp=device.type == "cuda",
    ))  # fmt: skip
    model = create_backbone(
        cfg.backbone, frozen_stages=required(cfg.frozen_stages, "frozen_stages"),
        out_indices=required(cfg.stages, "stages"), img_size=sizes.agbp_size,
    )  # fmt: skip
    objective = build_objective(cfg, model).to(device).train()
    optimizer = build_optimizer(objective, cfg)
    scaler = torch.amp.GradScaler(device.type, enabled=device.type == "cuda")
    n, side = sizes.agbp_batch, sizes.agbp_size
    batch = {
        "image": torch.randn(n, 3, side, side, device=device),
        "map": torch.rand(n, 1, side, side, device=device),
        "label": torch.randint(0, 2, (n,), device=device),
    }

    def step() -> None:
        with torch.autocast(device.type, enabled=device.type == "cuda"):
            loss = objective(batch)["loss"]
        optimizer.zero_grad(set_to_none=True)
        scaler.scale(loss).backward()
        scaler.step(optimizer)
        scaler.update()

    for _ in range(3):  # warm-up: kernels chosen, memory allocated
        step()
    _sync(device)
    started = time.perf_counter()
    for _ in range(sizes.agbp_steps):
        step()
    _sync(device)
    return sizes.agbp_steps / (time.perf_counter() - started)


def step_agbp(sizes: Sizes, work: Path) -> dict[str, Any]:
    device = torch.device(sizes.device)
    out: dict[str, Any] = {}
    for backbone in sizes.agbp_backbones:
        rate = agbp_steps_per_s(backbone, sizes, device)
        out[backbone] = {
            "steps_per_s": round(rate, 2),
            "images_per_s": round(rate * sizes.agbp_batch, 1),
        }
    out["batch"], out["input_size"], out["amp"] = (
        sizes.agbp_batch,
        sizes.agbp_size,
        device.type == "cuda",
    )
    return out


def step_detect(sizes: Sizes, work: Path) -> dict[str, Any]:
    import onnxruntime as ort

    from benchmarks.detect import Server
    from benchmarks.detect_core import export_yolo_onnx, time_ort_session

    onnx = export_yolo_onnx(sizes.yolo, work / "onnx", imgsz=sizes.imgsz)
    available = ort.get_available_providers()
    wanted = {"cuda": "CUDAExecutionProvider", "tensorrt": "TensorrtExecutionProvider"}
    if sizes.device == "cpu":
        wanted = {"cpu": "CPUExecutionProvider"}
    bare: dict[str, Any] = {}
    for name, provider in wanted.items():
        if provider not in available:
            bare[name] = f"skipped: {provider} not in onnxruntime's providers {available}"
            continue
        for batch in sizes.bare_batches:
            chain = [provider] + (
                ["CPUExecutionProvider"] if provider != "CPUExecutionProvider" else []
            )
            timing = time_ort_session(
                onnx, batch, imgsz=sizes.imgsz, iterations=10, providers=chain
            )
            bare[f"{name}_batch{batch}"] = {"images_per_s": round(timing.images_per_s, 1),
                                            "median_ms": round(timing.median_ms, 2)}  # fmt: skip
    server = Server(onnx, work, max_batch=8, delay_ms=2.0, device=sizes.device)
    try:
        server.wait_ready()
        image = _jpeg(sizes.imgsz)
        service = {f"concurrency_{c}": _load(server.url, image, c, sizes.requests)
                   for c in sizes.concurrency}  # fmt: skip
        service["resident"] = server.resident()
    finally:
        server.stop()
    return {"model": sizes.yolo, "imgsz": sizes.imgsz, "bare": bare, "service": service}


def _load(url: str, image: bytes, concurrency: int, requests: int) -> dict[str, Any]:
    """``requests`` POSTs of ``/detect`` from ``concurrency`` threads: rate and latency."""
    latencies: list[float] = []
    errors = [0]
    lock = threading.Lock()
    remaining = [requests]

    def worker() -> None:
        with httpx.Client(timeout=60) as client:
            while True:
                with lock:
                    if remaining[0] == 0:
                        return
                    remaining[0] -= 1
                started = time.perf_counter()
                answer = client.post(f"{url}/detect", content=image,
                                     headers={"content-type": "image/jpeg"})  # fmt: skip
                with lock:
                    latencies.append(1000 * (time.perf_counter() - started))
                    errors[0] += answer.status_code != 200

    started = time.perf_counter()
    threads = [threading.Thread(target=worker) for _ in range(concurrency)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    wall = time.perf_counter() - started
    cuts = statistics.quantiles(latencies, n=100) if len(latencies) > 1 else latencies * 99
    return {"images_per_s": round(len(latencies) / wall, 1), "p50_ms": round(cuts[49], 1),
            "p99_ms": round(cuts[98], 1), "errors": errors[0]}  # fmt: skip


def _jpeg(side: int) -> bytes:
    import cv2

    image = np.random.default_rng(0).integers(0, 255, (side, side, 3), dtype=np.uint8)
    ok, data = cv2.imencode(".jpg", image)
    assert ok
    return bytes(data)


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize()


def _run(argv: list[str], timeout_s: float) -> None:
    done = subprocess.run(argv, cwd=ROOT, capture_output=True, text=True, timeout=timeout_s,
                          check=False)  # fmt: skip
    if done.returncode != 0:
        raise RuntimeError(f"{' '.join(argv[2:4])} exited {done.returncode}: {done.stderr[-600:]}")


STEPS: dict[str, Callable[[Sizes, Path], dict[str, Any]]] = {
    "environment": step_environment,
    "tests": step_tests,
    "kead": step_kead,
    "agbp": step_agbp,
    "detect": step_detect,
}


def run(sizes: Sizes, only: list[str] | None = None) -> dict[str, Any]:
    """Every step (or ``only`` those), each recorded with its status and wall time."""
    steps: dict[str, Any] = {}
    with tempfile.TemporaryDirectory(prefix="gpu-check-") as tmp:
        for name, step in STEPS.items():
            if only and name not in only:
                continue
            if sizes.device == "cuda" and not torch.cuda.is_available() and name != "environment":
                steps[name] = {"status": "skipped", "why": "no CUDA device"}
                continue
            started = time.perf_counter()
            try:
                steps[name] = {"status": "ok", **step(sizes, Path(tmp))}
            except Exception as exc:  # one broken step must not cost the others
                steps[name] = {"status": "failed", "error": f"{type(exc).__name__}: {exc}",
                               "trace": traceback.format_exc()[-1500:]}  # fmt: skip
            steps[name]["wall_s"] = round(time.perf_counter() - started, 1)
            print(f"{name}: {steps[name]['status']} ({steps[name]['wall_s']} s)", flush=True)
    return steps


def summary(report: dict[str, Any]) -> list[str]:
    """The report in a few lines."""
    steps = report["steps"]
    lines = [f"gpu-check on {report['device']} ({'dry run' if report['dry_run'] else 'real'})"]
    for name, step in steps.items():
        if step["status"] != "ok":
            lines.append(f"  {name}: {step['status']} {step.get('why') or step.get('error', '')}")
    kead = steps.get("kead", {})
    for precision in ("fp32", "fp16"):
        if precision in kead:
            k = kead[precision]
            lines.append(f"  KeAD {precision}: {k['kead_maps_per_s']} maps/s, WinCLIP "
                         f"{k['winclip_maps_per_s']}, bare encoder {k['bare_encoder_images_per_s']}")  # fmt: skip
    for name, value in steps.get("agbp", {}).items():
        if isinstance(value, dict):
            lines.append(f"  AGBP {name}: {value['images_per_s']} images/s")
    detect = steps.get("detect", {})
    for name, value in {**detect.get("bare", {}), **detect.get("service", {})}.items():
        if isinstance(value, dict) and "images_per_s" in value:
            lines.append(f"  detect {name}: {value['images_per_s']} images/s")
    return lines


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--dry-run", action="store_true", help="CPU, tiny sizes: a code check")
    parser.add_argument("--only", nargs="+", choices=sorted(STEPS), default=None)
    parser.add_argument("--out", type=Path, default=None)
    args = parser.parse_args(argv)
    sizes = DRY if args.dry_run else REAL
    os.environ.setdefault("YOLO_OFFLINE", "1")
    os.environ.setdefault("YOLO_CONFIG_DIR", tempfile.mkdtemp(prefix="yolo-config-"))
    started, load = time.perf_counter(), os.getloadavg()
    device = torch.cuda.get_device_name(0) if torch.cuda.is_available() else platform.processor()
    report = {
        "benchmark": "gpu-check",
        "command": " ".join(["scripts/gpu-check.sh", *(argv or sys.argv[1:])]),
        "device": device or platform.machine(),
        "dry_run": args.dry_run,
        "load_average": list(load),
        "steps": run(sizes, args.only),
        "wall_s": round(time.perf_counter() - started, 1),
        "created_at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
    }
    slug = re.sub(r"[^a-z0-9]+", "-", str(report["device"]).lower()).strip("-") or "device"
    default = (
        ROOT / "var" / "gpu-check-dry-run.json"
        if args.dry_run
        else RESULTS / f"gpu-check-{slug}.json"
    )
    out = args.out or default
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(report, indent=1) + "\n")
    print("\n".join(summary(report)))
    print(f"wrote {out} in {report['wall_s']} s")


if __name__ == "__main__":
    main()
