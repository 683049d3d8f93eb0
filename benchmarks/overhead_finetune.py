"""Section (a) of ``benchmarks.train_overhead``: a finetune job of the suite against bare
ultralytics ``YOLO(<yaml>).train(...)`` on the same data, recipe, seed and thread count.

The job runs in-process through the real job runner (``submit_finetune`` + ``run_job`` +
``run_finetune_job`` on a local-folder store): its record, progress, cancel polls, per-epoch
checkpoint copies, data download, export and publishing all count. The bare arm trains on a
YOLO folder materialised from the same stored splits before the clock starts. Both arms get
the same epoch recorder, one ultralytics default callback that reads ``trainer.epoch_time``.
"""

from __future__ import annotations

import math
import shutil
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
NEU_DET = ROOT.parent / "shared" / "data" / "neu-det"
_EPOCHS: list[dict[str, Any]] = []  # filled by the recorder callback, read after each arm


class _Sender:
    """Stands for Celery: the job is run here, in-process, by ``run_job``."""

    def send_task(self, name: str, args: Any = None, **options: Any) -> None:
        pass


@dataclass
class FinetuneBench:
    """What both arms share: the store, the stored dataset and the bare arm's YOLO folder."""

    settings: Any
    jobs: Any
    dataset: str
    data_yaml: Path
    fields: dict[str, Any]
    threads: int
    source: str


def _record_epoch(trainer: Any) -> None:
    metrics = trainer.metrics or {}
    _EPOCHS.append(
        {
            "final_eval": trainer.epoch + 1 > trainer.epochs,  # final_eval() bumps the epoch
            "epoch_s": float(trainer.epoch_time or math.nan),
            "map50": float(metrics.get("metrics/mAP50(B)", math.nan)),
            "map50_95": float(metrics.get("metrics/mAP50-95(B)", math.nan)),
        }
    )


def _install_recorder() -> None:
    from ultralytics.utils.callbacks import base

    if _record_epoch not in base.default_callbacks["on_fit_epoch_end"]:
        base.default_callbacks["on_fit_epoch_end"].append(_record_epoch)


