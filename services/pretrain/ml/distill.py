"""Distillation head and the per-backbone distillation defaults of agssp-spec §4.4."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

from torch import Tensor, nn

from services.pretrain.ml.losses import LossKind, ResizeMode, distill_loss
from services.pretrain.params import DEFAULT_FROZEN_STAGES
from shared.schemas.backbones import BACKBONE_FAMILIES, backbone_spec


@dataclass(frozen=True)
class DistillDefaults:
    """What the reference configs distil for one backbone family.

    Attributes:
        stages: distilled outputs, 0 = stem, 1..4 = stages.
        frozen_stages: stages 0..frozen_stages frozen.
        loss: distillation loss kind.
        weight: distillation loss weight.
    """

    stages: tuple[int, ...]
    frozen_stages: int
    loss: LossKind
    weight: float


# agssp-spec §4.4, translated to our stage indexing: mmyolo/mmpretrain frozen_stages=2
# (CSP, R50) and mmpretrain Swin frozen_stages=1 all freeze the stem plus the first two
# stages, i.e. our 2 (``DEFAULT_FROZEN_STAGES``); the distilled stages are the backbone
# table's (mmpretrain out_indices (2, 3) of ResNet = our (3, 4), Swin (3,) = our (4,)). The
# loss and its weight per family are the backbone-family table's
# (``shared.schemas.backbones.BACKBONE_FAMILIES``).


def distill_defaults(backbone_name: str) -> DistillDefaults:
    """Defaults for a registered backbone name (see ``shared.schemas.backbones``)."""
    spec = backbone_spec(backbone_name)
    traits = BACKBONE_FAMILIES[spec.family]
    loss, weight = traits.distill_loss, traits.distill_weight
    return DistillDefaults(spec.stages, DEFAULT_FROZEN_STAGES, loss, weight)


class DistillHead(nn.Module):
    """Parameter-free head: attention maps of all outputs against the anomaly map.

    Reference semantics of MultiLayerDistillHead (agssp-spec §4.2): one loss per output,
    plain sum, unweighted here (the objective applies the weight).
    """

    def __init__(self, kind: LossKind = "cosine", resize: ResizeMode = "chained") -> None:
        super().__init__()
        self.kind: LossKind = kind
        self.resize: ResizeMode = resize

    def forward(self, features: Sequence[Tensor], target: Tensor) -> Tensor:
        """Loss of (B, C_j, h_j, w_j) features against a (B, 1, H, W) map; a scalar."""
        return distill_loss(features, target, kind=self.kind, resize=self.resize)
