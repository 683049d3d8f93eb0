"""What the suite's job machinery costs over the libraries it wraps, three ways:

(a) a finetune job vs bare ultralytics ``YOLO("yolov8n.yaml").train(...)`` on the same data
    (NEU-DET mini from ../shared/data when present, else generated rectangles), the same
    recipe, seed and torch thread count: time per epoch, wall time, final mAP@0.5;
(b) an AGBP job vs a plain torch loop with the same backbone, objective, optimiser, batch
    and augmentation (pairs decoded once, a DataLoader augmenting each sample), and vs the
    same model stepping on one in-memory batch: images/s end to end and at steady state;
(c) a ToCoAD dataset-map job vs the fitted model's ``score`` on the same decoded images:
    images/s.

Every job runs in this process through the suite's own runner (``run_job``) on a
local-folder store, as a worker would run it. The arms alternate (job first in even
rounds, bare first in odd ones) so machine drift hits both; ratios are per round, then the
median over rounds. Writes benchmarks/results/train_overhead.json.

    python -m benchmarks.train_overhead               # the full run (estimated < 10 min, 2 cores)
    python -m benchmarks.train_overhead --quick       # every path at tiny sizes (a check)
    python -m benchmarks.train_overhead --sections agbp maps --rounds 3
    python -m benchmarks.train_overhead --sections agbp agbp_long   # the AGBP rows only
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from benchmarks import overhead_agbp, overhead_finetune, overhead_maps, provenance

ROOT = Path(__file__).resolve().parents[1]
RESULTS = ROOT / "benchmarks" / "results"
SECTIONS: dict[str, Any] = {
    "finetune": overhead_finetune,
    "agbp": overhead_agbp,
    "agbp_long": overhead_agbp.LONG,
    "maps": overhead_maps,
}
AIMS = {
    "finetune.job_over_bare_speed_per_epoch": 0.95,
    "agbp.job_over_bare_images_per_s": 0.9,
    "agbp_long.job_over_bare_images_per_s": 0.9,
}
QUICK = {
    "rounds": 1, "ft_images": 16, "ft_per_class": 4, "ft_epochs": 1, "ft_batch": 4,
    "ft_imgsz": 64, "agbp_backbone": "yolov8n", "agbp_images": 8, "agbp_image_side": 96,
    "agbp_epochs": 1, "agbp_batch": 4, "agbp_input": 64, "agbp_long_images": 16,
    "agbp_long_epochs": 1, "map_images": 6, "map_normals": 4,
    "map_side": 96, "map_batch": 4, "synthetic": True, "warmup": False,
}  # fmt: skip


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    add = parser.add_argument
    add("--sections", nargs="+", default=list(SECTIONS), choices=list(SECTIONS))
    add("--rounds", type=int, default=2, help="alternating rounds of both arms per section")
    add("--threads", type=int, default=0, help="torch threads of every arm; 0 = all cores")
    add("--seed", type=int, default=0)
    add("--synthetic", action="store_true", help="generated rectangles even with NEU-DET here")
    add("--ft-per-class", type=int, default=40, help="NEU-DET mini: images per class")
    add("--ft-images", type=int, default=240, help="generated set: images")
    add("--ft-epochs", type=int, default=3)
    add("--ft-batch", type=int, default=16)
    add("--ft-imgsz", type=int, default=160)
    add("--agbp-backbone", default="yolov8n", help="yolov8n/s/m, resnet50 (timm), ...")
    add("--agbp-images", type=int, default=64)
    add("--agbp-image-side", type=int, default=256)
    add("--agbp-epochs", type=int, default=4)
    add("--agbp-batch", type=int, default=8)
    add("--agbp-input", type=int, default=224)
    add("--agbp-workers", type=int, default=0, help="the job's DataLoader workers")
    add("--agbp-long-images", type=int, default=512, help="agbp_long: images")
    add("--agbp-long-epochs", type=int, default=2, help="agbp_long: epochs")
    add("--map-images", type=int, default=64)
    add("--map-normals", type=int, default=16, help="normal images of the ToCoAD fit")
    add("--map-side", type=int, default=256, help="side of the generated JPEGs")
    add("--map-batch", type=int, default=8, help="the map job's batch (max_batch_size)")
    add("--no-warmup", dest="warmup", action="store_false", help="no untimed first run per arm")
    add("--quick", action="store_true", help="tiny sizes: checks every path in about a minute")
    add("--out", type=Path, default=None, help="default results/train_overhead[-quick].json")
    args = parser.parse_args(argv)
    if args.quick:  # small sizes, except where the command line chose its own
        for key, value in QUICK.items():
            if getattr(args, key) == parser.get_default(key):
                setattr(args, key, value)
    if args.out is None:
        args.out = RESULTS / f"train_overhead{'-quick' if args.quick else ''}.json"
    return args


def _alternate(
    job: Callable[[int], dict[str, Any]], bare: Callable[[int], dict[str, Any]], rounds: int
) -> list[dict[str, dict[str, Any]]]:
    """Both arms each round; the job goes first in even rounds, the bare arm in odd ones."""
    out = []
    for index in range(rounds):
        order = [("job", job), ("bare", bare)]
        row = {name: arm(index) for name, arm in (order if index % 2 == 0 else order[::-1])}
        row["first"] = {"arm": order[index % 2][0]}
        out.append(row)
    return out


def run_section(name: str, work: Path, args: argparse.Namespace) -> dict[str, Any]:
    module: Any = SECTIONS[name]
    started = time.perf_counter()
    bench = module.setup(work / name, args)
    setup_s = time.perf_counter() - started
    if args.warmup or name == "maps":  # first calls load code and caches: left out
        module.run_job_arm(bench, -1)
        module.run_bare_arm(bench, -1)
    rounds = _alternate(
        lambda i: module.run_job_arm(bench, i), lambda i: module.run_bare_arm(bench, i), args.rounds
    )
    ratios = module.ratios(rounds)
    print(f"{name}: {json.dumps(ratios)}", flush=True)
    return {"setup_s": round(setup_s, 1), "rounds": rounds, "ratios": ratios} | _describe(
        name, bench
    )


def _describe(name: str, bench: Any) -> dict[str, Any]:
    if name == "finetune":
        return {"data": bench.source, "recipe": bench.fields | {"scale": "n", "device": "cpu"}}
    if name.startswith("agbp"):
        return {"config": bench.config, "images": len(bench.pairs)}
    return {"images": len(bench.arrays), "batch": bench.batch, "fit": bench.fit}


def machine(threads: int) -> dict[str, Any]:
    import torch
    import ultralytics

    return provenance.machine() | {
        "torch_threads": threads,
        "torch": torch.__version__,
        "ultralytics": ultralytics.__version__,
    }


def _aims(sections: dict[str, Any]) -> dict[str, bool]:
    met = {}
    for key, aim in AIMS.items():
        section, ratio = key.split(".")
        if section in sections:
            met[key] = sections[section]["ratios"][ratio] >= aim
    return met


def main(argv: list[str] | None = None) -> dict[str, Any]:
    from shared.ml.threads import configure_training_threads

    args = parse_args(argv)
    threads = configure_training_threads(args.threads)  # the jobs read it; bare arms copy it
    args.threads = threads
    load_before, started = os.getloadavg(), time.perf_counter()
    with tempfile.TemporaryDirectory(prefix="bench-train-overhead-") as tmp:
        sections = {name: run_section(name, Path(tmp), args) for name in args.sections}
    report = {
        "benchmark": "train_overhead: suite jobs vs the bare libraries they wrap",
        "command": " ".join(
            ["python -m benchmarks.train_overhead", *(sys.argv[1:] if argv is None else argv)]
        ),
        "quick": args.quick,
        "machine": machine(threads),
        "loadavg_start": [round(x, 2) for x in load_before],
        "loadavg_end": [round(x, 2) for x in os.getloadavg()],
        "wall_s": round(time.perf_counter() - started, 1),
        "aims": AIMS,
        "aims_met": _aims(sections),
        "sections": sections,
        "notes": "Ratios are job over bare speed (>= 1: the job is as fast), per round, then "
        "the median of rounds; each arm first runs once untimed (with --quick or "
        "--no-warmup only in the map section: elsewhere the first arm then also pays for "
        "loading code). "
        "finetune: time per epoch is ultralytics' own epoch_time "
        "(train + val + save) read by one recorder callback in both arms; the job's wall time "
        "also holds the data download, export, final evaluation and publishing. mAP is "
        "ultralytics' validator on the val split; the job keeps best.pt by mAP@0.5, bare "
        "ultralytics by its own fitness. "
        "agbp: 'bare' is the plain DataLoader loop (decode once, augment per sample); "
        "'in_memory_batch' steps on one batch made once, the floor of any loop that augments. "
        "agbp_long: the same arms on a longer job (more images per epoch), nearer a real run.",
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(report, indent=1) + "\n")
    print(json.dumps({k: v["ratios"] for k, v in sections.items()}, indent=1))
    print(f"wrote {args.out}")
    return report


if __name__ == "__main__":
    main()
