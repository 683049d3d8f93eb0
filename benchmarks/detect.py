"""Detection serving at concurrency 1, 4, 16 and 64: the inference service (real uvicorn,
dynamic batching) with ONNX Runtime FP32, OpenVINO and ONNX Runtime INT8, driven by a native
load generator in its own process (Debian's ``wrk``; Python threads when wrk is missing),
each against its bare runtime timed alone at the batch the service formed; YOLOv8n and
YOLOv8s. Then FP32 vs INT8 mAP@0.5 on a NEU-DET validation split (a YOLOv8n finetuned for
it, cached under var/), and the latency of one tiled 4000x3000 frame.
Writes benchmarks/results/detect.json.

    python -m benchmarks.detect            # the full run (estimated 13 min on 2 quiet cores
                                           # with the NEU-DET model cached, 7 more to train it)
    python -m benchmarks.detect --quick    # every code path, small counts (a check, not numbers)
    python -m benchmarks.detect --variants yolov8n --runtimes ort_fp32 --skip-map

Serving rows use random-init weights exported to ONNX (speed does not depend on weight
values; no downloads). Every row is bounded by a request count and a time limit. Within a
concurrency the rows run in interleaved rounds, because other people's jobs change this
machine's speed minute by minute.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from benchmarks.detect_accuracy import measure_int8_accuracy
from benchmarks.detect_core import export_yolo_onnx, machine, measure_tiled
from benchmarks.detect_rows import (
    BASE_ROW,
    BATCH1_ROW,
    RUNTIMES,
    make_bare,
    measure_concurrency,
    spin_rows,
    start_servers,
    warm_up,
)
from benchmarks.detect_server import IMGSZ, Server
from benchmarks.loadgen import synthetic_image
from benchmarks.native_load import GENERATORS, resolve_generator

__all__ = ["Server", "main"]  # Server: the GPU check starts the service through this module

ROOT = Path(__file__).resolve().parents[1]
RESULTS = ROOT / "benchmarks" / "results" / "detect.json"
AIMS = {"service_over_bare": 0.9, "fastest_over_baseline": 1.5, "int8_map50_drop_points": 1.0}
BASELINE_RPS = {"yolov8n": 10.17}  # issue 14: the FP32 service before this work, same machine
WARMUP_REQUESTS = 48  # three waves of 16 clients: enough to see the steady batch size
CONCURRENCIES = (1, 4, 16, 64)
REFERENCE = 16  # ratios.service_over_bare is read at this concurrency (as before issue 25)


def _models(variant: str, work: Path, calibration: int, runtimes: list[str]) -> dict[str, Path]:
    """The FP32 export and, when asked for, its INT8 copy (synthetic calibration: speed only)."""
    import numpy as np

    from services.finetune.ml.yolov8.quantize import quantize_int8
    from services.inference.ml.letterbox import to_input_tensor

    fp32 = export_yolo_onnx(variant, work / "models", imgsz=IMGSZ, dynamic=True)
    models = {"ort_fp32": fp32}
    if "ort_int8" in runtimes:
        rng = np.random.default_rng(0)
        frames = [
            rng.integers(0, 256, (IMGSZ, IMGSZ, 3), dtype=np.uint8) for _ in range(calibration)
        ]
        batches = [to_input_tensor([frame]) for frame in frames]
        models["ort_int8"] = quantize_int8(fp32, fp32.with_name(f"{fp32.stem}-int8.onnx"), batches)
    return models


def _ratios(variant: str, by_c: dict[str, dict[str, Any]], runtimes: list[str]) -> dict[str, Any]:
    by_concurrency = {
        c: {
            r: round(rows[f"service_{r}"]["throughput_rps"] / rows[f"bare_{r}"]["images_per_s"], 3)
            for r in runtimes
        }
        for c, rows in by_c.items()
    }
    ref = str(REFERENCE) if str(REFERENCE) in by_c else max(by_c, key=int)
    rows = by_c[ref]
    fastest = max(
        (r for r in runtimes if r != BASE_ROW), key=lambda r: rows[f"service_{r}"]["throughput_rps"]
    )
    fastest_rps = rows[f"service_{fastest}"]["throughput_rps"]
    baseline = BASELINE_RPS.get(variant)
    batch1 = rows.get(f"service_{BATCH1_ROW}")
    return {
        "service_over_bare": by_concurrency[ref],
        "service_over_bare_concurrency": int(ref),
        "by_concurrency": by_concurrency,
        "fastest_service": fastest,
        "fastest_service_rps": fastest_rps,
        "fastest_over_baseline": round(fastest_rps / baseline, 3) if baseline else None,
        "batched_over_batch1": None
        if batch1 is None
        else round(rows["service_ort_fp32"]["throughput_rps"] / batch1["throughput_rps"], 3),
    }


def _over_baseline(by_c: dict[str, dict[str, Any]]) -> dict[str, Any]:
    """FP32 service throughput over the --baseline-tree one: pooled, and round by round
    (each pair ran back to back, so a round's ratio sees the same neighbours' load)."""
    out: dict[str, Any] = {}
    for c, rows in by_c.items():
        new, old = rows["service_ort_fp32"], rows[f"service_{BASE_ROW}"]
        rounds = [
            round(a / b, 3) for a, b in zip(new["rounds_rps"], old["rounds_rps"], strict=True)
        ]
        out[c] = {
            "throughput": round(new["throughput_rps"] / old["throughput_rps"], 3),
            "rounds": rounds,
            "rounds_median": round(statistics.median(rounds), 3),
        }
    return out


def _spinning(by_c: dict[str, dict[str, Any]], rows: dict[str, str]) -> dict[str, Any]:
    """Each --spinning row's throughput over its runtime's bare session, and over the
    runtime's service at its default mode, per concurrency."""
    out: dict[str, Any] = {}
    for c, found in by_c.items():
        out[c] = {}
        for name, runtime in rows.items():
            rps = found[f"service_{name}"]["throughput_rps"]
            out[c][name] = {
                "service_over_bare": round(rps / found[f"bare_{runtime}"]["images_per_s"], 3),
                "over_default_mode": round(rps / found[f"service_{runtime}"]["throughput_rps"], 3),
                "p99_ms": found[f"service_{name}"]["latency_ms"]["p99"],
            }
    return out


