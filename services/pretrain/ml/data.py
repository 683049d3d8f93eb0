"""AGBP data: the ``PairSource`` protocol, dataset and resumable sampler.

The service implements ``PairSource`` over object storage; everything here is pure.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any, Protocol

import numpy as np
import torch
from numpy.typing import NDArray
from torch import Tensor
from torch.utils.data import Dataset, DistributedSampler

from services.pretrain.ml.augment import AugmentConfig, joint_augment
from shared.errors import InvalidInputError


class PairSource(Protocol):
    """Indexable (image, anomaly map, category index) triples."""

    def __len__(self) -> int:
        """Number of pairs."""
        ...

    def __getitem__(self, index: int) -> tuple[NDArray[np.uint8], NDArray[np.float32], int]:
        """Image (H, W, 3) uint8 RGB, map (G, G) float32 raw KeAD values, category index."""
        ...


class AgbpDataset(Dataset[dict[str, Tensor]]):
    """Augmented samples of a ``PairSource``.

    Each item holds ``image`` (3, S, S) uint8 RGB, ``map`` (1, S, S) float32, ``label`` int64
    and, with ``two_views``, ``image2`` (3, S, S) uint8 drawn independently (the map follows
    view 1 only, agssp-spec §6.4.12). Normalisation happens on the device. Randomness is a
    function of (seed, epoch, index), so a sample is the same in any worker and after resume.
    """

    def __init__(
        self, source: PairSource, augment: AugmentConfig, *, seed: int, two_views: bool = False
    ) -> None:
        self.source = source
        self.augment = augment
        self.seed = seed
        self.two_views = two_views
        self.epoch = 0

    def set_epoch(self, epoch: int) -> None:
        """Select the epoch whose augmentations ``__getitem__`` draws."""
        self.epoch = epoch

    def __len__(self) -> int:
        return len(self.source)

    def __getitem__(self, index: int) -> dict[str, Tensor]:
        image, amap, label = self.source[index]
        _check_sample(index, image, amap)
        amap = amap.astype(np.float32, copy=False)
        rng = np.random.default_rng((self.seed, self.epoch, index))
        view, view_map = joint_augment(image, amap, rng, self.augment)
        item = {
            "image": _channels_first(view),
            "map": torch.from_numpy(view_map).unsqueeze(0),
            "label": torch.tensor(int(label), dtype=torch.int64),
        }
        if self.two_views:
            view2, _ = joint_augment(image, amap, rng, self.augment)
            item["image2"] = _channels_first(view2)
        return item


def _channels_first(view: NDArray[np.uint8]) -> Tensor:
    """(S, S, 3) to a contiguous (3, S, S) tensor, copied by numpy: torch's strided uint8
    copy runs on its intra-op threads and costs several times more for one image."""
    return torch.from_numpy(np.ascontiguousarray(view.transpose(2, 0, 1)))


Pair = tuple[NDArray[np.uint8], NDArray[np.float32], int]


class DecodedPairCache:
    """A ``PairSource`` that keeps the pairs it has decoded in memory, up to a byte budget.

    Decoding an image and its map costs about as much as augmenting them, and a
    ``CachedPairSource`` decodes again every epoch; pairs kept here are decoded once. The
    first pairs read are kept until ``budget_bytes`` is used; the rest are read from
    ``source`` every time. Kept arrays are read-only views, so no reader can change them.
    The cache fills in the process that reads; DataLoader workers are new processes every
    epoch, so pickles leave it out.
    """

    def __init__(self, source: PairSource, budget_bytes: int) -> None:
        self.source = source
        self.budget_bytes = budget_bytes
        self.used_bytes = 0
        self._kept: dict[int, Pair] = {}

    def __len__(self) -> int:
        return len(self.source)

    def __getitem__(self, index: int) -> Pair:
        kept = self._kept.get(index)
        if kept is not None:
            return kept
        image, amap, label = self.source[index]
        size = image.nbytes + amap.nbytes
        if self.used_bytes + size > self.budget_bytes:
            return image, amap, label
        kept = (_read_only(image), _read_only(amap), label)
        self._kept[index] = kept
        self.used_bytes += size
        return kept

    def __getstate__(self) -> dict[str, Any]:
        return self.__dict__ | {"used_bytes": 0, "_kept": {}}


def _read_only(array: NDArray[Any]) -> NDArray[Any]:
    """A read-only view (the source's own array keeps its flags)."""
    view = array.view()
    view.flags.writeable = False
    return view


def _check_sample(index: int, image: NDArray[np.uint8], amap: NDArray[np.float32]) -> None:
    if image.dtype != np.uint8 or image.ndim != 3 or image.shape[2] != 3:
        raise InvalidInputError(
            f"pair {index}: image must be (H, W, 3) uint8 RGB, got {image.shape} {image.dtype}"
        )
    if amap.ndim != 2 or not np.issubdtype(amap.dtype, np.floating):
        raise InvalidInputError(
            f"pair {index}: map must be 2-D float, got {amap.shape} {amap.dtype}"
        )


class ResumableSampler(DistributedSampler[int]):
    """``DistributedSampler`` that can start an epoch part-way through.

    Used with one replica too (``num_replicas=1, rank=0`` needs no process group), so one
    code path serves single-process and DDP runs. The order depends on (seed, epoch) only.
    """

    def __init__(
        self, dataset: Dataset[dict[str, Tensor]], *, num_replicas: int, rank: int, seed: int
    ) -> None:
        super().__init__(
            dataset, num_replicas=num_replicas, rank=rank, shuffle=True, seed=seed, drop_last=True
        )
        self.skip = 0

    def start(self, epoch: int, skip: int = 0) -> None:
        """Select the epoch and drop its first ``skip`` indices (already trained on)."""
        self.set_epoch(epoch)
        self.skip = skip

    def __iter__(self) -> Iterator[int]:
        return iter(list(super().__iter__())[self.skip :])

    def __len__(self) -> int:
        return max(self.num_samples - self.skip, 0)
