"""Dataset-map and pseudo-label jobs as the pool grows, and AGBP data loading against a bare
training step (issue 24, parts b and c), each side by side with its bare method in one run.

(b) For each pool size N (``--sizes``), N generated grey steel-like JPEGs (one in ten with a
    bright scratch or blob, deterministic from ``--seed``) in a fresh local-folder store:
    - ``map_job``: the dataset-map job (ToCoAD, fitted once on ``--fit-images`` defect-free
      images with ``--preset``) through the suite's runner, as the worker runs it;
    - ``label_job``: the pseudo-label job on those maps, likewise;
    - ``map_bare``: the same model's ``score`` on the same images, read and decoded from the
      store's local files in a plain loop at the job's batch; ``label_bare``: threshold, gate
      and boxes of the same maps, held in memory; ``label_bare_extraction_io``: the same
      extraction reading each map's ``.npy`` file and each image's size from its header, and
      writing one label file per image and the streamed COCO document and box statistics,
      the least file I/O and output a labelling pass must do (the job is given over both).
    Each job runs in its own child process and the three bare arms in a third, so every job's
    peak RSS is per size; children fork from a server that imported the suite once.
(c) The AGBP job's data path at the ``cpu`` pipeline preset's batch and input size (cache fill
    from the store, then ``CachedPairSource`` -> ``AgbpDataset`` -> ``DataLoader`` per batch)
    against one bare training step of the same backbone and objective on random tensors.

Merges ``maps`` and ``agbp_loading`` into ``benchmarks/results/scale.json`` (part (a)'s file,
whose content stays) and draws ``scale_maps.png`` beside it. Run alone on a quiet machine::

    .venv/bin/python -m benchmarks.scale_maps --sizes 1000 5000 20000 --rounds 2
    .venv/bin/python -m benchmarks.scale_maps --quick --out /tmp/scale.json   # a check
"""

from __future__ import annotations

import argparse
import json
import multiprocessing
import shutil
import sys
import tempfile
import time
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

from benchmarks import provenance
from benchmarks.scale_maps_pool import link_pool, write_fit_normals, write_pool

MODULE = "benchmarks.scale_maps"
RESULTS = Path(__file__).resolve().parent / "results"
AIM_RATIO = 0.9  # job images/s over bare at the largest pool
AIM_RSS_SPREAD = 0.10  # peak RSS of a job at the largest pool within 10 % of the smallest
AIM_LOADING = 1.0  # AGBP loading images/s over bare step images/s must exceed this
# Stage I length does not change map speed, so the larger presets fit briefly.
FIT_OVERRIDES: dict[str, dict[str, Any]] = {
    "tiny": {},
    "demo": {"stage1": {"iters": 20, "val_every": 20}},
    "cpu": {"stage1": {"iters": 20, "val_every": 20}},
}
# The unit tests' shrunk tiny fit: quick mode checks the path, its maps mean nothing.
QUICK_FIT: dict[str, Any] = {
    "stage1": {"iters": 2, "val_every": 2},
    "stage2": {"iters": 0},
    "generator": {"n_procedural_textures": 2},
}
QUICK = {"sizes": [8, 16], "fit_images": 4, "image_side": 64, "preset": "tiny",
         "agbp_batches": 2, "agbp_steps": 4, "agbp_quick": True}  # fmt: skip