def _aims(ratios: dict[str, Any]) -> dict[str, bool]:
    aims = {
        f"service_over_bare.c{c}.{r}": v >= AIMS["service_over_bare"]
        for c, row in ratios["by_concurrency"].items()
        if c in ("1", str(REFERENCE))
        for r, v in row.items()
    }
    if ratios["fastest_over_baseline"] is not None:
        aims["fastest_over_baseline"] = (
            ratios["fastest_over_baseline"] >= AIMS["fastest_over_baseline"]
        )
    return aims


def run_variant(variant: str, work: Path, image: bytes, args: argparse.Namespace) -> dict[str, Any]:
    """Every concurrency of one model: its servers start once and serve every row."""
    models = _models(variant, work, args.calibration, args.runtimes)
    print(f"{variant}: exported {', '.join(p.name for p in models.values())}", flush=True)
    load_before = os.getloadavg()
    batch1 = REFERENCE in args.concurrency and not args.skip_batch1
    servers = start_servers(models, work, args, batch1=batch1)
    try:
        warm_up(servers, image, args)
        bare = make_bare(models, args.runtimes, baseline=args.baseline_tree is not None)
        by_c: dict[str, dict[str, Any]] = {}
        for c in args.concurrency:
            by_c[str(c)] = measure_concurrency(servers, bare, image, c, args, reference=REFERENCE)
            print(f"{variant} c={c}: done", flush=True)
    finally:
        for server in servers.values():
            server.stop()
    rows = [*args.runtimes, *([BASE_ROW] if args.baseline_tree is not None else [])]
    ratios = _ratios(variant, by_c, rows)
    if args.baseline_tree is not None and "ort_fp32" in args.runtimes:
        ratios["fp32_over_baseline"] = _over_baseline(by_c)
    if spin_rows(args):
        ratios["spinning"] = _spinning(by_c, spin_rows(args))
    print(f"{variant}: {json.dumps(ratios)}", flush=True)
    return {
        "variant": variant,
        "imgsz": IMGSZ,
        "by_concurrency": by_c,
        "ratios": ratios,
        "aims_met": _aims(ratios),
        "loadavg_before": load_before,
        "loadavg_after": os.getloadavg(),
    }


