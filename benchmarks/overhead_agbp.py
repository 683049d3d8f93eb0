"""Section (b) of ``benchmarks.train_overhead``: an AGBP job of the suite against bare torch
loops with the same backbone (timm or ultralytics), distillation objective, optimiser and
batch size.

The job runs in-process through ``run_job`` + ``run_agbp_job`` on a local-folder store of
synthetic images and maps: pairing, the cache fill, decoding and augmentation, progress
writes, checkpoints and publishing all count in its wall time. Its trainer is wrapped only
to timestamp each step (``should_stop`` runs once per step), so the steady-state step time
of the job can be set beside the bare loops'.

Two bare loops run in the bare arm, one after the other (the order alternates by round):

- ``bare`` (the ratio the aim reads): what a plain training script does for the same work.
  It decodes every pair once into memory, then a torch ``DataLoader`` (same batch, workers,
  shuffling, last partial batch dropped) draws the spec's joint augmentation
  (``joint_augment``: random resize, crop, flip, photometric distortion) per sample, and
  each batch is normalised, forwarded, backpropagated and stepped.
- ``in_memory_batch``: the same model stepping on one batch made once, no data loading at
  all: the floor no loop that must augment its data can reach.

``LONG`` is the same comparison on a longer job (``--agbp-long-images`` and
``--agbp-long-epochs``, 512 images and 2 epochs: 128 steps of 64 per epoch), section
``agbp_long``: the default job is 32 steps of 8 per epoch, far shorter than any real AGBP
run, so its fixed costs (pairing, the cache fill, publishing) and per-epoch ones (a
checkpoint, a progress write) weigh more there than in a real one.
"""

from __future__ import annotations

