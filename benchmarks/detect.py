"""Detection serving: the inference service (real uvicorn, dynamic batching) against a bare
ONNX Runtime session at the service's effective batch size, and against the same service with
INFERENCE_MAX_BATCH_SIZE=1 (one request per predict call). Writes benchmarks/results/detect.json.

    python -m benchmarks.detect [--variants yolov8n yolov8s] [--requests 192] [--rounds 4]

Random-init weights exported to ONNX (speed does not depend on weight values; no downloads).
Every run is bounded by a request count and a time limit. The configurations run in
interleaved rounds, because other people's jobs change this machine's speed minute by minute.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import httpx
import numpy as np

from benchmarks.detect_core import export_yolo_onnx
from shared.cli.bench import LoadReport, combine, percentile, run_load, synthetic_image

ROOT = Path(__file__).resolve().parents[1]
RESULTS = ROOT / "benchmarks" / "results" / "detect.json"
IMGSZ = 640
AIMS = {"service_over_bare_ort": 0.9, "batched_over_batch1": 1.5}
WARMUP_REQUESTS = 48  # three waves of 16 clients: enough to see the steady batch size


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


class Server:
    """``agssp serve inference`` on a loopback port, serving one local ONNX file."""

    def __init__(self, onnx: Path, home: Path, *, max_batch: int, delay_ms: float) -> None:
        self.port = _free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        env = {k: v for k, v in os.environ.items() if not k.startswith(("S3_", "REDIS_", "AUTH_"))}
        env.update(
            AGSSP_HOME=str(home),
            STORAGE_BACKEND="file",
            LOG_LEVEL="WARNING",
            INFERENCE_LOCAL_MODEL_PATH=str(onnx),
            INFERENCE_MAX_BATCH_SIZE=str(max_batch),
            INFERENCE_MAX_QUEUE_DELAY_MS=str(delay_ms),
            INFERENCE_MAX_QUEUE="512",
            INFERENCE_DEVICE="cpu",
        )
        argv = [sys.executable, "-m", "shared.cli.main", "serve", "inference"]
        self.log = (home / f"serve-{self.port}.log").open("wb")
        self.proc = subprocess.Popen(
            [*argv, "--port", str(self.port)],
            env=env,
            cwd=ROOT,
            stdout=self.log,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )

    def wait_ready(self, timeout_s: float = 180.0) -> None:
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"the server exited; see {self.log.name}")
            try:
                if httpx.get(f"{self.url}/readyz", timeout=5).status_code == 200:
                    return
            except httpx.HTTPError:
                pass
            time.sleep(0.5)
        raise RuntimeError(f"the server was not ready after {timeout_s} s; see {self.log.name}")

    def batch_sizes(self) -> dict[int, int]:
        (model,) = httpx.get(f"{self.url}/v1/models", timeout=30).json()["resident"]
        return {int(k): int(v) for k, v in model["batch_sizes"].items()}

    def stop(self) -> None:
        if self.proc.poll() is None:
            os.killpg(self.proc.pid, signal.SIGTERM)
            try:
                self.proc.wait(timeout=30)
            except subprocess.TimeoutExpired:
                os.killpg(self.proc.pid, signal.SIGKILL)
                self.proc.wait(timeout=30)
        self.log.close()


def _diff(after: dict[int, int], before: dict[int, int]) -> dict[int, int]:
    return {k: v - before.get(k, 0) for k, v in sorted(after.items()) if v - before.get(k, 0)}


class BareSession:
    """A persistent ORT session timed on a ready (B, 3, 640, 640) tensor: no HTTP, no decode,
    letterbox or NMS. Same options as the service's detector: full graph optimisation,
    ONNX Runtime's default intra-op threads, CPU."""

    def __init__(self, onnx: Path) -> None:
        import onnxruntime as ort

        options = ort.SessionOptions()
        options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
        options.log_severity_level = 3
        self._session = ort.InferenceSession(str(onnx), options, providers=["CPUExecutionProvider"])
        self._input = self._session.get_inputs()[0].name
        self._rng = np.random.default_rng(0)

    def run_ms(self, batch: int, images: int) -> list[float]:
        """Milliseconds of ``max(1, images // batch)`` runs at ``batch`` (one warm-up run first)."""
        feed = {self._input: self._rng.random((batch, 3, IMGSZ, IMGSZ), dtype=np.float32)}
        self._session.run(None, feed)
        samples = []
        for _ in range(max(1, images // batch)):
            start = time.perf_counter()
            self._session.run(None, feed)
            samples.append((time.perf_counter() - start) * 1000.0)
        return samples


def _bare_summary(batch: int, samples: list[float]) -> dict[str, Any]:
    ordered = sorted(samples)
    return {
        "batch_size": batch,
        "runs": len(samples),
        "images_per_s": round(1000.0 * batch * len(samples) / sum(samples), 3),
        "median_ms": round(statistics.median(samples), 1),
        "p90_ms": round(percentile(ordered, 90), 1),
    }


def _service_summary(
    reports: list[LoadReport], sizes: dict[int, int], max_batch: int, delay: float
) -> dict[str, Any]:
    batches = sum(sizes.values())
    return {
        "max_batch_size": max_batch,
        "max_queue_delay_ms": delay,
        **combine(reports).to_dict(),
        "rounds_rps": [r.throughput_rps for r in reports],
        "batch_sizes": sizes,
        "mean_batch_size": round(sum(k * v for k, v in sizes.items()) / max(batches, 1), 2),
    }


def measure_variant(
    onnx: Path, work: Path, image: bytes, args: argparse.Namespace
) -> dict[str, Any]:
    """Service (batched), service (batch 1) and bare ORT (effective batch and 1), interleaved."""
    delay = args.max_queue_delay_ms
    servers = {
        "batched": Server(onnx, work, max_batch=args.max_batch_size, delay_ms=delay),
        "batch1": Server(onnx, work, max_batch=1, delay_ms=0.0),
    }
    try:
        for server in servers.values():
            server.wait_ready()
        load = {
            name: _round_runner(server, image, args.concurrency, args.duration_s / args.rounds)
            for name, server in servers.items()
        }
        for name in servers:  # warm-up, excluded; it also calibrates the effective batch
            load[name](WARMUP_REQUESTS)
        calibration = _diff(servers["batched"].batch_sizes(), {})
        effective = round(sum(k * v for k, v in calibration.items()) / sum(calibration.values()))
        before = {name: server.batch_sizes() for name, server in servers.items()}
        reports, bare_ms = _interleave(load, BareSession(onnx), max(1, effective), args)
        sizes = {name: _diff(s.batch_sizes(), before[name]) for name, s in servers.items()}
    finally:
        for server in servers.values():
            server.stop()
    return {
        "service_batched": _service_summary(
            reports["batched"], sizes["batched"], args.max_batch_size, delay
        ),
        "service_batch1": _service_summary(reports["batch1"], sizes["batch1"], 1, 0.0),
        "bare_ort_effective_batch": _bare_summary(max(1, effective), bare_ms["bare_b"]),
        "bare_ort_batch1": _bare_summary(1, bare_ms["bare_1"]),
    }


def _interleave(
    load: dict[str, Callable[[int], LoadReport]],
    bare: BareSession,
    effective: int,
    args: argparse.Namespace,
) -> tuple[dict[str, list[LoadReport]], dict[str, list[float]]]:
    """Every round runs each configuration once, the order reversed on odd rounds.

    The machine is shared, so its speed drifts from minute to minute; interleaving exposes
    every configuration to the same drift instead of giving each its own time window.
    """
    per_round = max(args.concurrency, args.requests // args.rounds)
    reports: dict[str, list[LoadReport]] = {name: [] for name in load}
    bare_ms: dict[str, list[float]] = {"bare_b": [], "bare_1": []}
    steps = [*load, *bare_ms]
    for index in range(args.rounds):
        for step in steps if index % 2 == 0 else steps[::-1]:
            if step in load:
                reports[step].append(load[step](per_round))
            elif step == "bare_b":
                bare_ms[step] += bare.run_ms(effective, per_round)
            else:
                bare_ms[step] += bare.run_ms(1, per_round // 2)
        print(f"  round {index + 1}/{args.rounds} done", flush=True)
    return reports, bare_ms


def _round_runner(
    server: Server, image: bytes, concurrency: int, cap_s: float
) -> Callable[[int], LoadReport]:
    url = f"{server.url}/v1/detect"

    def run(requests: int) -> LoadReport:
        return run_load(
            url,
            image,
            "image/jpeg",
            concurrency=concurrency,
            max_requests=requests,
            duration_s=cap_s,
        )

    return run


def run_variant(variant: str, work: Path, image: bytes, args: argparse.Namespace) -> dict[str, Any]:
    onnx = export_yolo_onnx(variant, work / "models", imgsz=IMGSZ, dynamic=True)
    print(f"{variant}: exported {onnx.name}", flush=True)
    load_before = os.getloadavg()
    measured = measure_variant(onnx, work, image, args)
    batched, single = measured["service_batched"], measured["service_batch1"]
    bare, bare_1 = measured["bare_ort_effective_batch"], measured["bare_ort_batch1"]
    ratios = {
        "service_over_bare_ort": round(batched["throughput_rps"] / bare["images_per_s"], 3),
        "batched_over_batch1": round(batched["throughput_rps"] / single["throughput_rps"], 3),
        "bare_ort_batched_over_batch1": round(bare["images_per_s"] / bare_1["images_per_s"], 3),
    }
    print(f"{variant}: {json.dumps(ratios)}", flush=True)
    return {
        "variant": variant,
        "imgsz": IMGSZ,
        **measured,
        "ratios": ratios,
        "aims_met": {k: ratios[k] >= aim for k, aim in AIMS.items()},
        "loadavg_before": load_before,
        "loadavg_after": os.getloadavg(),
    }


def machine() -> dict[str, Any]:
    import onnxruntime

    info: dict[str, Any] = {
        "platform": platform.platform(),
        "python": platform.python_version(),
        "processor": platform.processor() or platform.machine(),
        "cpu_count": os.cpu_count(),
        "onnxruntime": onnxruntime.__version__,
        "onnxruntime_providers": onnxruntime.get_available_providers(),
    }
    try:
        import torch

        info["torch"] = torch.__version__
    except ImportError:
        info["torch"] = None
    return info


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--variants", nargs="+", default=["yolov8n", "yolov8s"])
    parser.add_argument("--requests", type=int, default=192, help="per service configuration")
    parser.add_argument("--rounds", type=int, default=4, help="interleaved rounds")
    parser.add_argument("--duration-s", type=float, default=120.0, help="cap per configuration")
    parser.add_argument("--concurrency", type=int, default=16)
    parser.add_argument("--max-batch-size", type=int, default=8)
    parser.add_argument("--max-queue-delay-ms", type=float, default=5.0)
    parser.add_argument("--out", type=Path, default=RESULTS)
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> None:
    args = parse_args(argv)
    image = synthetic_image(IMGSZ, IMGSZ)  # square: the service's letterbox input is 640x640 too
    started, load_before = time.time(), os.getloadavg()
    with tempfile.TemporaryDirectory(prefix="bench-detect-") as tmp:
        results = [run_variant(v, Path(tmp), image, args) for v in args.variants]
    report = {
        "benchmark": "detect: service with dynamic batching vs bare ONNX Runtime vs batch 1",
        "command": " ".join(
            ["python -m benchmarks.detect", *(sys.argv[1:] if argv is None else argv)]
        ),
        "machine": machine(),
        "loadavg_before": load_before,
        "loadavg_after": os.getloadavg(),
        "wall_s": round(time.time() - started, 1),
        "setup": {
            "image": f"synthetic {IMGSZ}x{IMGSZ} JPEG q90 ({len(image)} bytes), one per request",
            "concurrency": args.concurrency,
            "requests_per_configuration": args.requests,
            "interleaved_rounds": args.rounds,
            "duration_cap_s": args.duration_s,
            "warmup_requests_excluded": WARMUP_REQUESTS,
            "server": "agssp serve inference (uvicorn, one process) on 127.0.0.1, ONNX Runtime "
            "CPU, default intra-op threads; clients are threads in the benchmark process",
            "bare_ort": "session.run on a ready float32 (B, 3, 640, 640) tensor in the benchmark "
            "process (no HTTP, decode, letterbox or NMS), same session options as the service; "
            "B = the service's effective batch from the warm-up round; as many images per round "
            "as requests (half that at batch 1)",
            "method": "configurations interleaved round by round (order reversed on odd rounds) "
            "so they share the drift of a machine other people use at the same time",
        },
        "aims": AIMS,
        "results": results,
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(report, indent=1) + "\n")
    print(json.dumps({r["variant"]: r["ratios"] for r in results}, indent=1))
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