QUICK = {
    "variants": ["yolov8n"],
    "requests": 8,
    "waves": 1,
    "rounds": 2,
    "duration_s": 20.0,
    "warmup": 8,
    "calibration": 4,
    "tiled_requests": 1,
    "epochs": 1,
    "max_train": 48,
    "imgsz_map": 160,
}


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--variants", nargs="+", default=["yolov8n", "yolov8s"], help="models")
    parser.add_argument("--runtimes", nargs="+", default=list(RUNTIMES), choices=RUNTIMES)
    parser.add_argument("--concurrency", nargs="+", type=int, default=list(CONCURRENCIES))
    parser.add_argument("--load-generator", default="auto", choices=GENERATORS)
    parser.add_argument("--requests", type=int, default=48, help="per row, split over the rounds")
    parser.add_argument(
        "--waves",
        type=int,
        default=3,
        help="requests per round >= waves x concurrency: the ramp and drain weigh 1/waves at most",
    )
    parser.add_argument("--rounds", type=int, default=2, help="interleaved rounds per row")
    parser.add_argument("--warmup", type=int, default=WARMUP_REQUESTS)
    parser.add_argument("--duration-s", type=float, default=60.0, help="time cap per row")
    parser.add_argument("--max-batch-size", type=int, default=8)
    parser.add_argument("--max-queue-delay-ms", type=float, default=5.0)
    parser.add_argument("--calibration", type=int, default=32, help="INT8 calibration images")
    parser.add_argument("--tiled-requests", type=int, default=3)
    parser.add_argument("--epochs", type=int, default=6, help="NEU-DET finetune for the mAP")
    parser.add_argument("--imgsz-map", type=int, default=224, help="NEU-DET images are 200 px")
    parser.add_argument("--max-train", type=int, default=None, help="NEU-DET train images")
    parser.add_argument("--skip-map", action="store_true", help="no NEU-DET mAP section")
    parser.add_argument("--skip-tiled", action="store_true", help="no tiled-frame row")
    parser.add_argument(
        "--skip-batch1", action="store_true", help=f"no {BATCH1_ROW} row (batching off)"
    )
    parser.add_argument(
        "--baseline-tree",
        type=Path,
        default=None,
        help=f"also serve FP32 from this checkout (an older commit, e.g. from git archive) as "
        f"the {BASE_ROW} row, interleaved with the others: before/after in one run",
    )
    parser.add_argument(
        "--spinning",
        nargs="+",
        default=[],
        choices=_spin_modes(),
        help="also serve each ORT runtime with INFERENCE_ORT_SPINNING set to each mode (rows "
        "<runtime>_spin_<mode>, ratios.spinning), interleaved with the default-mode rows",
    )
    parser.add_argument("--quick", action="store_true", help="small counts: checks every path")
    parser.add_argument("--out", type=Path, default=RESULTS)
    args = parser.parse_args(argv)
    if args.quick:  # small sizes, except where the command line chose its own
        for key, value in QUICK.items():
            if getattr(args, key) == parser.get_default(key):
                setattr(args, key, value)
    args.load_generator = resolve_generator(args.load_generator)
    return args