import argparse
import dataclasses
import itertools
import statistics
import time
import types
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
    pairs: list[tuple[str, str, int]]  # (image key, map key, category index)


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
    pairs: list[tuple[str, str, int]] = []
    for index, category in enumerate(("a", "b")):
        written = write_synthetic_source(
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
        pairs.extend((item.image_key, item.map_key, index) for item in written)
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
    return AgbpBench(settings, JobStore(store), params, config, pairs)


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
    """The plain DataLoader loop, with the in-memory-batch loop under ``in_memory_batch``."""
    loops = {"bare": _plain_loop_arm, "in_memory_batch": _in_memory_batch_arm}
    names = list(loops) if index % 2 == 0 else list(loops)[::-1]
    results = {name: loops[name](bench) for name in names}
    return results["bare"] | {"in_memory_batch": results["in_memory_batch"]}


def _bare_config(bench: AgbpBench) -> Any:
    from services.pretrain.ml.agbp_config import resolve_config
    from services.pretrain.params import AgbpConfig

    return resolve_config(AgbpConfig.model_validate(bench.config | {"num_classes": 2}))


def _in_memory_batch_arm(bench: AgbpBench) -> dict[str, Any]:
    """The same model, objective and optimiser stepping on one in-memory batch."""
    from benchmarks.pretrain import bare_marks

    total = _job_steps(bench)
    started = time.perf_counter()
    marks = bare_marks(_bare_config(bench), total)  # builds the backbone and objective, then steps
    wall = time.perf_counter() - started
    return _arm(wall, total, bench.config["batch_size"], _steady([m[0] for m in marks]))


def _plain_loop_arm(bench: AgbpBench) -> dict[str, Any]:
    """Decode once, then a torch DataLoader with the same augmentation feeds the same model."""
    from services.pretrain.ml.augment import normalize_images

    cfg = _bare_config(bench)
    started = time.perf_counter()
    objective, optimizer = _bare_model(cfg)
    loader = _plain_loader(bench, cfg)
    mean, std = cfg.mean, cfg.std
    objective.train()
    marks: list[float] = []
    for _ in range(cfg.epochs):
        for batch in loader:
            marks.append(time.perf_counter())
            batch["image"] = normalize_images(batch["image"], mean, std)
            losses = objective(batch)
            optimizer.zero_grad(set_to_none=True)
            losses["loss"].backward()
            optimizer.step()
    marks.append(time.perf_counter())
    wall = time.perf_counter() - started
    return _arm(wall, len(marks) - 1, bench.config["batch_size"], _steady(marks))


def _bare_model(cfg: Any) -> tuple[Any, Any]:
    from services.pretrain.ml.model import build_objective
    from services.pretrain.ml.optim import build_optimizer
    from shared.ml.backbones import create_backbone

    backbone = create_backbone(
        cfg.backbone,
        frozen_stages=cfg.frozen_stages,
        out_indices=cfg.stages,
        img_size=cfg.input_size,
    )
    objective = build_objective(cfg, backbone)
    return objective, build_optimizer(objective, cfg)


def _plain_loader(bench: AgbpBench, cfg: Any) -> Any:
    """A shuffling DataLoader over every pair decoded once (PIL, numpy) into memory."""
    import io

    import numpy as np
    import torch
    from PIL import Image
    from torch.utils.data import DataLoader

    from services.pretrain.ml.augment import AugmentConfig

    store = bench.jobs.store
    decoded = []
    for image_key, map_key, label in bench.pairs:
        with Image.open(io.BytesIO(store.get_bytes(image_key))) as img:
            image = np.asarray(img.convert("RGB"))
        amap = np.load(io.BytesIO(store.get_bytes(map_key))).astype(np.float32)
        decoded.append((image, amap, label))
    augment = AugmentConfig(
        crop_size=cfg.input_size,
        resize_base=cfg.resize_base,
        map_interpolation=cfg.map_interpolation,
    )
    dataset: Any = _PlainPairs(decoded, augment, np.random.default_rng(cfg.seed))
    return DataLoader(
        dataset,
        batch_size=cfg.batch_size,
        shuffle=True,
        drop_last=True,
        num_workers=cfg.num_workers,
        generator=torch.Generator().manual_seed(cfg.seed),
    )


class _PlainPairs:
    """A plain map-style dataset: decoded pairs, augmented as they are drawn."""

    def __init__(self, decoded: list[tuple[Any, Any, int]], augment: Any, rng: Any) -> None:
        self.decoded, self.augment, self.rng = decoded, augment, rng

    def __len__(self) -> int:
        return len(self.decoded)

    def __getitem__(self, index: int) -> dict[str, Any]:
        import numpy as np
        import torch

        from services.pretrain.ml.augment import joint_augment

        image, amap, label = self.decoded[index]
        view, view_map = joint_augment(image, amap, self.rng, self.augment)
        return {
            "image": torch.from_numpy(np.ascontiguousarray(view.transpose(2, 0, 1))),
            "map": torch.from_numpy(view_map).unsqueeze(0),
            "label": torch.tensor(label),
        }


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
    """Per round, job images/s over each bare loop's; median of rounds."""

    def median(key: str, bare: Any) -> float | None:
        pairs = [(r["job"][key], bare(r)[key]) for r in rounds]
        if any(job is None or other is None for job, other in pairs):
            return None  # too few steps after the warm-up (the quick mode)
        return round(statistics.median(float(a) / float(b) for a, b in pairs), 3)

    def plain(row: dict[str, Any]) -> Any:
        return row["bare"]

    def in_memory(row: dict[str, Any]) -> Any:
        return row["bare"]["in_memory_batch"]

    return {
        "job_over_bare_images_per_s": median("images_per_s", plain),
        "job_over_bare_steady_state": median("steady_images_per_s", plain),
        "job_over_in_memory_batch_images_per_s": median("images_per_s", in_memory),
        "job_over_in_memory_batch_steady_state": median("steady_images_per_s", in_memory),
    }


def setup_long(work: Path, args: Any) -> AgbpBench:
    """``setup`` with the long row's images and epochs."""
    sizes = {"agbp_images": args.agbp_long_images, "agbp_epochs": args.agbp_long_epochs}
    return setup(work, argparse.Namespace(**(vars(args) | sizes)))


LONG = types.SimpleNamespace(
    setup=setup_long, run_job_arm=run_job_arm, run_bare_arm=run_bare_arm, ratios=ratios
)
