"""Image/map pairs of AGBP and pseudo-label jobs, read from a dataset-map output up front.

The layout is the seam ``shared.schemas.dataset_maps`` (the anomaly_map service's dataset map
job writes it): maps, the score rows and a ``DatasetMapManifest`` whose ``maps`` name each
image's map by absolute key. A source's ``maps_prefix`` may name the output prefix or its
``maps/`` folder. Pairing follows the manifest when one is found; maps a user brings without
a manifest (or whose manifest pairs nothing) pair with their images by file stem
(``<stem>.npy``, or KeAD's ``<stem>_anomaly.npy``).
"""

from __future__ import annotations

import json
import re
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass
from pathlib import PurePosixPath
from typing import Any

from services.pretrain.params import SourceSpec
from shared.errors import InvalidInputError
from shared.schemas.dataset_maps import (
    DatasetMapManifest,
    ScoreRow,
    is_image_key,
    is_map_key,
    manifest_key,
    output_prefixes,
    read_scores_csv,
    scores_key,
)
from shared.storage.base import ObjectNotFoundError, ObjectStore

REPORT_EXAMPLES = 20
KEAD_MAP_SUFFIX = "_anomaly"  # KeAD's own file naming: <stem>_anomaly.npy
_JOB_ID = re.compile(r"^\d{8}T\d{6}-[0-9a-f]{8}$")


@dataclass(frozen=True)
class Pair:
    """One training sample: image key, map key and category index."""

    image_key: str
    map_key: str
    label: int


@dataclass(frozen=True)
class StemPairing:
    """Images and maps paired by file stem; stems on several files pair with nothing."""

    matched: tuple[tuple[str, str], ...]
    images_without_maps: tuple[str, ...]
    maps_without_images: tuple[str, ...]
    duplicate_stems: tuple[str, ...]

    @property
    def complete(self) -> bool:
        """Every image has exactly one map and every map an image."""
        return not (self.images_without_maps or self.maps_without_images or self.duplicate_stems)


def pair_by_stem(image_keys: Sequence[str], map_keys: Sequence[str]) -> StemPairing:
    """Pair ``a/b/foo.jpg`` with ``x/foo.npy`` or ``x/foo_anomaly.npy``, reporting the rest."""
    images = _by_stem(image_keys, "")
    maps = _by_stem(map_keys, KEAD_MAP_SUFFIX)
    duplicates = {s for s, keys in images.items() if len(keys) > 1}
    duplicates |= {s for s, keys in maps.items() if len(keys) > 1}
    matched = sorted(
        (images[s][0], maps[s][0]) for s in images.keys() & maps.keys() if s not in duplicates
    )
    return StemPairing(
        matched=tuple(matched),
        images_without_maps=tuple(
            sorted(k for s in images.keys() - maps.keys() for k in images[s])
        ),
        maps_without_images=tuple(sorted(k for s in maps.keys() - images.keys() for k in maps[s])),
        duplicate_stems=tuple(sorted(duplicates)),
    )


def _by_stem(keys: Sequence[str], suffix: str) -> dict[str, list[str]]:
    out: dict[str, list[str]] = {}
    for key in keys:
        stem = PurePosixPath(key).stem
        if suffix and stem.endswith(suffix):
            stem = stem[: -len(suffix)]
        out.setdefault(stem, []).append(key)
    return out


@dataclass(frozen=True)
class SourceReport:
    """What pairing found for one source; keys of unpaired files are kept in full."""

    category: str
    label: int
    images_prefix: str
    maps_prefix: str
    pairing: str
    map_job_id: str | None
    images: int
    maps: int
    matched: int
    images_without_maps: tuple[str, ...]
    maps_without_images: tuple[str, ...]
    duplicate_stems: tuple[str, ...]

    def summary(self, examples: int = REPORT_EXAMPLES) -> dict[str, Any]:
        """Counts plus the first ``examples`` keys of each unpaired list (for job outputs)."""
        out = asdict(self)
        for field in ("images_without_maps", "maps_without_images", "duplicate_stems"):
            keys = out.pop(field)
            out[field] = len(keys)
            out[f"{field}_examples"] = list(keys[:examples])
        return out


@dataclass(frozen=True)
class PairingResult:
    """Pairs of every source (sources in order, images sorted) and one report per source."""

    pairs: tuple[Pair, ...]
    reports: tuple[SourceReport, ...]
    categories: tuple[str, ...]

    def to_json(self) -> bytes:
        """Full pairing, stored with the job so a resumed run trains on the same list."""
        return json.dumps(
            {
                "categories": list(self.categories),
                "pairs": [[p.image_key, p.map_key, p.label] for p in self.pairs],
                "reports": [asdict(r) for r in self.reports],
            }
        ).encode()

    @classmethod
    def from_json(cls, raw: bytes) -> PairingResult:
        doc = json.loads(raw)
        return cls(
            pairs=tuple(Pair(str(i), str(m), int(label)) for i, m, label in doc["pairs"]),
            reports=tuple(_report(r) for r in doc["reports"]),
            categories=tuple(doc["categories"]),
        )


def _report(doc: dict[str, Any]) -> SourceReport:
    fields: dict[str, Any] = {k: tuple(v) if isinstance(v, list) else v for k, v in doc.items()}
    return SourceReport(**fields)


