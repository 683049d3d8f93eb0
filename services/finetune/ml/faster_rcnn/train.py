"""Training a Faster R-CNN: SGD with warm-up and cosine decay, epoch logs, resumable state."""

from __future__ import annotations

import math
import random
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch
from torch import Tensor
from torchvision.models.detection import FasterRCNN

from services.finetune.ml.faster_rcnn.data import Sample
from services.finetune.ml.faster_rcnn.model import FasterRcnnConfig, square_tensor


@dataclass
class EpochLog:
    """Mean losses of one epoch (torchvision's four, and their sum), and the optimiser's
    state after it (what a checkpoint needs to resume at the next epoch)."""

    epoch: int
    losses: dict[str, float] = field(default_factory=dict)
    optimiser: dict[str, Any] | None = field(default=None, repr=False)


@dataclass(frozen=True)
class Resume:
    """Where an interrupted run goes on: epochs done and the optimiser's saved state."""

    epochs_done: int
    optimiser: dict[str, Any]


def _target(sample: Sample, sx: float, sy: float, flip: bool, imgsz: int) -> dict[str, Tensor]:
    boxes = sample.boxes.astype(np.float32).reshape(-1, 4) * np.array([sx, sy, sx, sy], np.float32)
    if flip:
        boxes = boxes[:, [2, 1, 0, 3]] * np.array([-1, 1, -1, 1], np.float32)
        boxes[:, [0, 2]] += imgsz
    return {
        "boxes": torch.from_numpy(boxes),
        "labels": torch.from_numpy(sample.labels.astype(np.int64).reshape(-1) + 1),
    }


def _batch(
    samples: Sequence[Sample], imgsz: int, hflip: float, rng: random.Random
) -> tuple[list[Tensor], list[dict[str, Tensor]]]:
    images, targets = [], []
    for sample in samples:
        tensor, sx, sy = square_tensor(sample.image, imgsz)
        flip = rng.random() < hflip
        images.append(tensor.flip(-1) if flip else tensor)
        targets.append(_target(sample, sx, sy, flip, imgsz))
    return images, targets


def _lr_at(step: int, total: int, config: FasterRcnnConfig) -> float:
    if step < config.warmup_iters:
        return config.lr * (0.1 + 0.9 * step / max(1, config.warmup_iters))
    done = (step - config.warmup_iters) / max(1, total - config.warmup_iters)
    return config.lr * 0.5 * (1 + math.cos(math.pi * min(1.0, done)))


def train_faster_rcnn(
    model: FasterRCNN,
    samples: Sequence[Sample],
    config: FasterRcnnConfig,
    *,
    on_epoch: Callable[[EpochLog], bool] | None = None,
    should_stop: Callable[[], bool] | None = None,
    device: torch.device | None = None,
    resume: Resume | None = None,
) -> list[EpochLog]:
    """SGD over ``samples`` for ``config.epochs``; ``on_epoch`` returning False stops early,
    and so does ``should_stop`` (asked before every batch, so a cancel on a slow device
    does not wait for the epoch's end; the unfinished epoch is dropped, not logged).

    Each epoch seeds its own shuffle and torch's generator from ``(seed, epoch)``, so a run
    resumed after epoch k (``resume``, with the model's tensors from that epoch's checkpoint)
    trains the remaining epochs as the uninterrupted run would.

    Returns:
        The per-epoch mean losses of the epochs trained here.
    """
    if not samples:
        raise ValueError("no training images")
    device = device or torch.device("cpu")
    model.to(device).train()
    params = [p for p in model.parameters() if p.requires_grad]
    optimiser = torch.optim.SGD(
        params, lr=config.lr, momentum=config.momentum, weight_decay=config.weight_decay
    )
    first = 0
    if resume is not None:
        optimiser.load_state_dict(resume.optimiser)
        first = resume.epochs_done
    steps_per_epoch = math.ceil(len(samples) / config.batch)
    total, step = steps_per_epoch * config.epochs, steps_per_epoch * first
    logs: list[EpochLog] = []
    for epoch in range(first, config.epochs):
        rng = random.Random(config.seed * 100_003 + epoch)
        torch.manual_seed(config.seed * 100_003 + epoch)
        order = list(range(len(samples)))
        rng.shuffle(order)
        sums: dict[str, float] = {}
        for start in range(0, len(order), config.batch):
            if should_stop is not None and should_stop():
                model.eval()
                return logs
            chosen = [samples[i] for i in order[start : start + config.batch]]
            images, targets = _batch(chosen, config.imgsz, config.hflip, rng)
            losses = model([i.to(device) for i in images], [
                {k: v.to(device) for k, v in t.items()} for t in targets
            ])  # fmt: skip
            loss = sum(losses.values(), torch.zeros((), device=device))
            for group in optimiser.param_groups:
                group["lr"] = _lr_at(step, total, config)
            optimiser.zero_grad(set_to_none=True)
            loss.backward()
            optimiser.step()
            step += 1
            for name, value in {**losses, "loss": loss}.items():
                sums[name] = sums.get(name, 0.0) + float(value.detach())
        log = EpochLog(
            epoch + 1, {k: v / steps_per_epoch for k, v in sums.items()}, optimiser.state_dict()
        )
        logs.append(log)
        if on_epoch is not None and on_epoch(log) is False:
            break
    model.eval()
    return logs
