"""Seam: the output of a dataset map job (anomaly_map writes it, pretrain and pipeline read it).

Under the job's output prefix ``<out>`` (default ``maps/<category>/<job id>/``):

* ``<out>/maps/<relative path without extension>.npy`` per image: float32, 2-D (G, G), the
  raw fused map at patch-grid resolution (agssp-spec §1.9: no smoothing, no normalisation).
  The relative path is the image key below the input prefix, so a flat prefix gives
  ``<out>/maps/<stem>.npy`` with the FULL stem (``a.b.jpg`` -> ``a.b.npy``, agssp-spec §6.2).
* ``<out>/scores.csv``: header ``SCORES_HEADER``, one row per image in key order.
* ``<out>/manifest.json``: a ``DatasetMapManifest``; written last, so its presence means the
  output is complete. ``maps`` holds absolute store keys (image key -> map key).

Maps a user brings without a manifest pair with their images by file stem (the reader's job).
Pure Python and pydantic: both sides import it without numpy or torch.
"""

from __future__ import annotations

import csv
import io
import json
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import PurePosixPath
from typing import Any

from pydantic import BaseModel, ConfigDict, Field, ValidationError

from shared.errors import InvalidInputError

MAPS_DIR = "maps/"
MAP_SUFFIX = ".npy"
SCORES_FILE = "scores.csv"
MANIFEST_FILE = "manifest.json"
SCORES_HEADER = ("image_key", "image_score", "zero_shot_score", "map_max")
IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png", ".bmp", ".tif", ".tiff")


class DatasetMapManifest(BaseModel):
    """``manifest.json`` of a dataset map output; unknown fields are ignored on read."""

    model_config = ConfigDict(extra="ignore", allow_inf_nan=False)

    category: str
    count: int = Field(ge=0, description="maps written")
    maps: dict[str, str] = Field(description="image key -> map key (absolute store keys)")
    skipped: dict[str, str] = Field(default_factory=dict, description="image key -> reason")
    job_id: str | None = None
    category_version: str | None = None
    model: str | None = None
    mode: str | None = Field(None, description="kead, winclip, tocoad, or provided maps")
    grid: int | None = Field(None, ge=1, description="map side G")
    map_format: str | None = None
    created_at: str | None = None
    scores: str | None = Field(None, description="key of scores.csv")
    tocoad: dict[str, Any] | None = Field(None, description="fitted ToCoAD model lineage")

    def to_bytes(self) -> bytes:
        return self.model_dump_json(indent=1, exclude_none=True).encode()

    @classmethod
    def from_bytes(cls, raw: bytes, key: str = MANIFEST_FILE) -> DatasetMapManifest:
        """Parse a manifest; raises InvalidInputError (code ``bad_manifest``) naming ``key``."""
        try:
            return cls.model_validate(json.loads(raw))
        except (ValueError, ValidationError) as exc:
            raise InvalidInputError(
                f"{key} is not a dataset-map manifest: {exc}", code="bad_manifest"
            ) from exc


def manifest_key(output_prefix: str) -> str:
    return f"{output_prefix}{MANIFEST_FILE}"


def scores_key(output_prefix: str) -> str:
    return f"{output_prefix}{SCORES_FILE}"


def output_prefixes(maps_prefix: str) -> list[str]:
    """Where a manifest may sit for ``maps_prefix``: the prefix itself and, when it names the
    ``maps/`` folder, the job output prefix above it."""
    prefixes = [maps_prefix]
    if maps_prefix.endswith(MAPS_DIR):
        prefixes.append(maps_prefix[: -len(MAPS_DIR)])
    return prefixes


def is_image_key(key: str) -> bool:
    return PurePosixPath(key).suffix.lower() in IMAGE_SUFFIXES


def is_map_key(key: str) -> bool:
    return key.endswith(MAP_SUFFIX)


def relative_stem(key: str, prefix: str) -> str:
    """Key below ``prefix`` without its extension: ``p/sub/a.b.jpg`` -> ``sub/a.b``."""
    relative = key[len(prefix) :] if key.startswith(prefix) else key
    path = PurePosixPath(relative)
    return str(path.with_suffix("")) if path.suffix else relative


def map_keys(image_keys: Sequence[str], prefix: str, output_prefix: str) -> dict[str, str]:
    """Map key of every image; refuses two images that would write the same map.

    Raises:
        InvalidInputError: ``map_name_collision`` naming the clashing images.
    """
    out: dict[str, str] = {}
    owners: dict[str, str] = {}
    for key in image_keys:
        target = f"{output_prefix}{MAPS_DIR}{relative_stem(key, prefix)}{MAP_SUFFIX}"
        if target in owners:
            raise InvalidInputError(
                f"images {owners[target]!r} and {key!r} would both write {target!r}; "
                "keep one image per name (extension aside)",
                code="map_name_collision",
            )
        owners[target] = key
        out[key] = target
    return out


@dataclass(frozen=True)
class ScoreRow:
    """One line of ``scores.csv``; ``zero_shot_score`` is NaN for methods without text."""

    image_key: str
    image_score: float
    zero_shot_score: float
    map_max: float


def scores_csv(rows: Iterable[ScoreRow]) -> bytes:
    buffer = io.StringIO()
    writer = csv.writer(buffer, lineterminator="\n")
    writer.writerow(SCORES_HEADER)
    for row in sorted(rows, key=lambda r: r.image_key):
        values = (row.image_score, row.zero_shot_score, row.map_max)
        writer.writerow([row.image_key, *(f"{v:.6f}" for v in values)])
    return buffer.getvalue().encode()


def read_scores_csv(raw: bytes, key: str = SCORES_FILE) -> list[ScoreRow]:
    """Rows of a ``scores.csv``.

    Raises:
        InvalidInputError: another header, or a value that is not a number (``bad_scores``).
    """
    reader = csv.reader(io.StringIO(raw.decode("utf-8-sig")))
    header = tuple(name.strip() for name in next(reader, ()))
    if header != SCORES_HEADER:
        raise InvalidInputError(
            f"{key} has header {list(header)}; expected {list(SCORES_HEADER)}", code="bad_scores"
        )
    return [_score_row(line, key) for line in reader if line]


def _score_row(line: list[str], key: str) -> ScoreRow:
    if len(line) != len(SCORES_HEADER):
        raise InvalidInputError(f"{key}: row {line} has {len(line)} fields", code="bad_scores")
    try:
        return ScoreRow(line[0], float(line[1]), float(line[2]), float(line[3]))
    except ValueError:
        raise InvalidInputError(f"{key}: row {line} has a non-number", code="bad_scores") from None
