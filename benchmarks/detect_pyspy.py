"""Where the ``/detect`` service spends its time under load: py-spy on the real server.

    python -m benchmarks.detect_pyspy                       # concurrency 4 and 16, 30 s each
    python -m benchmarks.detect_pyspy --tree var/base-tree --label before   # an older commit
    python -m benchmarks.detect_pyspy --concurrency 4 --duration-s 10 --out /tmp/p.json

Starts ``agssp serve inference`` as ``benchmarks.detect`` does (a random-init YOLOv8n exported
to ONNX, 640 px synthetic JPEGs, max batch 8, 5 ms delay, adaptive delay on) and warms it up.
Per concurrency, one ``wrk`` window without the profiler reads the service's own metrics: the
share of the time its model thread was in a batch call, and how fast those calls ran
(throughput = the two multiplied). Then a window under ``py-spy record --idle --nonblocking``
samples every Python thread while ``/proc`` gives each thread's CPU time;
``benchmarks.pyspy_shares`` turns that into shares: ORT forward, decode, letterbox and tensor,
NMS and box mapping, JSON and pydantic, the event loop (uvicorn, starlette), the hand-off
between threads (executors, queues, futures), idle, and the rest of the machine. Last, the
bare runtime alone at batch 1, 2, 3, 4 and 8 (the batch it prefers, beside the ones the service
formed). Writes ``benchmarks/results/detect_profile_service.json``, one entry per ``--label``
(runs of other labels in the file are kept: before/after from two checkouts).

py-spy samples without pausing the server (``--nonblocking``: ``--native`` pauses it on
every sample and cut its throughput by three quarters on 2 cores), so the stacks are
Python-level; time spent in C below a Python frame counts for that frame. It still takes
13-23 % of a 2-core machine at 200 Hz: the profiled windows run slower than the plain ones.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import httpx

from benchmarks.detect_core import export_yolo_onnx, machine
from benchmarks.detect_server import IMGSZ, BareSession, Server, batch_diff, mean_batch
from benchmarks.loadgen import synthetic_image
from benchmarks.native_load import LoadResult, process_cpu_s, resolve_generator, run_load
from benchmarks.pyspy_shares import (
    cpu_by_category,
    cpu_delta,
    read_speedscope,
    thread_cpu,
    wall_shares,
)

ROOT = Path(__file__).resolve().parents[1]
RESULTS = ROOT / "benchmarks" / "results" / "detect_profile_service.json"
BARE_BATCHES = (1, 2, 3, 4, 8)


def _machine_jiffies() -> tuple[int, int]:
    """(busy, total) jiffies of all CPUs from /proc/stat."""
    fields = [int(v) for v in Path("/proc/stat").read_text().splitlines()[0].split()[1:]]
    idle = fields[3] + fields[4]  # idle + iowait
    return sum(fields) - idle, sum(fields)


def _py_spy() -> str:
    found = shutil.which("py-spy") or str(Path(sys.executable).with_name("py-spy"))
    if not Path(found).exists():
        raise RuntimeError("py-spy is not installed: .venv/bin/pip install py-spy")
    return found


def _batch_sums(server: Server) -> tuple[float, float]:
    """(seconds, images) of every batch call so far, from the service's /metrics."""
    seconds = images = 0.0
    text = httpx.get(f"{server.url}/metrics", timeout=30).text
    for line in text.splitlines():
        if line.startswith("agssp_inference_batch_seconds_sum{"):
            seconds += float(line.rsplit(" ", 1)[1])
        elif line.startswith("agssp_inference_batch_size_sum{"):
            images += float(line.rsplit(" ", 1)[1])
    return seconds, images


def plain_window(
    server: Server, image: bytes, concurrency: int, args: argparse.Namespace
) -> dict[str, Any]:
    """One load window without the profiler: how busy the model thread was and how fast
    its batch calls (letterbox, forward, NMS) ran, from the service's own metrics."""
    seconds_before, images_before = _batch_sums(server)
    load = run_load(args.load_generator, f"{server.url}/v1/detect", image, "image/jpeg",
                    concurrency=concurrency, max_requests=1_000_000,
                    duration_s=args.duration_s)  # fmt: skip
    seconds_after, images_after = _batch_sums(server)
    seconds, images = seconds_after - seconds_before, images_after - images_before
    server.drain()
    return {
        "concurrency": concurrency,
        "throughput_rps": round(load.throughput_rps, 3),
        "model_thread_busy_share": round(seconds / load.elapsed_s, 3),
        "batch_call_images_per_s": round(images / max(seconds, 1e-9), 3),
    }


def _wait_attached(spy: subprocess.Popen[str], timeout_s: float = 30.0) -> str:
    """py-spy's output up to its "Sampling process" line: from then on it records."""
    assert spy.stdout is not None
    lines: list[str] = []
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        line = spy.stdout.readline()
        if not line:
            raise RuntimeError("py-spy exited: " + "".join(lines[-5:]))
        lines.append(line)
        if "Sampling process" in line:
            return "".join(lines)
    raise RuntimeError("py-spy did not start sampling: " + "".join(lines[-5:]))