def collect_pairs(store: ObjectStore, sources: Sequence[SourceSpec]) -> PairingResult:
    """List and pair every source; category index = position among the distinct categories.

    Raises:
        InvalidInputError: a source pairs nothing (code 'unpaired_data'); the message says
            how many images and maps were found and shows a few of them.
    """
    categories = tuple(dict.fromkeys(s.category for s in sources))
    pairs: list[Pair] = []
    reports: list[SourceReport] = []
    for spec in sources:
        label = categories.index(spec.category)
        matched, report = pair_source(store, spec, label)
        if not matched:
            raise InvalidInputError(_unpaired_message(report), code="unpaired_data")
        pairs.extend(Pair(i, m, label) for i, m in matched)
        reports.append(report)
    return PairingResult(tuple(pairs), tuple(reports), categories)


def _unpaired_message(report: SourceReport) -> str:
    shown = report.summary(examples=3)
    return (
        f"no image under {report.images_prefix!r} pairs with a map under "
        f"{report.maps_prefix!r} (category {report.category!r}): {report.images} images, "
        f"{report.maps} maps, e.g. images {shown['images_without_maps_examples']}, "
        f"maps {shown['maps_without_images_examples']}"
    )


def pair_source(
    store: ObjectStore, spec: SourceSpec, label: int
) -> tuple[list[tuple[str, str]], SourceReport]:
    """(image key, map key) pairs of one source, sorted by image key, and the report."""
    images = [k for k in store.list(spec.images_prefix) if is_image_key(k)]
    maps = [k for k in store.list(spec.maps_prefix) if is_map_key(k)]
    manifest = read_manifest(store, spec.maps_prefix)
    result = None if manifest is None else _pair_by_manifest(images, maps, manifest.maps)
    if result is None or not result.matched:
        result = pair_by_stem(images, maps)
        how = "stem"
    else:
        how = "manifest"
    return list(result.matched), SourceReport(
        category=spec.category,
        label=label,
        images_prefix=spec.images_prefix,
        maps_prefix=spec.maps_prefix,
        pairing=how,
        map_job_id=_map_job_id(manifest, spec.maps_prefix),
        images=len(images),
        maps=len(maps),
        matched=len(result.matched),
        images_without_maps=result.images_without_maps,
        maps_without_images=result.maps_without_images,
        duplicate_stems=result.duplicate_stems,
    )


def _pair_by_manifest(
    images: Sequence[str], maps: Sequence[str], mapping: Mapping[str, str]
) -> StemPairing:
    """Pairs the manifest names whose map is listed (its keys are absolute)."""
    known_maps = set(maps)
    matched: list[tuple[str, str]] = []
    without: list[str] = []
    for image in sorted(images):
        found = mapping.get(image)
        if found is None or found not in known_maps:
            without.append(image)
        else:
            matched.append((image, found))
    used = {m for _, m in matched}
    return StemPairing(tuple(matched), tuple(without), tuple(sorted(known_maps - used)), ())


def read_manifest(store: ObjectStore, maps_prefix: str) -> DatasetMapManifest | None:
    """The dataset-map manifest at or above ``maps_prefix``, or None.

    Raises:
        InvalidInputError: a manifest that is not a ``DatasetMapManifest`` (code 'bad_manifest').
    """
    for base in output_prefixes(maps_prefix):
        key = manifest_key(base)
        try:
            raw = store.get_bytes(key)
        except ObjectNotFoundError:
            continue
        return DatasetMapManifest.from_bytes(raw, key)
    return None


def _map_job_id(manifest: DatasetMapManifest | None, maps_prefix: str) -> str | None:
    if manifest is not None and manifest.job_id is not None:
        return manifest.job_id
    return next((s for s in maps_prefix.split("/") if _JOB_ID.match(s)), None)


def load_score_rows(store: ObjectStore, maps_prefix: str) -> list[ScoreRow] | None:
    """The score rows of the dataset-map output at or above ``maps_prefix``; None if absent.

    Raises:
        InvalidInputError: scores that do not follow the seam (code 'bad_scores').
    """
    for base in output_prefixes(maps_prefix):
        key = scores_key(base)
        try:
            raw = store.get_bytes(key)
        except ObjectNotFoundError:
            continue
        return read_scores_csv(raw, key)
    return None


def load_scores(store: ObjectStore, maps_prefix: str) -> dict[str, float] | None:
    """Image score per image key and per image stem from the output's scores; None if absent.

    Raises:
        InvalidInputError: scores that do not follow the seam (code 'bad_scores').
    """
    rows = load_score_rows(store, maps_prefix)
    if rows is None:
        return None
    scores: dict[str, float] = {}
    for row in rows:
        scores[row.image_key] = row.image_score
        scores.setdefault(PurePosixPath(row.image_key).stem, row.image_score)
    return scores


def reference_scores(store: ObjectStore, maps_prefix: str, source: str) -> list[float]:
    """Every image's score of a dataset-map output over labelled defect images, in the column
    the pool's gate reads (``source``: "scores" = image_score, "map_max" = each map's maximum).

    Raises:
        InvalidInputError: no scores there (code 'reference_scores_missing') or scores that do
            not follow the seam (code 'bad_scores').
    """
    rows = load_score_rows(store, maps_prefix)
    if rows is None:
        raise InvalidInputError(
            f"reference_maps_prefix {maps_prefix} holds no dataset-map scores",
            code="reference_scores_missing",
        )
    return [r.map_max if source == "map_max" else r.image_score for r in rows]


def score_of(scores: Mapping[str, float], image_key: str) -> float | None:
    """The image score by key, else by stem; None when the image is not listed."""
    found = scores.get(image_key)
    return found if found is not None else scores.get(PurePosixPath(image_key).stem)
