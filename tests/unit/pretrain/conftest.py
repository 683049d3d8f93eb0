"""Fixtures for the AGBP ML tests: one torch thread and a tiny synthetic pair source."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from numpy.typing import NDArray


@pytest.fixture(autouse=True)
def _one_thread() -> None:
    torch.set_num_threads(1)


class TinyPairSource:
    """``n`` random 48x48 RGB images, each with a 4x4 map holding one hot cell."""

    def __init__(self, n: int = 4, size: int = 48, grid: int = 4, classes: int = 2) -> None:
        rng = np.random.default_rng(0)
        self.images = [rng.integers(0, 256, (size, size, 3), dtype=np.uint8) for _ in range(n)]
        self.maps = []
        for i in range(n):
            amap = np.full((grid, grid), 0.1, dtype=np.float32)
            amap[i % grid, (2 * i) % grid] = 1.5
            self.maps.append(amap)
        self.labels = [i % classes for i in range(n)]

    def __len__(self) -> int:
        return len(self.images)

    def __getitem__(self, index: int) -> tuple[NDArray[np.uint8], NDArray[np.float32], int]:
        return self.images[index], self.maps[index], self.labels[index]


@pytest.fixture
def tiny_source() -> TinyPairSource:
    return TinyPairSource()