@dataclass(frozen=True)
class Spec:
    """What a child needs: paths, the fit, the job's batch and the AGBP sizes."""

    work: Path
    store: Path
    preset: str
    fit_config: dict[str, Any]
    fit_images: int
    map_batch: int
    image_side: int
    gate: str
    threads: int
    seed: int
    agbp_batches: int
    agbp_steps: int
    agbp_quick: bool
    maps_prefix: str | None = None
    fit_store: Path | None = None


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    add = parser.add_argument
    add("--sizes", type=int, nargs="+", default=[1000, 5000, 20_000], help="pool sizes")
    add("--preset", default="cpu", choices=list(FIT_OVERRIDES), help="ToCoAD preset")
    add("--fit-images", type=int, default=50, help="defect-free images of the ToCoAD fit")
    add("--image-side", type=int, default=160, help="side of the generated JPEGs")
    add("--map-batch", type=int, default=8, help="the map job's batch (max_batch_size)")
    add("--gate", default="auto", choices=["off", "auto"], help="pseudo-label gate")
    add("--agbp-batches", type=int, default=40, help="AGBP batches loaded and timed")
    add("--agbp-steps", type=int, default=13, help="bare AGBP steps (3 warm-up not timed)")
    add("--rounds", type=int, default=2, help="rounds per size, arm order reversed each round")
    add("--threads", type=int, default=0, help="torch threads in every child; 0 = all cores")
    add("--seed", type=int, default=0)
    add("--quick", action="store_true", help="tiny sizes: every path in well under a minute")
    add("--out", type=Path, default=RESULTS / "scale.json", help="merged into, not replaced")
    args = parser.parse_args(argv)
    args.agbp_quick = False
    if args.quick:  # small sizes, except where the command line chose its own
        for key, value in QUICK.items():
            if key == "agbp_quick" or getattr(args, key) == parser.get_default(key):
                setattr(args, key, value)
    return args


def _context() -> Any:
    """A fork server that imports the arms once; each child forks from it."""
    ctx = multiprocessing.get_context("forkserver")
    ctx.set_forkserver_preload(["benchmarks.scale_maps_arms", "benchmarks.scale_maps_agbp"])
    return ctx


def _child(arm: str, spec: Spec, result: Path) -> None:
    from benchmarks import scale_maps_arms

    scale_maps_arms.run_arm(arm, spec, result)


def in_child(ctx: Any, arm: str, spec: Spec) -> dict[str, Any]:
    """Run one arm in a fresh child; its result, with the child's own peak RSS in it."""
    result = spec.work / f"result-{arm}-{time.monotonic_ns()}.json"
    process = ctx.Process(target=_child, args=(arm, spec, result), name=f"scale-maps-{arm}")
    process.start()
    process.join()
    if process.exitcode != 0 or not result.is_file():
        raise RuntimeError(f"arm {arm} failed in its child (exit code {process.exitcode})")
    out: dict[str, Any] = json.loads(result.read_text())
    return out


def _ratio(job: dict[str, Any], bare: dict[str, Any]) -> float:
    return round(float(job["images_per_s"]) / float(bare["images_per_s"]), 3)


def _pooled(results: list[dict[str, Any]]) -> dict[str, Any]:
    """One arm over its rounds: images/s of the summed images over the summed wall time, each
    round's own rate beside it, and the largest peak RSS; the first round's other fields."""
    images = sum(int(r["images"]) for r in results)
    wall = sum(float(r["wall_s"]) for r in results)
    out = dict(results[0]) | {"wall_s": round(wall, 3), "images": images // len(results),
                              "images_per_s": round(images / wall, 2)}  # fmt: skip
    if len(results) > 1:
        out["rounds_images_per_s"] = [r["images_per_s"] for r in results]
    if "peak_rss_mb" in results[0]:
        out["peak_rss_mb"] = max(float(r["peak_rss_mb"]) for r in results)
    return out


def _jobs(ctx: Any, spec: Spec) -> tuple[dict[str, Any], dict[str, Any]]:
    """The map job, then the pseudo-label job on its maps, each in its child."""
    maps = in_child(ctx, "map_job", spec)
    labels = in_child(ctx, "label_job", replace(spec, maps_prefix=maps["output_prefix"]))
    return maps, labels


def measure_size(ctx: Any, spec: Spec, size: int, pool: Path, rounds: int = 1) -> dict[str, Any]:
    """One pool size: a fresh store, then per round the two jobs in their children and the
    bare arms in a third, the jobs first on even rounds and the bare arms first on odd ones
    (they read the maps of the round before), so drift in the machine's speed falls on both."""
    started = time.perf_counter()
    link_pool(pool, spec.store, size)
    assert spec.fit_store is not None
    shutil.copytree(spec.fit_store / "categories", spec.store / "categories")
    found: dict[str, list[dict[str, Any]]] = {"maps": [], "labels": [], "bare": []}
    for index in range(max(rounds, 1)):
        if index % 2:
            prefix = found["maps"][-1]["output_prefix"]
            found["bare"].append(in_child(ctx, "bare", replace(spec, maps_prefix=prefix)))
        maps, labels = _jobs(ctx, spec)
        found["maps"].append(maps)
        found["labels"].append(labels)
        if not index % 2:
            prefix = maps["output_prefix"]
            found["bare"].append(in_child(ctx, "bare", replace(spec, maps_prefix=prefix)))
    return _size_row(size, found, rounds) | {"wall_s": round(time.perf_counter() - started, 1)}


