"""A stand-in for a contributor's new CLIP method (used by ``test_catalog.py``): KeAD's
scoring with every map halved, so its answers are told apart from KeAD's."""

from __future__ import annotations

import dataclasses

from torch import Tensor

from services.anomaly_map.ml.clip.outputs import KeadOutput, MemoryBank
from services.anomaly_map.ml.kead.scorer import KeadModel


class HalfKead(KeadModel):
    """KeAD with the fused map and the image score halved."""

    def score(self, images: Tensor, text: Tensor, bank: MemoryBank | None = None) -> KeadOutput:
        out = super().score(images, text, bank)
        return dataclasses.replace(
            out, anomaly_map=out.anomaly_map * 0.5, image_score=out.image_score * 0.5
        )
