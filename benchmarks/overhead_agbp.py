"""Section (b) of ``benchmarks.train_overhead``: an AGBP job of the suite against a bare
torch loop (the backbone from timm or ultralytics, the same distillation objective and
optimiser) stepping on one batch already in memory, at the same batch size.

The job runs in-process through ``run_job`` + ``run_agbp_job`` on a local-folder store of
synthetic images and maps: pairing, the cache fill, decoding and augmentation, progress
writes, checkpoints and publishing all count in its wall time. Its trainer is wrapped only
to timestamp each step (``should_stop`` runs once per step), so the steady-state step time
of the job can be set beside the bare loop's.
"""

from __future__ import annotations

import dataclasses
import itertools
import statistics
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

WARMUP_STEPS = 3  # excluded from the steady-state step time of both arms
MAP_JOB = "20260101T000000-bench000"


@dataclass
class AgbpBench:
    settings: Any
    jobs: Any
    params: dict[str, Any]
    config: dict[str, Any]


class _MarkedTrainer:
    """The worker's ``AgbpTrainer`` with a timestamp at every step boundary."""

    def __init__(self, device: str) -> None:
        from services.pretrain.ml.runner import AgbpTrainer

        self._inner = AgbpTrainer(device=device)
        self.marks: list[float] = []

    def train(self, cfg: Any, data: Any, hooks: Any, weights: Path | None) -> Any:
        inner_stop = hooks.should_stop

        def stop() -> bool:
            self.marks.append(time.perf_counter())
            return bool(inner_stop())

        return self._inner.train(cfg, data, dataclasses.replace(hooks, should_stop=stop), weights)

    def encode(self, state: Any) -> bytes:
        return self._inner.encode(state)

    def decode(self, raw: bytes) -> dict[str, Any]:
        return self._inner.decode(raw)


def setup(work: Path, args: Any) -> AgbpBench:
    """Two categories of synthetic images with maps in a local-folder store."""
    from services.pretrain.config import PretrainSettings
    from services.pretrain.stores.synthetic import write_synthetic_source
    from shared.config import CommonSettings, PathSettings
    from shared.jobs.store import JobStore
    from shared.storage.filesystem import FileObjectStore

    store = FileObjectStore(work / "store")
    for index, category in enumerate(("a", "b")):
        write_synthetic_source(
            store,
            images_prefix=f"img/{category}/",
            output_prefix=f"maps/{category}/{MAP_JOB}/",
            category=category,
            count=args.agbp_images // 2,
            size=(args.agbp_image_side, args.agbp_image_side),
            grid=15,
            seed=index,
            job_id=MAP_JOB,
        )
    sources = [
        {"category": c, "images_prefix": f"img/{c}/", "maps_prefix": f"maps/{c}/{MAP_JOB}/"}
        for c in ("a", "b")
    ]
    config = {
        "backbone": args.agbp_backbone, "epochs": args.agbp_epochs,
        "batch_size": args.agbp_batch, "input_size": args.agbp_input, "amp": False,
        "seed": args.seed, "num_workers": args.agbp_workers,
    }  # fmt: skip
    settings = PretrainSettings(
        common=CommonSettings(paths=PathSettings(home=work / "home")),
        device="cpu",
        num_workers=args.agbp_workers,
    )
    params = {"sources": sources, "config": config, "artifact_name": "agbp-bench"}
    return AgbpBench(settings, JobStore(store), params, config)


def _steady(marks: list[float]) -> float | None:
    """Median step time after the warm-up steps (None when the run had no more steps)."""
    steps = [b - a for a, b in itertools.pairwise(marks)][WARMUP_STEPS:]
    return statistics.median(steps) if steps else None


def run_job_arm(bench: AgbpBench, index: int) -> dict[str, Any]:
    """One AGBP job, run to completion (published) by the suite's runner."""
    from services.pretrain.usecases.agbp_jobs import run_agbp_job
    from shared.jobs.runner import RunnerOptions, run_job
    from shared.schemas.jobs import JobState

    trainer = _MarkedTrainer("cpu")
    record = bench.jobs.create(
        kind="agbp", task_name="pretrain.agbp", queue="pretrain", params=bench.params
    )
    started = time.perf_counter()
    done = run_job(
        record.id,
        bench.jobs,
        lambda ctx: run_agbp_job(ctx, bench.settings, trainer),
        RunnerOptions(worker="bench"),
    )
    wall = time.perf_counter() - started
    if done.state != JobState.SUCCEEDED:
        raise RuntimeError(f"AGBP job {done.id} ended {done.state}: {done.error}")
    steps = int(done.outputs["steps"])
    return _arm(wall, steps, bench.config["batch_size"], _steady(trainer.marks)) | {"job": done.id}


def run_bare_arm(bench: AgbpBench, index: int) -> dict[str, Any]:
    """The same model, objective and optimiser stepping on one in-memory batch."""
    from benchmarks.pretrain import bare_marks
    from services.pretrain.params import AgbpConfig

    cfg = AgbpConfig.model_validate(bench.config | {"num_classes": 2})
    total = _job_steps(bench)
    started = time.perf_counter()
    marks = bare_marks(cfg, total)  # builds the backbone and objective, then steps
    wall = time.perf_counter() - started
    return _arm(wall, total, bench.config["batch_size"], _steady([m[0] for m in marks]))


def _job_steps(bench: AgbpBench) -> int:
    """Steps of the job: epochs x full batches of its pairs (the job drops a last partial)."""
    pairs = sum(len(bench.jobs.store.list(s["images_prefix"])) for s in bench.params["sources"])
    return int(bench.config["epochs"] * (pairs // bench.config["batch_size"]))


def _arm(wall: float, steps: int, batch: int, steady_step_s: float | None) -> dict[str, Any]:
    return {
        "wall_s": round(wall, 2),
        "steps": steps,
        "images_per_s": round(steps * batch / wall, 2),
        "steady_step_s": None if steady_step_s is None else round(steady_step_s, 4),
        "steady_images_per_s": None if steady_step_s is None else round(batch / steady_step_s, 2),
    }


def ratios(rounds: list[dict[str, dict[str, Any]]]) -> dict[str, Any]:
    """Per round, job images/s over bare images/s; median of rounds."""

    def median(key: str) -> float | None:
        if any(r[arm][key] is None for r in rounds for arm in ("job", "bare")):
            return None  # too few steps after the warm-up (the quick mode)
        values = [float(r["job"][key]) / float(r["bare"][key]) for r in rounds]
        return round(statistics.median(values), 3)

    return {
        "job_over_bare_images_per_s": median("images_per_s"),
        "job_over_bare_steady_state": median("steady_images_per_s"),
    }
