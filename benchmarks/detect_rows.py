"""The rows of ``benchmarks.detect`` at one concurrency: every service under the load
generator, then every bare runtime alone at the batch its service formed, round by round.
"""

from __future__ import annotations

import argparse
import os
import statistics
from pathlib import Path
from typing import Any

from benchmarks.detect_server import BareSession, Server, batch_diff, mean_batch
from benchmarks.native_load import LoadResult, run_load, summary

RUNTIMES = ("ort_fp32", "openvino", "ort_int8")
BATCH1_ROW = "ort_fp32_batch1"  # the FP32 service with batching off: what batching buys
BASE_ROW = "ort_fp32_base"  # the FP32 service from another checkout (--baseline-tree)
ORT_RUNTIMES = ("ort_fp32", "ort_int8")  # the runtimes whose idle threads may spin


def spin_row(runtime: str, mode: str) -> str:
    """The row of ``runtime``'s service with INFERENCE_ORT_SPINNING=``mode`` (--spinning)."""
    return f"{runtime}_spin_{mode}"


def _spin_pairs(args: argparse.Namespace) -> list[tuple[str, str]]:
    """(runtime, mode) of every --spinning row."""
    modes = getattr(args, "spinning", None) or []
    return [(r, mode) for mode in modes for r in args.runtimes if r in ORT_RUNTIMES]


def spin_rows(args: argparse.Namespace) -> dict[str, str]:
    """Every --spinning row, with the runtime whose bare session it is set beside."""
    return {spin_row(runtime, mode): runtime for runtime, mode in _spin_pairs(args)}


def start_servers(
    models: dict[str, Path], work: Path, args: argparse.Namespace, *, batch1: bool
) -> dict[str, Server]:
    """One server per runtime asked for (and the batch-1 FP32 one), all ready."""
    size, delay = args.max_batch_size, args.max_queue_delay_ms
    servers: dict[str, Server] = {}
    try:
        for runtime in args.runtimes:
            onnx = models["ort_int8" if runtime == "ort_int8" else "ort_fp32"]
            backend = "openvino" if runtime == "openvino" else "onnxruntime"
            servers[runtime] = Server(onnx, work, max_batch=size, delay_ms=delay, backend=backend)
        for runtime, mode in _spin_pairs(args):
            servers[spin_row(runtime, mode)] = Server(
                models[runtime], work, max_batch=size, delay_ms=delay, ort_spinning=mode
            )
        if batch1 and "ort_fp32" in args.runtimes:
            servers[BATCH1_ROW] = Server(models["ort_fp32"], work, max_batch=1, delay_ms=0.0)
        if getattr(args, "baseline_tree", None) is not None:
            servers[BASE_ROW] = Server(
                models["ort_fp32"], work, max_batch=size, delay_ms=delay, root=args.baseline_tree
            )
        for server in servers.values():
            server.wait_ready()
    except BaseException:
        for server in servers.values():
            server.stop()
        raise
    return servers


def make_bare(
    models: dict[str, Path], runtimes: list[str], *, baseline: bool = False
) -> dict[str, BareSession]:
    """One bare session per runtime; the baseline row shares the FP32 one (its own batch)."""
    bare = {
        r: BareSession(models["ort_int8" if r == "ort_int8" else "ort_fp32"], r) for r in runtimes
    }
    if baseline:
        bare[BASE_ROW] = bare.get("ort_fp32") or BareSession(models["ort_fp32"], "ort_fp32")
    return bare


def warm_up(servers: dict[str, Server], image: bytes, args: argparse.Namespace) -> None:
    """Excluded requests: session arenas, the adaptive delay's measurement, caches."""
    for server in servers.values():
        load(server, image, args.load_generator, 16, args.warmup, args.duration_s)
        server.drain()


