"""The pseudo-label job on a large pool of generated maps, beside its bare extraction, without
the dataset-map job that ``benchmarks.scale_maps`` runs first (issue 24, part b).

A pool of N generated JPEGs (``scale_maps_pool``) and, for each, a ``.npy`` map of G x G
(uniform noise, a bright patch on one image in ten) with a ``scores.csv`` beside them, in a
local-folder store. Arms, in an order that alternates round by round, all in this process:

- ``job``: the pseudo-label job through the suite's runner, as a worker runs it (maps past
  its memory budget kept in its scratch file between the two passes);
- ``bare_extraction_io`` and ``bare_in_memory``: ``scale_maps``' bare arms on the same store.

Writes ``benchmarks/results/scale_labels.json``. Run alone on a quiet machine::

    .venv/bin/python -m benchmarks.scale_labels --images 20000 --rounds 2
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np

from benchmarks import provenance

MODULE = "benchmarks.scale_labels"
RESULTS = Path(__file__).resolve().parent / "results"
MAPS_PREFIX = "maps/bench/"


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    add = parser.add_argument
    add("--images", type=int, default=20_000, help="pool size")
    add("--grid", type=int, default=128, help="map side (ToCoAD's maps are 128 x 128)")
    add("--side", type=int, default=160, help="image side, px")
    add("--rounds", type=int, default=2)
    add("--seed", type=int, default=0)
    add("--out", type=Path, default=RESULTS / "scale_labels.json")
    return parser.parse_args(argv)


def write_maps(root: Path, count: int, grid: int, seed: int) -> None:
    """One map per pool image, named by its stem, and the ``scores.csv`` of the output."""
    from benchmarks.scale_maps_pool import DEFECT_EVERY, pool_key
    from services.anomaly_map.stores.maps import encode_npy
    from shared.schemas.dataset_maps import ScoreRow, scores_csv
    from shared.storage.filesystem import FileObjectStore

    store, rng = FileObjectStore(root), np.random.default_rng(seed)
    rows = []
    for index in range(count):
        amap = rng.random((grid, grid), dtype=np.float32) * np.float32(0.3)
        flaw = index % DEFECT_EVERY == DEFECT_EVERY - 1
        if flaw:
            amap[grid // 8 : grid // 4, grid // 8 : grid // 3] += np.float32(0.6)
        store.put_bytes(f"{MAPS_PREFIX}img{index:06d}.npy", encode_npy(amap))
        rows.append(ScoreRow(pool_key(index), float(amap.max()), float("nan"), float(amap.max())))
    store.put_bytes(f"{MAPS_PREFIX}scores.csv", scores_csv(rows))


def _spec(work: Path, store: Path, side: int, seed: int) -> Any:
    from benchmarks.scale_maps import Spec

    return Spec(
        work=work, store=store, preset="cpu", fit_config={}, fit_images=0, map_batch=8,
        image_side=side, gate="auto", threads=0, seed=seed, agbp_batches=0, agbp_steps=0,
        agbp_quick=True, maps_prefix=MAPS_PREFIX,
    )  # fmt: skip


def arms(spec: Any) -> dict[str, Callable[[], dict[str, Any]]]:
    from benchmarks.scale_maps_arms import _bare_extraction_io, _bare_labels, label_job

    return {
        "job": lambda: label_job(spec),
        "bare_extraction_io": lambda: _bare_extraction_io(spec),
        "bare_in_memory": lambda: _bare_labels(spec),
    }


def measure(spec: Any, rounds: int) -> dict[str, Any]:
    """Every arm once per round, the order reversed every other round; medians of images/s."""
    found: dict[str, list[float]] = {}
    runs: list[dict[str, Any]] = []
    for index in range(rounds):
        order = list(arms(spec).items())
        for name, arm in order if index % 2 == 0 else order[::-1]:
            result = arm()
            found.setdefault(name, []).append(float(result["images_per_s"]))
            runs.append({"round": index, "arm": name} | result)
    medians = {name: round(statistics.median(v), 1) for name, v in found.items()}
    return {
        "images_per_s": medians,
        "ratios": {
            "job_over_bare_extraction_io": round(medians["job"] / medians["bare_extraction_io"], 3),
            "job_over_bare_in_memory": round(medians["job"] / medians["bare_in_memory"], 3),
        },
        "runs": runs,
    }


def main(argv: list[str] | None = None) -> None:
    from benchmarks.scale_maps_pool import write_pool

    args = parse_args(argv)
    load_start, started = provenance.load_average(), time.perf_counter()
    with tempfile.TemporaryDirectory(prefix="agssp-scale-labels-") as tmp:
        work = Path(tmp)
        store = work / "store"
        pool_s = write_pool(store, args.images, args.side, args.seed)
        write_maps(store, args.images, args.grid, args.seed)
        result = measure(_spec(work, store, args.side, args.seed), args.rounds)
    stamp = provenance.stamp(MODULE, load_start)
    stamp["command"] = provenance.command(MODULE, argv)
    setup = {"images": args.images, "grid": args.grid, "side": args.side,
             "rounds": args.rounds, "pool_write_s": pool_s, "store": "local folder"}  # fmt: skip
    doc = stamp | {"duration_s": round(time.perf_counter() - started, 1), "setup": setup} | result
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(doc, indent=1) + "\n")
    print(json.dumps({k: doc[k] for k in ("images_per_s", "ratios")}, indent=1))


if __name__ == "__main__":
    main(sys.argv[1:])