def _spin_modes() -> tuple[str, ...]:
    from services.inference.ml.onnx_detector import SPIN_MODES

    return SPIN_MODES


def _default_spinning() -> str:
    from services.inference.config import InferenceSettings

    return str(InferenceSettings.model_fields["ort_spinning"].default)


def _setup(args: argparse.Namespace, image: bytes) -> dict[str, Any]:
    return {
        "image": f"synthetic {IMGSZ}x{IMGSZ} JPEG q90 ({len(image)} bytes), one per request",
        "load_generator": args.load_generator,
        "load_generator_note": "wrk: Debian's wrk, one event-loop thread, keep-alive "
        "connections, in its own process; latency percentiles are wrk's own (Lua done() "
        "hook); python: threads in the benchmark process (benchmarks.loadgen), sharing the "
        "cores with the server",
        "concurrency": args.concurrency,
        "requests_per_round": f"max({args.requests} / rounds, {args.waves} x concurrency): "
        "every round holds the waves, so its ramp and drain weigh 1/waves at most",
        "interleaved_rounds": args.rounds,
        "duration_cap_s_per_row": args.duration_s,
        "warmup_requests_excluded": args.warmup,
        "runtimes": args.runtimes,
        "server": "agssp serve inference (uvicorn, one process) on 127.0.0.1, CPU, default "
        "intra-op threads, INFERENCE_MAX_BATCH_SIZE / MAX_QUEUE_DELAY_MS as given with the "
        "adaptive delay on; one server per runtime (openvino: INFERENCE_BACKEND=openvino, "
        f"throughput hint) plus {BATCH1_ROW} (max batch 1, at concurrency {REFERENCE} only, "
        f"unless --skip-batch1) and {BASE_ROW} (FP32 served from --baseline-tree: "
        f"{args.baseline_tree}); the ORT rows at the service's default "
        f"INFERENCE_ORT_SPINNING ({_default_spinning()}) and, with --spinning, beside them "
        f"at {', '.join(args.spinning) or 'no other mode'}; "
        "server_cpu is the server process's own CPU time over the row",
        "bare": "the runtime alone on a ready float32 (B, 3, 640, 640) tensor in the benchmark "
        "process (no HTTP, decode, letterbox or NMS; no load running), B = the mean batch "
        "the service formed in the same round, rounded",
        "method": "per concurrency, every service row then every bare row each round, order "
        "reversed on odd rounds; the server is drained between rows",
    }


def main(argv: list[str] | None = None) -> None:
    args = parse_args(argv)
    image = synthetic_image(IMGSZ, IMGSZ)  # square: the service's letterbox input is 640x640 too
    started, load_before = time.time(), os.getloadavg()
    print(f"load generator: {args.load_generator}", flush=True)
    with tempfile.TemporaryDirectory(prefix="bench-detect-") as tmp:
        results = [run_variant(v, Path(tmp), image, args) for v in args.variants]
        tiled = {"skipped": "--skip-tiled"} if args.skip_tiled else measure_tiled(Path(tmp), args)
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
        "benchmark": "detect: service (ORT FP32, OpenVINO, ORT INT8) vs bare runtimes at "
        "concurrency 1-64, INT8 accuracy, tiled large frame",
        "command": " ".join(
            ["python -m benchmarks.detect", *(sys.argv[1:] if argv is None else argv)]
        ),
        "quick": args.quick,
        "machine": machine(),
        "loadavg_before": load_before,
        "loadavg_after": os.getloadavg(),
        "wall_s": round(time.time() - started, 1),
        "setup": _setup(args, image),
        "aims": AIMS,
        "baseline_rps": BASELINE_RPS,
        "results": results,
        "int8": int8,
        "tiled": tiled,
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(report, indent=1) + "\n")
    print(json.dumps({r["variant"]: r["ratios"]["by_concurrency"] for r in results}, indent=1))
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
