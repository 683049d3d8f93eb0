"""Maps of a pseudo-label job between its two passes, read from the store once.

T_c and the gate need every map's maximum before the first box (agssp-spec §3 step 1), so the
job sees every map twice. The first pass shelves each map as it reads it: the first ones in
memory up to a budget, the rest appended to a scratch file in the job's scratch folder (as
many bytes as the pool's float32 maps, removed with the folder). Reading the spilled maps from
the store again instead was measured slower, on the local folder too
(``benchmarks/results/scale_labels.json``). Memory stays bounded however large the pool.
cv2-free, like the use case.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from numpy.typing import NDArray

from services.pretrain.usecases.label_outputs import ClosingFiles


@dataclass(frozen=True)
class Shelved:
    """One map's maximum and where the second pass finds the map: in memory, or at ``offset``
    of the scratch file."""

    maximum: float
    amap: NDArray[np.float32] | None
    offset: int
    shape: tuple[int, ...]


class MapShelf(ClosingFiles):
    """Maps in memory up to ``budget`` bytes, the others in the scratch file at ``path``.

    ``shelve`` is called from one thread, in pool order; after ``seal``, ``take`` may be
    called from many (positional reads, no shared file position).
    """

    def __init__(self, path: Path, budget: int) -> None:
        self._file = open(path, "w+b")  # noqa: SIM115 - closed by close()
        self._files = [self._file]
        self.budget = budget
        self.held = 0
        self.kept = 0
        self._end = 0

    def shelve(self, amap: NDArray[np.float32]) -> Shelved:
        """Keep ``amap`` (float32) in memory while the budget lasts, else write it out."""
        maximum = float(np.max(amap))
        if self.held + amap.nbytes <= self.budget:
            self.held += amap.nbytes
            self.kept += 1
            return Shelved(maximum, amap, 0, amap.shape)
        flat = np.ascontiguousarray(amap, dtype=np.float32)
        self._file.write(flat.data)
        offset, self._end = self._end, self._end + flat.nbytes
        return Shelved(maximum, None, offset, flat.shape)

    def seal(self) -> None:
        """Make every shelved map readable by ``take`` (call once, after the last ``shelve``)."""
        self._file.flush()

    def take(self, shelved: Shelved) -> NDArray[np.float32]:
        """The map ``shelved`` describes, as ``shelve`` was given it.

        Raises:
            OSError: the scratch file ended early (it was removed or cut under the job).
        """
        if shelved.amap is not None:
            return shelved.amap
        amap = np.empty(shelved.shape, dtype=np.float32)
        read = os.preadv(self._file.fileno(), [amap.data], shelved.offset)
        if read != amap.nbytes:
            raise OSError(f"map scratch file {self._file.name} ended early")
        return amap
