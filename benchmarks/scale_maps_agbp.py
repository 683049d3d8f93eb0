"""Part (c) of ``benchmarks.scale_maps``: the AGBP job's data path against a bare step.

The data path is the job's own, from the same parts ``run_agbp_job`` and ``train_agbp`` use:
pairing and the cache fill from the store (timed once, as images/s), then per batch the
sampler, decoding, joint augmentation, collation and normalisation of a first-epoch
``DataLoader`` at the ``cpu`` pipeline preset's batch, input size and workers. The bare step
is ``benchmarks.pretrain.bare_marks``: the same backbone, objective and optimiser stepping
on one random batch already in memory.
"""

from __future__ import annotations

import itertools
import statistics
import tempfile
import time
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import torch
from torch.utils.data import DataLoader

from benchmarks.pretrain import bare_marks
from benchmarks.scale_maps_arms import CATEGORY, home, rate
from benchmarks.scale_maps_pool import POOL_PREFIX
from services.pipeline.usecases.presets import step_config
from services.pretrain.config import PretrainSettings
from services.pretrain.ml.agbp_config import required, resolve_config
from services.pretrain.ml.augment import AugmentConfig, compute_mean_std, normalize_images
from services.pretrain.ml.data import AgbpDataset, ResumableSampler
from services.pretrain.params import AgbpConfig, SourceSpec
from services.pretrain.stores.maps import collect_pairs
from services.pretrain.stores.pairs import CachedPairSource, prefetch
from shared.imaging.intake import image_limits
from shared.storage.filesystem import FileObjectStore

if TYPE_CHECKING:
    from benchmarks.scale_maps import Spec

WARMUP_STEPS = 3  # bare steps not timed (allocator and autograd warm-up)


def _agbp_config(spec: Spec) -> AgbpConfig:
    """The ``cpu`` pipeline preset's AGBP config (quick: batch 4 at 64 px)."""
    values = step_config("cpu", "agbp", "n", spec.seed, {})
    if spec.agbp_quick:
        values |= {"batch_size": 4, "input_size": 64, "resize_base": 64}
    return resolve_config(AgbpConfig.model_validate(values | {"epochs": 1}))


def _loader(cfg: AgbpConfig, source: CachedPairSource) -> DataLoader[dict[str, torch.Tensor]]:
    """The loader ``train_agbp`` builds for its first epoch, from the same parts."""
    augment = AugmentConfig(
        crop_size=required(cfg.input_size, "input_size"),
        resize_base=required(cfg.resize_base, "resize_base"),
        map_interpolation=cfg.map_interpolation,
        photometric=cfg.objective != "simmim_distill",
    )
    dataset = AgbpDataset(source, augment, seed=cfg.seed,
                          two_views=cfg.objective == "mocov3_distill")  # fmt: skip
    sampler = ResumableSampler(dataset, num_replicas=1, rank=0, seed=cfg.seed)
    sampler.start(0)
    return DataLoader(dataset, batch_size=required(cfg.batch_size, "batch_size"),
                      sampler=sampler, num_workers=cfg.num_workers, drop_last=True,
                      generator=torch.Generator().manual_seed(cfg.seed))  # fmt: skip


def _cache(spec: Spec, cache: Path) -> tuple[CachedPairSource, dict[str, Any]]:
    """Pair and copy the smallest pool and its maps out of the store, as the job does."""
    assert spec.maps_prefix is not None
    store = FileObjectStore(spec.store)
    settings = PretrainSettings(common=home(spec), device="cpu")
    source_spec = SourceSpec(
        category=CATEGORY, images_prefix=POOL_PREFIX, maps_prefix=spec.maps_prefix
    )
    started = time.perf_counter()
    pairing = collect_pairs(store, [source_spec])
    source = CachedPairSource(pairing.pairs, cache, image_limits(settings))
    prefetch(store, source, threads=settings.cache_threads(),
             on_progress=lambda d, t: None, should_stop=lambda: False)  # fmt: skip
    wall = time.perf_counter() - started
    return source, rate(wall, len(source)) | {"threads": settings.cache_threads()}


def _time_loading(cfg: AgbpConfig, source: CachedPairSource, batches: int) -> list[float]:
    """Seconds per batch: sampler, decode, joint augmentation, collate and normalisation."""
    mean, std = required(cfg.mean, "mean"), required(cfg.std, "std")
    times, loader = [], iter(_loader(cfg, source))
    for _ in range(batches):
        started = time.perf_counter()
        batch = next(loader, None)
        if batch is None:
            break
        normalize_images(batch["image"], mean, std)
        times.append(time.perf_counter() - started)
    return times


def _with_statistics(cfg: AgbpConfig, source: CachedPairSource) -> AgbpConfig:
    """Mean and std from a sample of the pairs, as ``train_agbp`` sets them (untimed)."""
    count = min(cfg.stats_sample, len(source))
    sample = np.random.default_rng(cfg.seed).choice(len(source), size=count, replace=False)
    mean, std = compute_mean_std(source[int(i)][0] for i in sample)
    return cfg.model_copy(update={"mean": mean, "std": std})


def _bare_steps(cfg: AgbpConfig, steps: int) -> list[float]:
    """Seconds per bare step (forward, backward, optimiser) after the warm-up steps."""
    marks = [m[0] for m in bare_marks(cfg, steps)]
    return [b - a for a, b in itertools.pairwise(marks)][WARMUP_STEPS:]


def _timing(times: list[float], batch: int) -> dict[str, Any]:
    median = statistics.median(times)
    return {"timed": len(times), "median_s": round(median, 4),
            "mean_s": round(statistics.fmean(times), 4),
            "images_per_s": round(batch / median, 2)}  # fmt: skip


def agbp(spec: Spec) -> dict[str, Any]:
    """(c): the AGBP job's data path per batch against one bare step on random tensors."""
    cfg = _agbp_config(spec)
    with tempfile.TemporaryDirectory(prefix="agbp-cache-", dir=spec.work) as cache:
        source, fill = _cache(spec, Path(cache))
        cfg = _with_statistics(cfg, source)
        loading = _timing(_time_loading(cfg, source, spec.agbp_batches), cfg.batch_size or 0)
    step = _timing(_bare_steps(cfg, spec.agbp_steps), cfg.batch_size or 0)
    setup = {"preset": "quick (batch 4, 64 px)" if spec.agbp_quick else "cpu",
             "backbone": cfg.backbone, "objective": cfg.objective,
             "batch_size": cfg.batch_size, "input_size": cfg.input_size,
             "resize_base": cfg.resize_base, "num_workers": cfg.num_workers,
             "pairs": len(source), "warmup_steps_not_timed": WARMUP_STEPS}  # fmt: skip
    ratio = round(loading["images_per_s"] / step["images_per_s"], 3)
    return {"setup": setup, "cache_fill": fill, "loading": loading, "step": step,
            "loading_over_step": ratio}  # fmt: skip