def _start_py_spy(server: Server, args: argparse.Namespace, out: Path) -> tuple[Any, str]:
    """py-spy recording the server into ``out``, once it samples; and its output so far."""
    argv = [
        _py_spy(), "record", "--pid", str(server.proc.pid), "--idle", "--nonblocking",
        "--threads", "--rate", str(args.rate), "--format", "speedscope", "-o", str(out),
    ]  # fmt: skip
    spy = subprocess.Popen(argv, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    return spy, _wait_attached(spy)


def profile_window(
    server: Server, image: bytes, concurrency: int, args: argparse.Namespace, out: Path
) -> dict[str, Any]:
    """One load window under py-spy: throughput, batch sizes and the shares."""
    spy, spy_log = _start_py_spy(server, args, out)
    sizes_before, cpu_before, jiffies_before = (
        server.batch_sizes(),
        thread_cpu(server.proc.pid),
        _machine_jiffies(),
    )
    load = run_load(args.load_generator, f"{server.url}/v1/detect", image, "image/jpeg",
                    concurrency=concurrency, max_requests=1_000_000,
                    duration_s=args.duration_s)  # fmt: skip
    spy.send_signal(signal.SIGINT)  # the recording covers the load window, not the drain
    cpu = cpu_delta(cpu_before, thread_cpu(server.proc.pid))
    busy, total = (a - b for a, b in zip(_machine_jiffies(), jiffies_before, strict=True))
    spy_cpu = process_cpu_s(spy.pid) or 0.0
    spy_log += spy.communicate(timeout=120)[0]
    sizes = batch_diff(server.batch_sizes(), sizes_before)
    server.drain()
    profiles = read_speedscope(json.loads(out.read_text()))
    by_category = cpu_by_category(profiles, cpu, args.rate)
    walls = wall_shares(profiles)
    # The runtime's own speed inside the service: images over the model thread's forward
    # time (its share of the window), against the bare runtime timed alone afterwards.
    forward_s = walls.get("batcher", {}).get("ort_forward", 0.0) * load.elapsed_s
    images = sum(size * count for size, count in sizes.items())
    server_cpu = sum(s for _, s in cpu.values())
    return {
        "concurrency": concurrency,
        "throughput_rps": round(load.throughput_rps, 3),
        "requests": load.ok,
        "elapsed_s": load.elapsed_s,
        "latency_ms_p50_p99": [load.quantiles_ms[49], load.quantiles_ms[98]],
        "batch_sizes": sizes,
        "mean_batch_size": round(mean_batch(sizes), 2),
        "server_cpu_s": round(server_cpu, 2),
        "cpu_s_by_category": by_category,
        "cpu_share_by_category": {
            k: round(v / max(server_cpu, 1e-9), 3) for k, v in by_category.items()
        },
        **_machine_view(by_category, load, busy / max(total, 1), spy_cpu),
        "forward_images_per_s_in_service": round(images / max(forward_s, 1e-9), 3),
        "wall_share_by_thread_role": walls,
        "py_spy_warnings": sum("behind in sampling" in line for line in spy_log.splitlines()),
    }


def _machine_view(
    by_category: dict[str, float], load: LoadResult, busy: float, spy_s: float
) -> dict[str, Any]:
    """Every core-second of the window (summing to 1): the server's categories, the load
    generator, py-spy, other processes on the machine, and idle; and the cores busy."""
    cores = os.cpu_count() or 1
    capacity_s = cores * load.elapsed_s
    shares = {k: v / capacity_s for k, v in by_category.items()}
    shares["wrk"], shares["py_spy"] = load.loadgen_cpu_s / capacity_s, spy_s / capacity_s
    shares["other_processes"] = max(0.0, busy - sum(shares.values()))
    shares["idle"] = 1.0 - busy
    server_s = sum(by_category.values())
    return {
        "machine_shares": {k: round(v, 3) for k, v in shares.items()},
        "machine": {
            "cores": cores,
            "server_cores_busy": round(server_s / load.elapsed_s, 3),
            "machine_cores_busy": round(cores * busy, 3),
            "idle_share": round(1 - busy, 3),
            "wrk_cpu_s": load.loadgen_cpu_s,
            "py_spy_cpu_s": round(spy_s, 2),
        },
    }


def bare_preference(onnx: Path, cap_s: float) -> dict[str, float]:
    """Images/s of bare ONNX Runtime at each batch size, two interleaved rounds pooled."""
    session = BareSession(onnx, "ort_fp32")
    runs: dict[int, list[float]] = {b: [] for b in BARE_BATCHES}
    for index in range(2):
        for batch in BARE_BATCHES if index % 2 == 0 else BARE_BATCHES[::-1]:
            runs[batch] += session.run_ms(batch, max(8, 3 * batch), cap_s)
    return {str(b): round(1000.0 * b * len(ms) / max(sum(ms), 1e-9), 3) for b, ms in runs.items()}


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--variant", default="yolov8n")
    parser.add_argument("--concurrency", nargs="+", type=int, default=[4, 16])
    parser.add_argument("--duration-s", type=float, default=30.0, help="load window each")
    parser.add_argument("--rate", type=int, default=200, help="py-spy samples per second")
    parser.add_argument("--max-batch-size", type=int, default=8)
    parser.add_argument("--max-queue-delay-ms", type=float, default=5.0)
    parser.add_argument("--warmup", type=int, default=48)
    parser.add_argument("--load-generator", default="wrk", choices=("wrk", "python"))
    parser.add_argument(
        "--tree", type=Path, default=ROOT, help="serve from this checkout (an older commit)"
    )
    parser.add_argument("--label", default="current", help="this run's key in the file")
    parser.add_argument("--keep", type=Path, default=None, help="keep speedscope files here")
    parser.add_argument("--note", default="", help="what else ran on the machine")
    parser.add_argument("--out", type=Path, default=RESULTS)
    args = parser.parse_args(argv)
    args.load_generator = resolve_generator(args.load_generator)
    return args


def _profile(args: argparse.Namespace, image: bytes) -> dict[str, Any]:
    """Export, serve, warm up, profile every concurrency, then time the bare runtime."""
    with tempfile.TemporaryDirectory(prefix="detect-pyspy-") as tmp:
        work = Path(tmp)
        onnx = export_yolo_onnx(args.variant, work / "models", imgsz=IMGSZ, dynamic=True)
        server = Server(
            onnx,
            work,
            max_batch=args.max_batch_size,
            delay_ms=args.max_queue_delay_ms,
            root=args.tree.resolve(),
        )
        try:
            server.wait_ready()
            resident = server.resident()
            run_load(args.load_generator, f"{server.url}/v1/detect", image, "image/jpeg",
                     concurrency=16, max_requests=args.warmup, duration_s=60.0)  # fmt: skip
            server.drain()
            windows, plain = [], []
            for c in args.concurrency:
                plain.append(plain_window(server, image, c, args))
                print(json.dumps(plain[-1]), flush=True)
                out = (args.keep or work) / f"detect-{args.label}-c{c}.speedscope.json"
                out.parent.mkdir(parents=True, exist_ok=True)
                windows.append(profile_window(server, image, c, args, out))
                print(json.dumps(windows[-1]), flush=True)
        finally:
            server.stop()
        return {
            "queue_delay_ms_in_use": resident.get("queue_delay_ms"),
            "batch_gain_at_load": resident.get("batch_gain"),
            "unprofiled": plain,
            "windows": windows,
            "bare_images_per_s_by_batch": bare_preference(onnx, cap_s=20.0),
        }


def main(argv: list[str] | None = None) -> None:
    args = parse_args(argv)
    image = synthetic_image(IMGSZ, IMGSZ)
    started, load_before = time.time(), os.getloadavg()
    found = _profile(args, image)
    run = {
        "command": " ".join(["python -m benchmarks.detect_pyspy", *(argv or sys.argv[1:])]),
        "server_tree": str(args.tree),
        "loadavg_before": load_before,
        "loadavg_after": os.getloadavg(),
        "note": args.note,
        "wall_s": round(time.time() - started, 1),
        **found,
    }
    # Runs of other labels (another checkout: before/after) stay in the file.
    old = json.loads(args.out.read_text()) if args.out.exists() else {}
    report = {
        "benchmark": "detect_pyspy: where /detect spends its time under wrk load (py-spy)",
        "machine": machine(),
        "setup": {
            "model": f"{args.variant} random-init ONNX export, {IMGSZ} px, dynamic batch",
            "image": f"synthetic {IMGSZ}x{IMGSZ} JPEG ({len(image)} bytes), one per request",
            "server": f"agssp serve inference, max batch {args.max_batch_size}, delay "
            f"{args.max_queue_delay_ms} ms, adaptive delay on, default intra-op threads, "
            "spinning off (the service's defaults); load from wrk, one thread",
            "py_spy": f"record --idle --nonblocking --threads --rate {args.rate}, attached "
            "for the load window only",
            "categories": "benchmarks/pyspy_shares.py (RULES): cpu_s_by_category spreads each "
            "thread's /proc CPU over its sampled categories, the event loop's unexplained rest "
            "is its C code (uvloop, httptools), threads py-spy cannot see (ONNX Runtime's "
            "intra-op pool) count as ort_forward; wall_share_by_thread_role is the share of "
            "each thread's samples (the batcher's: is the model running at all)",
        },
        "runs": {**old.get("runs", {}), args.label: run},
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(report, indent=1) + "\n")
    print(f"bare: {json.dumps(found['bare_images_per_s_by_batch'])}\nwrote {args.out}")


if __name__ == "__main__":
    main()
