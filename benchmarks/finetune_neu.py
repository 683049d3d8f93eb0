"""CPU finetune of YOLOv8n from scratch on NEU-DET through the finetune service's own paths.

NEU-DET (``../shared/data/neu-det``, VOC XML) is imported with the service's VOC import
(image checks, 90/10 split by seed with byte-identical duplicates kept together), trained
for a few epochs with ultralytics on the CPU and scored with COCO mAP (pycocotools) on the
val split. Writes ``benchmarks/results/finetune_neu.json``.

    python -m benchmarks.finetune_neu [--epochs 3] [--imgsz 320] [--batch 16]
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import sys
import tempfile
import time
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import torch

from services.finetune.config import FinetuneSettings
from services.finetune.params import DatasetImportParams
from services.finetune.runtime.yolo_backend import TORCH
from services.finetune.usecases.comparisons import parse_inits, run_comparison
from services.finetune.usecases.datasets import import_local_dataset
from shared.config import CommonSettings, PathSettings
from shared.storage.filesystem import FileObjectStore

ROOT = Path(__file__).resolve().parents[1]
DEFAULT_DATA = ROOT.parent / "shared" / "data" / "neu-det"


def _arguments() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--data", type=Path, default=DEFAULT_DATA)
    parser.add_argument("--epochs", type=int, default=3)
    parser.add_argument("--imgsz", type=int, default=320)
    parser.add_argument("--batch", type=int, default=16)
    parser.add_argument("--seed", type=int, default=2024)
    parser.add_argument("--val-fraction", type=float, default=0.1)
    parser.add_argument("--out", type=Path, default=ROOT / "benchmarks/results/finetune_neu.json")
    return parser.parse_args()


def _machine() -> dict[str, Any]:
    import ultralytics

    return {
        "platform": platform.platform(),
        "processor": platform.processor() or platform.machine(),
        "cpu_count": os.cpu_count(),
        "torch_threads": torch.get_num_threads(),
        "python": platform.python_version(),
        "torch": torch.__version__,
        "ultralytics": ultralytics.__version__,
    }


def run(args: argparse.Namespace, work: Path) -> dict[str, Any]:
    """Import, train from scratch, evaluate; returns the result document."""
    settings = FinetuneSettings(
        common=CommonSettings(paths=PathSettings(home=work)), device="cpu", work_dir=str(work)
    )
    store = FileObjectStore(work / "store")
    params = DatasetImportParams(
        name="neu-det",
        prefix="local/",
        format="voc",
        val_fraction=args.val_fraction,
        seed=args.seed,
        split_method="shuffle",  # the split of the committed results
    )
    start = time.perf_counter()
    ref, manifest = import_local_dataset(store, args.data, params, "bench", settings)
    import_s = time.perf_counter() - start
    fields = {
        "scale": "n",
        "epochs": args.epochs,
        "imgsz": args.imgsz,
        "batch": args.batch,
        "seed": args.seed,
    }
    start = time.perf_counter()
    (row,) = run_comparison(
        store,
        settings,
        str(ref),
        parse_inits("scratch"),
        fields,
        work / "run",
        on_progress=lambda _, pct, msg: print(f"{msg} ({time.perf_counter() - start:.0f} s)"),
        backends=lambda family: TORCH,
    )
    run_s = time.perf_counter() - start
    return {
        "dataset": {k: manifest[k] for k in ("images", "boxes", "classes", "splits", "duplicates")},
        "model": "yolov8n",
        "init": "scratch",
        **fields,
        "device": "cpu",
        "timings_s": {
            "import": round(import_s, 1),
            "train": round(row.train_s, 1),
            "per_epoch": round(row.train_s / max(row.epochs, 1), 1),
            "data_and_evaluation": round(run_s - row.train_s, 1),
            "total": round(import_s + run_s, 1),
        },
        "epochs_completed": row.epochs,
        "map50": row.map50,
        "map50_95": row.map50_95,
        "per_class": row.per_class,
    }


def main() -> None:
    args = _arguments()
    load_before = os.getloadavg()
    with tempfile.TemporaryDirectory(prefix="finetune-neu-") as tmp:
        result = run(args, Path(tmp))
    document = {
        "benchmark": "finetune_neu",
        "command": " ".join(
            [Path(sys.executable).name, "-m", "benchmarks.finetune_neu", *sys.argv[1:]]
        ),
        "created_at": datetime.now(UTC).isoformat(timespec="seconds"),
        "machine": _machine(),
        "loadavg_before": [round(x, 2) for x in load_before],
        "loadavg_after": [round(x, 2) for x in os.getloadavg()],
        **result,
        "notes": "mAP is COCO-style (pycocotools, 101-point, area all) on the val split; "
        "a few CPU epochs from scratch only show the pipeline works, not paper accuracy "
        "(agssp-spec §5.4 trains 300-500 epochs at 640 px). The machine is shared: see loadavg.",
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(document, indent=1) + "\n", encoding="utf-8")
    print(json.dumps({k: document[k] for k in ("timings_s", "map50", "map50_95")}, indent=1))


if __name__ == "__main__":
    main()