def load(
    server: Server, image: bytes, generator: str, concurrency: int, requests: int, cap_s: float
) -> tuple[LoadResult, float]:
    """One bounded load run; also the server's CPU seconds over it. Drains the server after."""
    cpu_before = server.cpu_seconds()
    result = run_load(
        generator,
        f"{server.url}/v1/detect",
        image,
        "image/jpeg",
        concurrency=concurrency,
        max_requests=requests,
        duration_s=cap_s,
    )
    cpu = server.cpu_seconds() - cpu_before
    server.drain()
    return result, cpu


def round_requests(requests: int, waves: int, concurrency: int, rounds: int) -> int:
    """Requests in one round of a row: ``requests`` split over the rounds, and at least
    ``waves`` full waves of ``concurrency`` clients in every round, so each round's ramp-up
    and drain (the first and last wave, with small batches) weigh 1/waves at most."""
    return max(-(-requests // max(rounds, 1)), waves * concurrency, 1)


def measure_concurrency(
    servers: dict[str, Server],
    bare: dict[str, BareSession],
    image: bytes,
    concurrency: int,
    args: argparse.Namespace,
    *,
    reference: int,
) -> dict[str, Any]:
    """Service and bare rows at one concurrency, interleaved over ``args.rounds`` rounds."""
    names = [n for n in servers if n != BATCH1_ROW or concurrency == reference]
    per_round = round_requests(args.requests, args.waves, concurrency, args.rounds)
    cap = args.duration_s / args.rounds
    loads: dict[str, list[LoadResult]] = {n: [] for n in names}
    cpu = dict.fromkeys(names, 0.0)
    sizes: dict[str, dict[int, int]] = {n: {} for n in names}
    bare_runs: dict[str, list[tuple[int, list[float]]]] = {r: [] for r in bare}
    for index in range(args.rounds):
        order = names if index % 2 == 0 else names[::-1]
        formed: dict[str, float] = {}
        for name in order:
            before = servers[name].batch_sizes()
            result, cpu_s = load(
                servers[name], image, args.load_generator, concurrency, per_round, cap
            )
            loads[name].append(result)
            cpu[name] += cpu_s
            diff = batch_diff(servers[name].batch_sizes(), before)
            formed[name] = mean_batch(diff)
            for size, count in diff.items():
                sizes[name][size] = sizes[name].get(size, 0) + count
        for runtime in order:  # in the round's order, reversed on odd rounds like the service rows
            if runtime in bare:
                batch = max(1, round(formed[runtime]))
                images = max(3 * batch, loads[runtime][-1].ok // 2)
                bare_runs[runtime].append((batch, bare[runtime].run_ms(batch, images, cap)))
    rows = {f"service_{n}": _service_row(loads[n], sizes[n], cpu[n]) for n in names}
    rows.update({f"bare_{r}": _bare_row(runs) for r, runs in bare_runs.items()})
    return rows


def _service_row(results: list[LoadResult], sizes: dict[int, int], cpu_s: float) -> dict[str, Any]:
    row = summary(results)
    busy = cpu_s / max(row["elapsed_s"], 1e-9)
    row["batch_sizes"] = sizes
    row["mean_batch_size"] = round(mean_batch(sizes), 2)
    row["server_cpu"] = {
        "cpu_s": round(cpu_s, 2),
        "cores_busy": round(busy, 3),
        "share_of_machine": round(busy / (os.cpu_count() or 1), 3),
    }
    return row


def _bare_row(runs: list[tuple[int, list[float]]]) -> dict[str, Any]:
    """Images/s over every round, each round at its own batch (usually the same one)."""
    samples = sorted(s for _, round_ms in runs for s in round_ms)
    images = sum(batch * len(round_ms) for batch, round_ms in runs)
    return {
        "batch_size": sorted({batch for batch, _ in runs}),
        "runs": len(samples),
        "images_per_s": round(1000.0 * images / max(sum(samples), 1e-9), 3),
        "median_ms": round(statistics.median(samples), 1),
        "max_ms": round(samples[-1], 1),
    }
