"""Detection serving, every row in one interleaved run: the inference service (real uvicorn,
dynamic batching) with ONNX Runtime FP32, OpenVINO and ONNX Runtime INT8, each against its bare
runtime at batch 1 and at the service's effective batch, plus the FP32 service at batch 1;
YOLOv8n and YOLOv8s. Then FP32 vs INT8 mAP@0.5 on a NEU-DET validation split (a YOLOv8n
finetuned for it, cached under var/), and the latency of one tiled 4000x3000 frame.
Writes benchmarks/results/detect.json.

    python -m benchmarks.detect            # the full run (about 17 min on 2 quiet cores)
    python -m benchmarks.detect --quick    # every code path, small counts (a check, not numbers)

Serving rows use random-init weights exported to ONNX (speed does not depend on weight
values; no downloads). Every run is bounded by a request count and a time limit. The rows
run in interleaved rounds, because other people's jobs change this machine's speed minute
by minute.
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

from benchmarks.detect_accuracy import measure_int8_accuracy
from benchmarks.detect_core import export_yolo_onnx
from benchmarks.loadgen import LoadReport, combine, percentile, run_load, synthetic_image

ROOT = Path(__file__).resolve().parents[1]
RESULTS = ROOT / "benchmarks" / "results" / "detect.json"
IMGSZ = 640
AIMS = {"service_over_bare": 0.9, "fastest_over_baseline": 1.5, "int8_map50_drop_points": 1.0}
BASELINE_RPS = {"yolov8n": 10.17}  # issue 14: the FP32 service before this work, same machine
WARMUP_REQUESTS = 48  # three waves of 16 clients: enough to see the steady batch size
RUNTIMES = ("ort_fp32", "openvino", "ort_int8")
TILED_HW = (3000, 4000)


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


class Server:
    """``agssp serve inference`` on a loopback port, serving one local ONNX file."""

    def __init__(
        self,
        onnx: Path,
        home: Path,
        *,
        max_batch: int,
        delay_ms: float,
        device: str = "cpu",
        **extra: str,
    ) -> None:
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
            INFERENCE_DEVICE=device,
            **{f"INFERENCE_{k.upper()}": v for k, v in extra.items()},
        )
        argv = [sys.executable, "-m", "agssp.main", "serve", "inference"]
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

    def resident(self) -> dict[str, Any]:
        (model,) = httpx.get(f"{self.url}/v1/models", timeout=30).json()["resident"]
        return dict(model)

    def batch_sizes(self) -> dict[int, int]:
        return {int(k): int(v) for k, v in self.resident()["batch_sizes"].items()}

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
    """A runtime timed on a ready (B, 3, 640, 640) tensor: no HTTP, decode, letterbox or NMS.

    ONNX Runtime with the service's session options (full graph optimisation, default
    intra-op threads, CPU, its default spinning), or the service's own OpenVINO session.
    """

    def __init__(self, onnx: Path, runtime: str) -> None:
        if runtime == "openvino":
            from services.inference.ml.openvino_session import OpenVinoSession

            self._session: Any = OpenVinoSession(onnx, hint="throughput")
        else:
            import onnxruntime as ort

            options = ort.SessionOptions()
            options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
            options.log_severity_level = 3
            self._session = ort.InferenceSession(
                str(onnx), options, providers=["CPUExecutionProvider"]
            )
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
    reports: list[LoadReport], sizes: dict[int, int], resident: dict[str, Any]
) -> dict[str, Any]:
    batches = sum(sizes.values())
    return {
        **combine(reports).to_dict(),
        "rounds_rps": [r.throughput_rps for r in reports],
        "batch_sizes": sizes,
        "mean_batch_size": round(sum(k * v for k, v in sizes.items()) / max(batches, 1), 2),
        "queue_delay_ms_in_use": resident.get("queue_delay_ms"),
        "batch_gain_measured_at_load": resident.get("batch_gain"),
    }


def _servers(models: dict[str, Path], work: Path, args: argparse.Namespace) -> dict[str, Server]:
    delay, size = args.max_queue_delay_ms, args.max_batch_size
    return {
        "ort_fp32": Server(models["ort_fp32"], work, max_batch=size, delay_ms=delay),
        "openvino": Server(
            models["ort_fp32"], work, max_batch=size, delay_ms=delay, backend="openvino"
        ),
        "ort_int8": Server(models["ort_int8"], work, max_batch=size, delay_ms=delay),
        "ort_fp32_batch1": Server(models["ort_fp32"], work, max_batch=1, delay_ms=0.0),
    }


def measure_variant(
    models: dict[str, Path], work: Path, image: bytes, args: argparse.Namespace
) -> dict[str, Any]:
    """Every service and bare row of one model, interleaved round by round."""
    servers = _servers(models, work, args)
    try:
        for server in servers.values():
            server.wait_ready()
        load = {
            name: _round_runner(server, image, args.concurrency, args.duration_s / args.rounds)
            for name, server in servers.items()
        }
        for name in servers:  # warm-up, excluded; it also calibrates the effective batch
            load[name](args.warmup)
        effective = {r: _mean_batch(_diff(servers[r].batch_sizes(), {})) for r in RUNTIMES}
        bare = {
            r: BareSession(models["ort_int8" if r == "ort_int8" else "ort_fp32"], r)
            for r in RUNTIMES
        }
        before = {name: server.batch_sizes() for name, server in servers.items()}
        reports, bare_ms = _interleave(load, bare, effective, args)
        sizes = {name: _diff(s.batch_sizes(), before[name]) for name, s in servers.items()}
        resident = {name: s.resident() for name, s in servers.items()}
    finally:
        for server in servers.values():
            server.stop()
    rows: dict[str, Any] = {}
    for name in servers:
        rows[f"service_{name}"] = _service_summary(reports[name], sizes[name], resident[name])
    for runtime in RUNTIMES:
        rows[f"bare_{runtime}_effective_batch"] = _bare_summary(
            effective[runtime], bare_ms[f"{runtime}:b"]
        )
        rows[f"bare_{runtime}_batch1"] = _bare_summary(1, bare_ms[f"{runtime}:1"])
    return rows


def _mean_batch(sizes: dict[int, int]) -> int:
    return max(1, round(sum(k * v for k, v in sizes.items()) / max(sum(sizes.values()), 1)))


def _interleave(
    load: dict[str, Callable[[int], LoadReport]],
    bare: dict[str, BareSession],
    effective: dict[str, int],
    args: argparse.Namespace,
) -> tuple[dict[str, list[LoadReport]], dict[str, list[float]]]:
    """Every round runs each row once, the order reversed on odd rounds.

    The machine is shared, so its speed drifts from minute to minute; interleaving exposes
    every row to the same drift instead of giving each its own time window.
    """
    per_round = max(args.concurrency, args.requests // args.rounds)
    reports: dict[str, list[LoadReport]] = {name: [] for name in load}
    bare_ms: dict[str, list[float]] = {f"{r}:{b}": [] for r in bare for b in ("b", "1")}
    steps = [*load, *bare_ms]
    for index in range(args.rounds):
        for step in steps if index % 2 == 0 else steps[::-1]:
            if step in load:
                reports[step].append(load[step](per_round))
                continue
            runtime, kind = step.split(":")
            if kind == "b":
                bare_ms[step] += bare[runtime].run_ms(effective[runtime], per_round)
            else:
                bare_ms[step] += bare[runtime].run_ms(1, per_round // 2)
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


def _models(variant: str, work: Path, calibration: int) -> dict[str, Path]:
    """The FP32 export and its INT8 copy (calibrated on synthetic frames: speed rows only)."""
    from services.finetune.ml.yolov8.quantize import quantize_int8
    from services.inference.ml.letterbox import to_input_tensor

    fp32 = export_yolo_onnx(variant, work / "models", imgsz=IMGSZ, dynamic=True)
    rng = np.random.default_rng(0)
    frames = [rng.integers(0, 256, (IMGSZ, IMGSZ, 3), dtype=np.uint8) for _ in range(calibration)]
    batches = [to_input_tensor([frame]) for frame in frames]
    int8 = quantize_int8(fp32, fp32.with_name(f"{fp32.stem}-int8.onnx"), batches)
    return {"ort_fp32": fp32, "ort_int8": int8}


def _ratios(variant: str, rows: dict[str, Any]) -> dict[str, Any]:
    service_over_bare = {
        r: round(
            rows[f"service_{r}"]["throughput_rps"]
            / rows[f"bare_{r}_effective_batch"]["images_per_s"],
            3,
        )
        for r in RUNTIMES
    }
    fastest = max(RUNTIMES, key=lambda r: rows[f"service_{r}"]["throughput_rps"])
    fastest_rps = rows[f"service_{fastest}"]["throughput_rps"]
    baseline = BASELINE_RPS.get(variant)
    return {
        "service_over_bare": service_over_bare,
        "fastest_service": fastest,
        "fastest_service_rps": fastest_rps,
        "fastest_over_baseline": round(fastest_rps / baseline, 3) if baseline else None,
        "batched_over_batch1": round(
            rows["service_ort_fp32"]["throughput_rps"]
            / rows["service_ort_fp32_batch1"]["throughput_rps"],
            3,
        ),
    }


def run_variant(variant: str, work: Path, image: bytes, args: argparse.Namespace) -> dict[str, Any]:
    models = _models(variant, work, args.calibration)
    print(f"{variant}: exported {', '.join(p.name for p in models.values())}", flush=True)
    load_before = os.getloadavg()
    rows = measure_variant(models, work, image, args)
    ratios = _ratios(variant, rows)
    print(f"{variant}: {json.dumps(ratios)}", flush=True)
    aims = {
        f"service_over_bare.{r}": v >= AIMS["service_over_bare"]
        for r, v in ratios["service_over_bare"].items()
    }
    if ratios["fastest_over_baseline"] is not None:
        aims["fastest_over_baseline"] = (
            ratios["fastest_over_baseline"] >= AIMS["fastest_over_baseline"]
        )
    return {
        "variant": variant,
        "imgsz": IMGSZ,
        **rows,
        "ratios": ratios,
        "aims_met": aims,
        "loadavg_before": load_before,
        "loadavg_after": os.getloadavg(),
    }


def measure_tiled(work: Path, args: argparse.Namespace) -> dict[str, Any]:
    """Latency of ``/detect?tile=true`` on one 4000x3000 JPEG (YOLOv8n FP32, 640 px tiles)."""
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
    import onnxruntime

    info: dict[str, Any] = {
        "platform": platform.platform(),
        "python": platform.python_version(),
        "processor": platform.processor() or platform.machine(),
        "cpu_count": os.cpu_count(),
        "onnxruntime": onnxruntime.__version__,
        "onnxruntime_providers": onnxruntime.get_available_providers(),
    }
    for module in ("openvino", "torch"):
        try:
            info[module] = __import__(module).__version__
        except ImportError:
            info[module] = None
    return info


QUICK = {
    "variants": ["yolov8n"],
    "requests": 32,
    "rounds": 2,
    "warmup": 16,
    "calibration": 4,
    "tiled_requests": 1,
    "epochs": 1,
    "max_train": 48,
    "imgsz_map": 160,
}


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--variants", nargs="+", default=["yolov8n", "yolov8s"])
    parser.add_argument("--requests", type=int, default=128, help="per service row")
    parser.add_argument("--rounds", type=int, default=4, help="interleaved rounds")
    parser.add_argument("--warmup", type=int, default=WARMUP_REQUESTS)
    parser.add_argument("--duration-s", type=float, default=120.0, help="cap per row")
    parser.add_argument("--concurrency", type=int, default=16)
    parser.add_argument("--max-batch-size", type=int, default=8)
    parser.add_argument("--max-queue-delay-ms", type=float, default=5.0)
    parser.add_argument("--calibration", type=int, default=32, help="INT8 calibration images")
    parser.add_argument("--tiled-requests", type=int, default=3)
    parser.add_argument("--epochs", type=int, default=6, help="NEU-DET finetune for the mAP")
    parser.add_argument("--imgsz-map", type=int, default=224, help="NEU-DET images are 200 px")
    parser.add_argument("--max-train", type=int, default=None, help="NEU-DET train images")
    parser.add_argument("--skip-map", action="store_true", help="no NEU-DET mAP section")
    parser.add_argument("--quick", action="store_true", help="small counts: checks every path")
    parser.add_argument("--out", type=Path, default=RESULTS)
    args = parser.parse_args(argv)
    if args.quick:
        for key, value in QUICK.items():
            setattr(args, key, value)
    return args


def main(argv: list[str] | None = None) -> None:
    args = parse_args(argv)
    image = synthetic_image(IMGSZ, IMGSZ)  # square: the service's letterbox input is 640x640 too
    started, load_before = time.time(), os.getloadavg()
    with tempfile.TemporaryDirectory(prefix="bench-detect-") as tmp:
        results = [run_variant(v, Path(tmp), image, args) for v in args.variants]
        tiled = measure_tiled(Path(tmp), args)
    print(f"tiled: {json.dumps(tiled)}", flush=True)
    int8: dict[str, Any] = {"skipped": "--skip-map"}
    if not args.skip_map:
        int8 = measure_int8_accuracy(
            epochs=args.epochs,
            imgsz=args.imgsz_map,
            batch=16,
            calibration=max(args.calibration, 8),
            max_train=args.max_train,
        )
    print(f"int8: {json.dumps(int8)}", flush=True)
    if "map50_drop_points" in int8:
        int8["aim_met"] = int8["map50_drop_points"] <= AIMS["int8_map50_drop_points"]
    report = {
        "benchmark": "detect: service (ORT FP32, OpenVINO, ORT INT8) vs bare runtimes, "
        "INT8 accuracy, tiled large frame",
        "command": " ".join(
            ["python -m benchmarks.detect", *(sys.argv[1:] if argv is None else argv)]
        ),
        "quick": args.quick,
        "machine": machine(),
        "loadavg_before": load_before,
        "loadavg_after": os.getloadavg(),
        "wall_s": round(time.time() - started, 1),
        "setup": {
            "image": f"synthetic {IMGSZ}x{IMGSZ} JPEG q90 ({len(image)} bytes), one per request",
            "concurrency": args.concurrency,
            "requests_per_row": args.requests,
            "interleaved_rounds": args.rounds,
            "duration_cap_s": args.duration_s,
            "warmup_requests_excluded": args.warmup,
            "server": "agssp serve inference (uvicorn, one process) on 127.0.0.1, CPU, default "
            "intra-op threads, INFERENCE_MAX_BATCH_SIZE / MAX_QUEUE_DELAY_MS as given with the "
            "adaptive delay on; rows: ort_fp32, openvino (INFERENCE_BACKEND=openvino, "
            "throughput hint), ort_int8 (the INT8 export as a local model), ort_fp32_batch1; "
            "the 16 clients are threads in the benchmark process, so their HTTP work shares "
            "the cores with the server, a cost the bare rows do not carry",
            "bare": "the runtime on a ready float32 (B, 3, 640, 640) tensor in the benchmark "
            "process (no HTTP, decode, letterbox or NMS); B = that service's effective batch "
            "from the warm-up round, and 1",
            "method": "all rows interleaved round by round (order reversed on odd rounds) so "
            "they share the drift of a machine other people use at the same time",
        },
        "aims": AIMS,
        "baseline_rps": BASELINE_RPS,
        "results": results,
        "int8": int8,
        "tiled": tiled,
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(report, indent=1) + "\n")
    print(json.dumps({r["variant"]: r["ratios"] for r in results}, indent=1))
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
