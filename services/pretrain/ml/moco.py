"""MoCo v3 + AGBP: two-view contrastive learning with distillation on view 1.

agssp-spec §4.5 (MoCoV3_Distill, no released config): momentum encoder updated by a cosine
EMA, symmetric contrastive loss; the anomaly map follows view 1's geometry.
"""

from __future__ import annotations

import copy
import math

import torch
import torch.distributed as dist
import torch.nn.functional as F
from torch import Tensor, nn

from services.pretrain.ml.distill import DistillHead
from services.pretrain.ml.objectives import AgbpObjective, Batch, LossBalancer
from shared.ml.backbones import Backbone


def build_mlp(
    in_dim: int, hidden_dim: int, out_dim: int, layers: int, last_bn: bool
) -> nn.Sequential:
    """MoCo v3 MLP: (Linear, BN, ReLU) x (layers - 1), Linear, optional affine-free BN."""
    modules: list[nn.Module] = []
    dim = in_dim
    for _ in range(layers - 1):
        modules += [nn.Linear(dim, hidden_dim, bias=False), nn.BatchNorm1d(hidden_dim), nn.ReLU()]
        dim = hidden_dim
    modules.append(nn.Linear(dim, out_dim, bias=not last_bn))
    if last_bn:
        modules.append(nn.BatchNorm1d(out_dim, affine=False))
    return nn.Sequential(*modules)


def momentum_at(step: int, total_steps: int, base: float) -> float:
    """Cosine schedule from ``base`` (step 0) to 1 (last step), as MoCo v3."""
    progress = step / max(total_steps, 1)
    return 1.0 - (1.0 - base) * (math.cos(math.pi * progress) + 1.0) / 2.0


def contrastive_loss(query: Tensor, key: Tensor, temperature: float) -> Tensor:
    """InfoNCE of (B, D) queries against (B, D) keys, positives on the diagonal, times 2T.

    Under torch.distributed the keys of all ranks are the negatives (MoCo v3).
    """
    query = F.normalize(query, dim=1)
    key = F.normalize(key, dim=1)
    offset = 0
    if dist.is_available() and dist.is_initialized():
        gathered = [torch.empty_like(key) for _ in range(dist.get_world_size())]
        dist.all_gather(gathered, key)
        offset = key.shape[0] * dist.get_rank()
        key = torch.cat(gathered)
    logits = query @ key.t() / temperature
    labels = torch.arange(query.shape[0], device=query.device) + offset
    return F.cross_entropy(logits, labels) * (2.0 * temperature)


class MocoV3DistillObjective(AgbpObjective):
    """Base encoder = backbone + projector + predictor; momentum encoder = EMA copies."""

    def __init__(
        self,
        backbone: Backbone,
        head: DistillHead,
        balancer: LossBalancer,
        *,
        dim: int = 256,
        hidden_dim: int = 4096,
        temperature: float = 0.2,
        base_momentum: float = 0.99,
    ) -> None:
        super().__init__(backbone, head, balancer)
        self.projector = build_mlp(backbone.out_channels[-1], hidden_dim, dim, 3, last_bn=True)
        self.predictor = build_mlp(dim, hidden_dim, dim, 2, last_bn=False)
        self.momentum_backbone = copy.deepcopy(backbone)
        self.momentum_projector = copy.deepcopy(self.projector)
        for param in self._momentum_params():
            param.requires_grad_(False)
        self.temperature = temperature
        self.base_momentum = base_momentum
        self.momentum = base_momentum

    def on_step(self, step: int, total_steps: int) -> None:
        self.momentum = momentum_at(step, total_steps, self.base_momentum)

    def losses(self, batch: Batch) -> tuple[Tensor, Tensor | None]:
        feats1 = self.backbone(batch["image"])
        feats2 = self.backbone(batch["image2"])
        q1 = self.predictor(self.projector(feats1[-1].mean(dim=(2, 3))))
        q2 = self.predictor(self.projector(feats2[-1].mean(dim=(2, 3))))
        with torch.no_grad():
            self._update_momentum_encoder()
            k1 = self._key(batch["image"])
            k2 = self._key(batch["image2"])
        task = contrastive_loss(q1, k2, self.temperature) + contrastive_loss(
            q2, k1, self.temperature
        )
        # Distillation on view 1 only; the batch's map was transformed with view 1.
        return self.head(feats1, batch["map"]), task

    def _key(self, image: Tensor) -> Tensor:
        key: Tensor = self.momentum_projector(self.momentum_backbone(image)[-1].mean(dim=(2, 3)))
        return key

    def _online_params(self) -> list[nn.Parameter]:
        return [*self.backbone.parameters(), *self.projector.parameters()]

    def _momentum_params(self) -> list[nn.Parameter]:
        return [*self.momentum_backbone.parameters(), *self.momentum_projector.parameters()]

    def _update_momentum_encoder(self) -> None:
        m = self.momentum
        for online, ema in zip(self._online_params(), self._momentum_params(), strict=True):
            ema.mul_(m).add_(online.detach(), alpha=1.0 - m)