def _size_row(size: int, found: dict[str, list[dict[str, Any]]], rounds: int) -> dict[str, Any]:
    bare = found["bare"]
    maps, labels = _pooled(found["maps"]), _pooled(found["labels"])
    map_bare = _pooled([b["maps"] for b in bare])
    label_bare = _pooled([b["labels"] for b in bare])
    label_io = _pooled([b["labels_io"] for b in bare])
    return {
        "images": size,
        "rounds": rounds,
        "map_job": maps,
        "map_bare": map_bare,
        "map_job_over_bare": _ratio(maps, map_bare),
        "label_job": labels,
        "label_bare": label_bare,
        "label_job_over_bare": _ratio(labels, label_bare),
        "label_bare_extraction_io": label_io,
        "label_job_over_bare_extraction_io": _ratio(labels, label_io),
        "bare_peak_rss_mb": max(float(b["peak_rss_mb"]) for b in bare),
    }


def _rss_spread(rows: list[dict[str, Any]], arm: str) -> float:
    return round(float(rows[-1][arm]["peak_rss_mb"]) / float(rows[0][arm]["peak_rss_mb"]) - 1, 3)


def aims(rows: list[dict[str, Any]]) -> dict[str, Any]:
    """Each acceptance aim with its value and whether it is reached (nothing is tuned to it)."""
    last = rows[-1]
    out: dict[str, Any] = {}
    for job in ("map", "label"):
        ratio = last[f"{job}_job_over_bare"]
        spread = _rss_spread(rows, f"{job}_job")
        out[f"{job}_job_over_bare_at_{last['images']}"] = {
            "value": ratio, "aim": f">= {AIM_RATIO}", "reached": ratio >= AIM_RATIO,
        }  # fmt: skip
        out[f"{job}_job_peak_rss_{rows[0]['images']}_to_{last['images']}"] = {
            "value": spread, "aim": f"within +-{AIM_RSS_SPREAD:.0%}",
            "reached": abs(spread) <= AIM_RSS_SPREAD,
        }  # fmt: skip
    return out


def _setup(args: argparse.Namespace, spec: Spec) -> dict[str, Any]:
    return {
        "preset": args.preset,
        "fit_config_overrides": spec.fit_config,
        "fit_images": args.fit_images,
        "images": f"{args.image_side}x{args.image_side} grey JPEG q90, steel-like texture, "
        "1 in 10 with a bright scratch or blob",
        "map_batch": args.map_batch,
        "pseudo_label_gate": args.gate,
        "store": "local folder (FileObjectStore), a fresh one per size; the jobs' as a worker "
        "builds it (durable=False: synced before the record turns terminal and each "
        "checkpoint)",
        "torch_threads": args.threads or "all cores",
        "seed": args.seed,
        "quick": args.quick,
        "peak_rss": "ru_maxrss of each child (RUSAGE_SELF at its end); children fork from a "
        "server that imported the suite, so every peak includes those imports",
        "rounds": args.rounds,
        "order": "per size and round: map job, pseudo-label job, then the bare arms in one "
        "child; on odd rounds the bare arms first, on the maps of the round before; each arm's "
        "images/s pools its rounds (summed images over summed wall time), its peak RSS is the "
        "largest",
    }