def write_synthetic_yolo(root: Path, count: int, side: int, seed: int) -> Path:
    """``count`` JPEGs with 1-3 dark or bright rectangles each, YOLO labels, two classes."""
    from PIL import Image

    rng = np.random.default_rng(seed)
    (root / "images").mkdir(parents=True, exist_ok=True)
    (root / "labels").mkdir(parents=True, exist_ok=True)
    for index in range(count):
        pixels = rng.integers(90, 160, (side, side, 3), dtype=np.uint8)
        lines = []
        for _ in range(int(rng.integers(1, 4))):
            cls = int(rng.integers(0, 2))
            w, h = (int(v) for v in rng.integers(side // 8, side // 3, 2))
            x, y = int(rng.integers(0, side - w)), int(rng.integers(0, side - h))
            pixels[y : y + h, x : x + w] = 20 if cls == 0 else 235
            lines.append(f"{cls} {(x + w / 2) / side} {(y + h / 2) / side} {w / side} {h / side}")
        Image.fromarray(pixels).save(root / "images" / f"s{index:04d}.jpg", quality=90)
        (root / "labels" / f"s{index:04d}.txt").write_text("\n".join(lines) + "\n")
    (root / "classes.txt").write_text("dark\nbright\n")
    return root


def _neu_subset(root: Path, per_class: int) -> Path:
    """The first ``per_class`` images of each NEU-DET class, VOC layout (a mini NEU-DET)."""
    for sub in ("images", "annotations"):
        (root / sub).mkdir(parents=True, exist_ok=True)
    for xml in sorted((NEU_DET / "annotations").glob("*.xml")):
        if int(xml.stem.rsplit("_", 1)[1]) <= per_class:
            shutil.copy(xml, root / "annotations" / xml.name)
            shutil.copy(NEU_DET / "images" / f"{xml.stem}.jpg", root / "images")
    return root


def setup(work: Path, args: Any) -> FinetuneBench:
    """Import the data into a store (the suite's import), materialise the bare arm's folder."""
    from services.finetune.config import FinetuneSettings
    from services.finetune.ml.materialize import materialize_yolo
    from services.finetune.params import DatasetImportParams
    from services.finetune.runtime.yolo_backend import TORCH
    from services.finetune.stores.datasets import load_split
    from services.finetune.usecases.datasets import import_local_dataset
    from shared.config import CommonSettings, PathSettings
    from shared.jobs.store import JobStore
    from shared.storage.filesystem import FileObjectStore

    settings = FinetuneSettings(
        common=CommonSettings(paths=PathSettings(home=work / "home")),
        device="cpu",
        work_dir=str(work / "jobs"),
        workers=0,
    )
    TORCH.prepare(settings)  # ultralytics offline (no downloads), before it is imported
    _install_recorder()
    neu = NEU_DET.is_dir() and not args.synthetic
    if neu:
        folder, fmt = _neu_subset(work / "source", args.ft_per_class), "voc"
    else:
        folder, fmt = write_synthetic_yolo(work / "source", args.ft_images, 128, 0), "yolo"
    store = FileObjectStore(work / "store")
    params = DatasetImportParams(
        name="bench", prefix="local/", format=fmt, val_fraction=0.2, seed=0
    )
    ref, manifest = import_local_dataset(store, folder, params, "bench", settings)
    train, images = load_split(store, ref, "train", work / "bare" / "data")
    val, _ = load_split(store, ref, "val", work / "bare" / "data")
    data = materialize_yolo(train, val, images, work / "bare" / "yolo")
    # val_every 1: bare ultralytics validates every epoch, so the job must too
    fields = {"epochs": args.ft_epochs, "batch": args.ft_batch, "imgsz": args.ft_imgsz,
              "seed": args.seed, "patience": 0, "val_every": 1}  # fmt: skip
    source = f"NEU-DET mini ({args.ft_per_class} per class)" if neu else "synthetic rectangles"
    return FinetuneBench(
        settings, JobStore(store), str(ref), data.data_yaml, fields, args.threads,
        f"{source}: {manifest['splits']}",
    )  # fmt: skip


def _summary(wall_s: float, epochs: list[dict[str, Any]]) -> dict[str, Any]:
    regular = [e for e in epochs if not e["final_eval"]]
    final = [e for e in epochs if e["final_eval"]]
    per_epoch = [e["epoch_s"] for e in regular]
    return {
        "wall_s": round(wall_s, 2),
        "epochs": len(regular),
        "epoch_s": [round(s, 2) for s in per_epoch],
        "mean_epoch_s": round(float(np.mean(per_epoch)), 3) if per_epoch else math.nan,
        "wall_per_epoch_s": round(wall_s / max(len(regular), 1), 3),
        "last_epoch_map50": regular[-1]["map50"] if regular else math.nan,
        "best_pt_map50": final[-1]["map50"] if final else math.nan,
        "best_pt_map50_95": final[-1]["map50_95"] if final else math.nan,
    }


def run_job_arm(bench: FinetuneBench, index: int) -> dict[str, Any]:
    """One finetune job, submitted and run to completion by the suite's own runner."""
    from services.finetune.ml.backend import load_backend
    from services.finetune.params import FinetuneJobParams, InitParams
    from services.finetune.usecases.finetune_jobs import run_finetune_job, submit_finetune
    from shared.jobs.runner import RunnerOptions, run_job
    from shared.schemas.jobs import JobState

    params = FinetuneJobParams(
        dataset=bench.dataset, init=InitParams(kind="scratch"), scale="n",
        config=bench.fields, model_name=f"bench-{index}",
    )  # fmt: skip
    _EPOCHS.clear()
    started = time.perf_counter()
    record = submit_finetune(_Sender(), bench.jobs, params)
    done = run_job(
        record.id,
        bench.jobs,
        lambda ctx: run_finetune_job(ctx, bench.settings, load_backend),
        RunnerOptions(worker="bench"),
    )
    wall = time.perf_counter() - started
    if done.state != JobState.SUCCEEDED:
        raise RuntimeError(f"finetune job {done.id} ended {done.state}: {done.error}")
    return _summary(wall, list(_EPOCHS)) | {"job": done.id}


def run_bare_arm(bench: FinetuneBench, index: int) -> dict[str, Any]:
    """``YOLO("yolov8n.yaml").train(...)`` with the job's own ultralytics arguments."""
    import torch

    from services.finetune.ml.yolov8.offline import import_ultralytics
    from shared.schemas.detector import FinetuneConfig

    yolo_class = import_ultralytics("ultralytics.models.yolo.model").YOLO
    torch_utils = import_ultralytics("ultralytics.utils.torch_utils")

    config = FinetuneConfig.model_validate(bench.fields | {"scale": "n", "workers": 0})
    args = config.ultralytics_args("cpu")  # the recipe, exactly as the job hands it over
    torch_utils.NUM_THREADS = bench.threads  # else select_device pins cpu_count - 1 threads
    torch.set_num_threads(bench.threads)
    _EPOCHS.clear()
    started = time.perf_counter()
    model = yolo_class("yolov8n.yaml")
    save_dir = Path(bench.settings.resolved_work_dir()) / f"bare-{index}"
    model.train(data=str(bench.data_yaml), save_dir=str(save_dir), **args)
    wall = time.perf_counter() - started
    shutil.rmtree(save_dir, ignore_errors=True)
    return _summary(wall, list(_EPOCHS)) | {"torch_threads": torch.get_num_threads()}


def ratios(rounds: list[dict[str, dict[str, Any]]]) -> dict[str, Any]:
    """Per round, bare time over job time (>= 1 means the job is as fast); median of rounds."""
    epoch = [r["bare"]["mean_epoch_s"] / r["job"]["mean_epoch_s"] for r in rounds]
    wall = [r["bare"]["wall_s"] / r["job"]["wall_s"] for r in rounds]
    return {
        "job_over_bare_speed_per_epoch": round(float(np.median(epoch)), 3),
        "job_over_bare_speed_wall": round(float(np.median(wall)), 3),
        "map50_best_pt": {
            arm: [r[arm]["best_pt_map50"] for r in rounds] for arm in ("job", "bare")
        },
    }
