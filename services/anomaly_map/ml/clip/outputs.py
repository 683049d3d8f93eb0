"""Result and memory-bank types shared by the KeAD and WinCLIP scorers, and their protocol."""

from __future__ import annotations

import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Protocol

import numpy as np
import torch
from torch import Tensor

from services.anomaly_map.ml.clip.encoder import map_levels
from services.anomaly_map.ml.clip.prompts import CategoryDescription
from shared.errors import InvalidInputError

# The name of the method whose scorer built a bank (a ``params.catalog`` row's name).
Method = str
_LEVEL_KEY = re.compile(r"^([a-z][a-z0-9_-]*)\.level\.(\d+)$")
_NUM_IMAGES_KEY = "num_images"


@dataclass(frozen=True)
class KeadOutput:
    """Scores for a batch of images; the same type for KeAD and WinCLIP.

    Attributes:
        anomaly_map: fused map M at patch-grid resolution, (B, G, G); raw values (KeAD
            few-shot: ~0..2), no smoothing or normalisation (agssp-spec §1.9).
        zero_shot_map: text-only map M0, (B, G, G), values in (0, 1).
        few_shot_map: memory-bank map Mf, (B, G, G); None in zero-shot mode.
        image_score: final image score s, (B,).
        zero_shot_image_score: text-only image score s0, (B,).
    """

    anomaly_map: Tensor
    zero_shot_map: Tensor
    few_shot_map: Tensor | None
    image_score: Tensor
    zero_shot_image_score: Tensor


@dataclass(frozen=True)
class MemoryBank:
    """Reference embeddings of K normal images, one matrix per feature level.

    Attributes:
        method: the catalogue name of the method whose scorer built it; banks of different
            methods are not interchangeable.
        levels: level l holds (K * N_l, Dj) unit-norm rows, image-major (image 0 first).
        num_images: K.
    """

    method: Method
    levels: tuple[Tensor, ...]
    num_images: int

    def first(self, k: int) -> MemoryBank:
        """The bank restricted to its first ``k`` reference images."""
        if k >= self.num_images:
            return self
        rows = [level.shape[0] // self.num_images for level in self.levels]
        levels = tuple(level[: k * n] for level, n in zip(self.levels, rows, strict=True))
        return MemoryBank(method=self.method, levels=levels, num_images=k)

    def to(self, device: torch.device | str) -> MemoryBank:
        """Copy of the bank on ``device``; levels that are one tensor stay one tensor."""
        levels = map_levels(self.levels, lambda level: level.to(device))
        return MemoryBank(method=self.method, levels=levels, num_images=self.num_images)

    def to_state_dict(self) -> dict[str, Tensor]:
        """Flat dict of contiguous CPU tensors (safetensors / torch.save friendly)."""
        state = {
            f"{self.method}.level.{i}": level.detach().cpu().contiguous()
            for i, level in enumerate(self.levels)
        }
        state[_NUM_IMAGES_KEY] = torch.tensor(self.num_images, dtype=torch.int64)
        return state

    @classmethod
    def from_state_dict(cls, state: Mapping[str, Tensor]) -> MemoryBank:
        """Inverse of ``to_state_dict``.

        Raises:
            InvalidInputError: keys are missing, mixed between methods or not contiguous.
        """
        found = {key: _LEVEL_KEY.match(key) for key in state if key != _NUM_IMAGES_KEY}
        if _NUM_IMAGES_KEY not in state or not found or not all(found.values()):
            raise InvalidInputError(f"not a memory bank state dict: keys {sorted(state)}")
        methods = {m.group(1) for m in found.values() if m}
        indices = sorted(int(m.group(2)) for m in found.values() if m)
        if len(methods) != 1 or indices != list(range(len(indices))):
            raise InvalidInputError(f"inconsistent memory bank keys: {sorted(state)}")
        (method,) = methods
        levels = tuple(state[f"{method}.level.{i}"] for i in indices)
        return cls(method=method, levels=levels, num_images=int(state[_NUM_IMAGES_KEY].item()))


class AnomalyScorer(Protocol):
    """What the service layer needs from a scorer; KeadModel and WinClipModel both fit."""

    @property
    def image_size(self) -> int:
        """Model input side S."""
        ...

    @property
    def grid_size(self) -> int:
        """Patch-grid side G of the output maps."""
        ...

    @property
    def config_tag(self) -> str:
        """Short digest of the scorer's config (keys stored banks and text features)."""
        ...

    def preprocess(self, images: Sequence[np.ndarray]) -> Tensor:
        """uint8 (H, W, 3) RGB images -> (B, 3, S, S)."""
        ...

    def text_features(self, description: CategoryDescription) -> Tensor:
        """(Dj, 2) class text features [normal, anomalous]."""
        ...

    def build_memory_bank(self, ref_images: Tensor) -> MemoryBank:
        """Memory bank from (K, 3, S, S) normal reference images."""
        ...

    def score(self, images: Tensor, text: Tensor, bank: MemoryBank | None = None) -> KeadOutput:
        """Score (B, 3, S, S) images against text features and an optional bank."""
        ...