def run(args: argparse.Namespace, work: Path) -> tuple[dict[str, Any], dict[str, Any]]:
    """Fit, pool, then every size; AGBP loading right after the smallest size's maps."""
    ctx = _context()
    fit_config = QUICK_FIT if args.quick else FIT_OVERRIDES[args.preset]
    spec = Spec(
        work=work, store=work / "fit-store", preset=args.preset, fit_config=fit_config,
        fit_images=args.fit_images, map_batch=args.map_batch, image_side=args.image_side,
        gate=args.gate, threads=args.threads, seed=args.seed, agbp_batches=args.agbp_batches,
        agbp_steps=args.agbp_steps, agbp_quick=args.agbp_quick,
    )  # fmt: skip
    write_fit_normals(spec.store, args.fit_images, args.image_side, args.seed)
    fit = in_child(ctx, "fit", spec)
    spec = replace(spec, fit_store=spec.store)
    pool = work / "pool"
    generate_s = write_pool(pool, max(args.sizes), args.image_side, args.seed)
    rows: list[dict[str, Any]] = []
    agbp: dict[str, Any] = {}
    for size in args.sizes:
        sized = replace(spec, store=work / f"store-{size}")
        rows.append(measure_size(ctx, sized, size, pool, args.rounds))
        print(json.dumps(rows[-1]), flush=True)
        if not agbp:  # (c) reads the smallest pool and its maps from the store
            prefix = rows[0]["map_job"]["output_prefix"]
            agbp = in_child(ctx, "agbp", replace(sized, maps_prefix=prefix))
            print(json.dumps(agbp), flush=True)
        shutil.rmtree(sized.store, ignore_errors=True)
    ratio = agbp["loading_over_step"]
    agbp["aim"] = {"value": ratio, "aim": f"> {AIM_LOADING}", "reached": ratio > AIM_LOADING}
    setup = _setup(args, spec) | {"pool_generate_s": generate_s}
    maps = {"setup": setup, "fit": fit, "rows": rows, "aims": aims(rows)}
    return maps, agbp


def plot(rows: list[dict[str, Any]], out: Path) -> None:
    """Images/s of every arm and peak RSS of every child against the pool size."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    sizes = [r["images"] for r in rows]
    fig, (left, right) = plt.subplots(1, 2, figsize=(10, 4))
    arms = (("map_job", "map job"), ("map_bare", "map bare"),
            ("label_job", "pseudo-label job"), ("label_bare", "pseudo-label bare"),
            ("label_bare_extraction_io", "pseudo-label bare + file I/O"))  # fmt: skip
    for key, label in arms:
        left.plot(sizes, [r[key]["images_per_s"] for r in rows], marker="o", label=label)
    left.set(xscale="log", yscale="log", xlabel="pool images", ylabel="images/s",
             title="throughput")  # fmt: skip
    for key, label in (("map_job", "map job"), ("label_job", "pseudo-label job")):
        right.plot(sizes, [r[key]["peak_rss_mb"] for r in rows], marker="o", label=label)
    right.plot(sizes, [r["bare_peak_rss_mb"] for r in rows], "--", marker="o", label="bare arms")
    right.set(xscale="log", xlabel="pool images", ylabel="MB", title="peak RSS per child")
    right.set_ylim(bottom=0)
    for axes in (left, right):
        axes.legend()
    fig.tight_layout()
    fig.savefig(out, dpi=100)
    plt.close(fig)


def _stamp(argv: list[str] | None, load_start: list[float], started: float) -> dict[str, Any]:
    stamp = provenance.stamp(MODULE, load_start)
    stamp["command"] = provenance.command(MODULE, argv)
    return stamp | {"duration_s": round(time.perf_counter() - started, 1)}


def merge_into(out: Path, sections: dict[str, Any]) -> None:
    """Read ``out`` (part (a)'s report, if any), set ``sections``, write it back."""
    report: dict[str, Any] = json.loads(out.read_text()) if out.is_file() else {}
    report.update(sections)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(report, indent=1) + "\n")


def main(argv: list[str] | None = None) -> None:
    args = parse_args(argv)
    load_start, started = provenance.load_average(), time.perf_counter()
    with tempfile.TemporaryDirectory(prefix="agssp-scale-maps-") as tmp:
        maps, agbp = run(args, Path(tmp))
    stamp = _stamp(argv, load_start, started)
    merge_into(args.out, {"maps": stamp | maps, "agbp_loading": stamp | agbp})
    plot(maps["rows"], args.out.with_name(f"{args.out.stem}_maps.png"))
    print(f"wrote {args.out} ({stamp['duration_s']} s)")


if __name__ == "__main__":
    main(sys.argv[1:])
