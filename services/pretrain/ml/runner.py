"""The torch side of an AGBP job: the device, one GPU or DDP over several, state bytes.

The use case (``services.pretrain.usecases.agbp_jobs``) stays torch-free, so the API can
import it; the worker hands it an ``AgbpTrainer``.
"""

from __future__ import annotations

import io
import logging
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from services.pretrain.ml.data import PairSource
from services.pretrain.ml.ddp import train_agbp_ddp
from services.pretrain.ml.train import AgbpResult, train_agbp
from services.pretrain.params import AgbpConfig
from shared.errors import UnavailableError
from shared.ml.device import resolve_device
from shared.ml.hooks import TrainHooks

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class AgbpTrainer:
    """Trains on ``device`` (auto, cpu, cuda, cuda:N); DDP when asked and several GPUs show."""

    device: str = "auto"
    ddp: bool = False

    def train(
        self, cfg: AgbpConfig, data: PairSource, hooks: TrainHooks, weights: Path | None
    ) -> AgbpResult:
        """``train_agbp`` on the resolved device, or ``train_agbp_ddp`` on every GPU.

        Raises:
            UnavailableError: the device is not there (code 'device_unavailable').
        """
        try:
            device = resolve_device(self.device)
        except RuntimeError as exc:
            raise UnavailableError(str(exc), code="device_unavailable") from exc
        gpus = torch.cuda.device_count() if device.type == "cuda" and device.index is None else 0
        if self.ddp and gpus > 1:
            log.info("AGBP with DDP on %d GPUs", gpus)
            return train_agbp_ddp(cfg, data, hooks=hooks, world=gpus, weights=weights)
        return train_agbp(cfg, data, hooks=hooks, device=device, weights=weights)

    def encode(self, state: Mapping[str, Any]) -> bytes:
        """``torch.save`` bytes of a checkpoint or a state_dict."""
        buffer = io.BytesIO()
        torch.save(dict(state), buffer)
        return buffer.getvalue()

    def decode(self, raw: bytes) -> dict[str, Any]:
        """A state saved by ``encode``; tensors and plain types only (``weights_only``)."""
        state: dict[str, Any] = torch.load(io.BytesIO(raw), map_location="cpu", weights_only=True)
        return state
