"""What a pseudo-label job keeps of the images it has labelled, in memory of a fixed size.

The COCO document is written to a scratch file as each image's boxes come, the summary's box
statistics keep counts and spill the area ratios to another scratch file (numpy reads it back
for their mean and median), and the example overlays keep the best few images only.
Scratch files sit in a folder named after the job, emptied when the job starts (a redelivered
job overwrites what a killed run left) and removed when it ends. cv2-free, like the use case.
"""

from __future__ import annotations

import json
import math
import shutil
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path
from types import TracebackType
from typing import IO, Any, Generic, Self, TypeVar

import numpy as np

T = TypeVar("T")


@contextmanager
def job_scratch(root: Path, job_id: str) -> Iterator[Path]:
    """An empty folder ``<root>/scratch/pseudo-labels-<job_id>``, removed afterwards.

    Named by the job, so a redelivery of a job whose worker was killed (the ``finally`` never
    ran) empties what that run left before writing its own.
    """
    folder = root / "scratch" / f"pseudo-labels-{job_id}"
    shutil.rmtree(folder, ignore_errors=True)  # a killed earlier delivery of this job
    folder.mkdir(parents=True)
    try:
        yield folder
    finally:
        shutil.rmtree(folder, ignore_errors=True)


class ClosingFiles:
    """Closes its scratch files (``_files``) on leaving a ``with`` block."""

    _files: list[IO[Any]]

    def __enter__(self) -> Self:
        return self

    def __exit__(
        self,
        kind: type[BaseException] | None,
        error: BaseException | None,
        trace: TracebackType | None,
    ) -> None:
        self.close()

    def close(self) -> None:
        for handle in self._files:
            handle.close()


def _entry(value: Any, first: bool, indent: str) -> str:
    """``value`` as ``json.dumps(document, indent=1)`` writes it as a list item ``indent`` deep."""
    text = json.dumps(value, indent=1).replace("\n", "\n" + indent)
    return ("\n" if first else ",\n") + indent + text


class CocoStream(ClosingFiles):
    """A COCO document written as its images come, byte for byte ``json.dumps(doc, indent=1)``.

    The document of agssp-spec §3 step 13 (``images``, ``annotations``, ``categories``):
    ``images`` entries go straight to ``annotations.json``, ``annotations`` to a side file
    appended on ``finish``, so neither list is ever held in memory.
    """

    def __init__(self, folder: Path, categories: list[dict[str, Any]]) -> None:
        self.path = folder / "annotations.json"
        self._boxes_path = folder / "annotations.part"
        self._doc = open(self.path, "w", encoding="utf-8", newline="")  # noqa: SIM115
        self._boxes = open(self._boxes_path, "w", encoding="utf-8", newline="")  # noqa: SIM115
        self._files = [self._doc, self._boxes]
        self._categories = categories
        self.images = 0
        self.annotations = 0
        self._doc.write('{\n "images": [')

    def add(self, image: dict[str, Any], annotations: Sequence[dict[str, Any]]) -> None:
        """Append one image's entry and its annotations (ids already numbered)."""
        self._doc.write(_entry(image, self.images == 0, "  "))
        self.images += 1
        for annotation in annotations:
            self._boxes.write(_entry(annotation, self.annotations == 0, "  "))
            self.annotations += 1

    def finish(self) -> Path:
        """Close the document; returns its path."""
        self._boxes.close()
        self._doc.write(("\n ]" if self.images else "]") + ',\n "annotations": [')
        with open(self._boxes_path, encoding="utf-8", newline="") as boxes:
            shutil.copyfileobj(boxes, self._doc)
        self._doc.write("\n ]" if self.annotations else "]")
        categories = json.dumps(self._categories, indent=1).replace("\n", "\n ")
        self._doc.write(f',\n "categories": {categories}\n}}')
        self._doc.close()
        self._boxes_path.unlink()
        return self.path


class AreaRatios(ClosingFiles):
    """Box area ratios appended to a float64 scratch file; their mean and median.

    ``mean`` and ``median`` are ``np.mean`` / ``np.median`` over a read-only memory map of
    the file, so they equal numpy's over the whole list exactly; only the median's partition
    copies the values (8 bytes a box, for the moment it runs).
    """

    def __init__(self, path: Path) -> None:
        self._file = open(path, "w+b")  # noqa: SIM115 - closed by close()
        self._files = [self._file]
        self.count = 0
        self.minimum = math.inf
        self.maximum = -math.inf

    def add(self, ratios: Sequence[float]) -> None:
        """Append one image's ratios."""
        if not ratios:
            return
        self._file.write(np.asarray(ratios, dtype=np.float64).tobytes())
        self.count += len(ratios)
        self.minimum = min(self.minimum, *ratios)
        self.maximum = max(self.maximum, *ratios)

    def mean(self) -> float:
        """``np.mean`` of every ratio (0.0 for none)."""
        return float(np.mean(self._values())) if self.count else 0.0

    def median(self) -> float:
        """``np.median`` of every ratio (0.0 for none)."""
        return float(np.median(self._values())) if self.count else 0.0

    def _values(self) -> np.memmap[Any, np.dtype[np.float64]]:
        self._file.flush()
        return np.memmap(self._file.name, dtype=np.float64, mode="r", shape=(self.count,))


class BoxTally:
    """The summary's box statistics, counted image by image (``CategorySummary`` fields)."""

    def __init__(self, ratios: AreaRatios) -> None:
        self.ratios = ratios
        self.images = 0
        self.images_with_boxes = 0

    def add(self, ratios: Sequence[float]) -> None:
        """Count one image with the area ratios of its boxes."""
        self.images += 1
        self.images_with_boxes += bool(ratios)
        self.ratios.add(ratios)

    def summary(self) -> dict[str, Any]:
        """What ``ml.pseudo_boxes.summarize`` gives for the same images, in its field order."""
        ratios, images = self.ratios, max(self.images, 1)
        some = ratios.count > 0
        return {
            "images": self.images,
            "images_with_boxes": self.images_with_boxes,
            "share_with_boxes": self.images_with_boxes / images,
            "boxes_per_image": ratios.count / images,
            "mean_area_ratio": ratios.mean(),
            "median_area_ratio": ratios.median(),
            "min_area_ratio": ratios.minimum if some else 0.0,
            "max_area_ratio": ratios.maximum if some else 0.0,
        }


class TopExamples(Generic[T]):
    """The ``count`` items of lowest ``rank`` seen so far, ties to the earliest (a stable sort)."""

    def __init__(self, count: int, rank: Callable[[T], tuple[bool, float]]) -> None:
        self.count = count
        self._rank = rank
        self._best: list[tuple[tuple[bool, float], int, T]] = []

    def offer(self, index: int, item: T) -> None:
        """Keep the item at ``index`` of the pool if it is among the best so far."""
        if self.count == 0:
            return
        self._best.append((self._rank(item), index, item))
        if len(self._best) > self.count:
            self._best.remove(max(self._best, key=lambda entry: entry[:2]))

    def best(self) -> list[tuple[int, T]]:
        """(pool index, item) of the kept items, best first."""
        return [(index, item) for _, index, item in sorted(self._best, key=lambda e: e[:2])]
