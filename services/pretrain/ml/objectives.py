"""AGBP objectives: distillation alone and with classification, plus the loss balancer.

agssp-spec §4.5. An objective maps a batch to named losses; ``loss`` is the weighted total.
"""

from __future__ import annotations

from typing import Any, Literal

import torch
import torch.distributed as dist
import torch.nn.functional as F
from torch import Tensor, nn

from services.pretrain.ml.distill import DistillHead
from shared.ml.backbones import Backbone

# Batch keys: "image" (B, 3, S, S) normalised float, "map" (B, 1, S, S) float, "label" (B,)
# int64, and "image2" (B, 3, S, S) for two-view objectives.
Batch = dict[str, Tensor]
WeightMode = Literal["fixed", "auto"]


class LossBalancer(nn.Module):
    """``total = w_task * L_task + w_distill * L_distill``.

    ``fixed``: the given weights. ``auto`` (paper eq. 8, absent from the reference code):
    at the first call ``w_task = 1`` and ``w_distill = L_task / L_distill`` on detached
    values, then frozen. The weights are buffers, so they are saved with the objective.
    """

    def __init__(self, mode: WeightMode, *, distill_weight: float, task_weight: float) -> None:
        super().__init__()
        self.mode = mode
        self.distill_weight: Tensor
        self.task_weight: Tensor
        self.calibrated: Tensor
        self.register_buffer("distill_weight", torch.tensor(float(distill_weight)))
        self.register_buffer("task_weight", torch.tensor(float(task_weight)))
        self.register_buffer("calibrated", torch.tensor(False))
        # A host copy of a True ``calibrated``, so steps after the first read no device value.
        self._seen_calibrated = False

    def forward(self, distill: Tensor, task: Tensor | None) -> Tensor:
        """Weighted sum of two scalars; ``task`` None means distillation only."""
        if task is None:
            return self.distill_weight * distill
        if self.mode == "auto" and not self._seen_calibrated:
            if not bool(self.calibrated):
                self._calibrate(distill, task)
            self._seen_calibrated = True
        return self.task_weight * task + self.distill_weight * distill

    def _load_from_state_dict(self, *args: Any, **kwargs: Any) -> None:
        self._seen_calibrated = False  # a loaded state decides again
        super()._load_from_state_dict(*args, **kwargs)

    @torch.no_grad()
    def _calibrate(self, distill: Tensor, task: Tensor) -> None:
        ratio = task.detach().float() / distill.detach().float().clamp_min(1e-12)
        if dist.is_available() and dist.is_initialized():
            # Every rank must use the same lambda; average the first-batch ratios.
            dist.all_reduce(ratio)
            ratio /= dist.get_world_size()
        self.distill_weight.copy_(ratio)
        self.task_weight.fill_(1.0)
        self.calibrated.fill_(True)


class AgbpObjective(nn.Module):
    """Backbone + distillation head + balancer; subclasses add the task loss."""

    def __init__(self, backbone: Backbone, head: DistillHead, balancer: LossBalancer) -> None:
        super().__init__()
        self.backbone = backbone
        self.head = head
        self.balancer = balancer

    def losses(self, batch: Batch) -> tuple[Tensor, Tensor | None]:
        """Unweighted ``(distill, task)``; task is None for distillation alone."""
        raise NotImplementedError

    def on_step(self, step: int, total_steps: int) -> None:
        """Called before every optimisation step (e.g. momentum schedules)."""
        return None

    def forward(self, batch: Batch) -> dict[str, Tensor]:
        """Compute losses.

        Returns:
            ``loss`` (weighted total, differentiable), ``distill`` and, when present,
            ``task`` (both detached, unweighted).
        """
        distill, task = self.losses(batch)
        out = {"loss": self.balancer(distill, task), "distill": distill.detach()}
        if task is not None:
            out["task"] = task.detach()
        return out


class DistillObjective(AgbpObjective):
    """Distillation of the anomaly map only."""

    def losses(self, batch: Batch) -> tuple[Tensor, Tensor | None]:
        return self.head(self.backbone(batch["image"]), batch["map"]), None


class ClsDistillObjective(AgbpObjective):
    """Distillation plus category classification: GAP of the last output, linear, CE.

    agssp-spec §4.5 ImageDistillClassifier: one backbone forward feeds both heads.
    """

    def __init__(
        self,
        backbone: Backbone,
        head: DistillHead,
        balancer: LossBalancer,
        *,
        num_classes: int,
        label_smoothing: float = 0.0,
    ) -> None:
        super().__init__(backbone, head, balancer)
        self.classifier = nn.Linear(backbone.out_channels[-1], num_classes)
        self.label_smoothing = label_smoothing

    def losses(self, batch: Batch) -> tuple[Tensor, Tensor | None]:
        feats = self.backbone(batch["image"])
        logits = self.classifier(feats[-1].mean(dim=(2, 3)))
        task = F.cross_entropy(logits, batch["label"], label_smoothing=self.label_smoothing)
        return self.head(feats, batch["map"]), task
