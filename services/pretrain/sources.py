"""Image/map pairs of AGBP and pseudo-label jobs, found in the object store and checked up front.

Input layout (the anomaly_map service's dataset map job, output prefix ``<out>/``, by default
``maps/<category>/<job id>/``)::

    <out>/maps/<image stem>.npy   float32 (G, G) raw fused KeAD map (agssp-spec §1.9)
    <out>/scores.csv              image key, image score, zero-shot score, map max
    <out>/manifest.json           {"category", "count", "job_id"?, image key -> map key, ...}

A source's ``maps_prefix`` may name ``<out>/`` or ``<out>/maps/``. Pairing follows the
manifest's image -> map mapping when one is found (a dict of keys, or a list of objects with
``image``/``image_key`` and ``map``/``map_key``; map keys absolute or relative to ``<out>/``);
otherwise, or when the mapping pairs nothing, images pair with maps by file stem
(``<stem>.npy``, or KeAD's ``<stem>_anomaly.npy``).
"""

from __future__ import annotations

import csv
import io
import json
import re
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import asdict, dataclass
from pathlib import PurePosixPath
from typing import Any

from services.pretrain.ml.data import validate_pairs
from services.pretrain.params import SourceSpec
from shared.errors import InvalidInputError
from shared.storage.base import ObjectNotFoundError, ObjectStore

IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png", ".bmp", ".tif", ".tiff")
MAP_SUFFIX = ".npy"
MANIFEST_NAME = "manifest.json"
SCORES_NAME = "scores.csv"
REPORT_EXAMPLES = 20
_JOB_ID = re.compile(r"^\d{8}T\d{6}-[0-9a-f]{8}$")
_LIST_FIELDS = ("maps", "pairs", "items", "images", "entries", "mapping", "files")
_IMAGE_FIELDS = ("image_key", "image", "image_path", "key")
_MAP_FIELDS = ("map_key", "map", "map_path")


@dataclass(frozen=True)
class Pair:
    """One training sample: image key, map key and category index."""

    image_key: str
    map_key: str
    label: int


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
    images = [k for k in store.list(spec.images_prefix) if k.lower().endswith(IMAGE_SUFFIXES)]
    maps = [k for k in store.list(spec.maps_prefix) if k.endswith(MAP_SUFFIX)]
    manifest = read_manifest(store, spec.maps_prefix)
    mapping = _manifest_mapping(manifest) if manifest else None
    result = None
    if mapping:
        result = _pair_by_manifest(images, maps, mapping, spec)
    if result is None or not result[0]:
        report = validate_pairs(images, maps)
        result = (
            list(report.matched),
            report.images_without_maps,
            report.maps_without_images,
            report.duplicate_stems,
            "stem",
        )
    matched, no_map, no_image, duplicates, how = result
    return matched, SourceReport(
        category=spec.category,
        label=label,
        images_prefix=spec.images_prefix,
        maps_prefix=spec.maps_prefix,
        pairing=how,
        map_job_id=_map_job_id(manifest, spec.maps_prefix),
        images=len(images),
        maps=len(maps),
        matched=len(matched),
        images_without_maps=tuple(no_map),
        maps_without_images=tuple(no_image),
        duplicate_stems=tuple(duplicates),
    )


_Pairing = tuple[list[tuple[str, str]], Sequence[str], Sequence[str], Sequence[str], str]


def _pair_by_manifest(
    images: Sequence[str], maps: Sequence[str], mapping: Mapping[str, str], spec: SourceSpec
) -> _Pairing:
    known_maps = set(maps)
    bases = output_prefixes(spec.maps_prefix)
    matched: list[tuple[str, str]] = []
    without: list[str] = []
    for image in sorted(images):
        ref = mapping.get(image) or mapping.get(image[len(spec.images_prefix) :])
        candidates = [] if ref is None else [ref, *(base + ref for base in bases)]
        found = next((c for c in candidates if c in known_maps), None)
        if found is None:
            without.append(image)
        else:
            matched.append((image, found))
    used = {m for _, m in matched}
    return matched, without, sorted(known_maps - used), (), "manifest"


def output_prefixes(maps_prefix: str) -> list[str]:
    """``maps_prefix`` and, when it ends in ``maps/``, the job output prefix above it."""
    prefixes = [maps_prefix]
    if maps_prefix.endswith("maps/"):
        prefixes.append(maps_prefix[: -len("maps/")])
    return prefixes


def read_manifest(store: ObjectStore, maps_prefix: str) -> dict[str, Any] | None:
    """The dataset map job's ``manifest.json`` (at or above ``maps_prefix``), or None."""
    for base in output_prefixes(maps_prefix):
        key = base + MANIFEST_NAME
        try:
            raw = store.get_bytes(key)
        except ObjectNotFoundError:
            continue
        try:
            doc = json.loads(raw)
        except ValueError as exc:
            raise InvalidInputError(f"{key} is not JSON: {exc}", code="bad_manifest") from exc
        if not isinstance(doc, dict):
            raise InvalidInputError(f"{key} is not a JSON object", code="bad_manifest")
        return doc
    return None


def _manifest_mapping(doc: Mapping[str, Any]) -> dict[str, str] | None:
    fields = [f for f in _LIST_FIELDS if f in doc] + [f for f in doc if f not in _LIST_FIELDS]
    for field in fields:
        mapping = _as_mapping(doc[field])
        if mapping:
            return mapping
    return None


def _as_mapping(value: Any) -> dict[str, str] | None:
    if isinstance(value, dict) and value:
        strings = all(isinstance(k, str) and isinstance(v, str) for k, v in value.items())
        return (
            dict(value) if strings and all(v.endswith(MAP_SUFFIX) for v in value.values()) else None
        )
    if isinstance(value, list) and value and all(isinstance(e, dict) for e in value):
        out = {}
        for entry in value:
            image = next((entry[f] for f in _IMAGE_FIELDS if isinstance(entry.get(f), str)), None)
            amap = next((entry[f] for f in _MAP_FIELDS if isinstance(entry.get(f), str)), None)
            if image is not None and amap is not None:
                out[image] = amap
        return out or None
    return None


def _map_job_id(manifest: Mapping[str, Any] | None, maps_prefix: str) -> str | None:
    if manifest is not None and isinstance(manifest.get("job_id"), str):
        return str(manifest["job_id"])
    return next((s for s in maps_prefix.split("/") if _JOB_ID.match(s)), None)


def load_scores(store: ObjectStore, maps_prefix: str) -> dict[str, float] | None:
    """Image score per image key and per image stem from ``scores.csv``; None when absent.

    The key column is ``image_key``/``image``/``key``/``path`` (else the first column), the
    score column ``image_score``/``score`` (else the second).

    Raises:
        InvalidInputError: a score that is not a number (code 'bad_scores').
    """
    for base in output_prefixes(maps_prefix):
        try:
            raw = store.get_bytes(base + SCORES_NAME)
        except ObjectNotFoundError:
            continue
        return _parse_scores(raw.decode("utf-8-sig"), base + SCORES_NAME)
    return None


def _parse_scores(text: str, key: str) -> dict[str, float]:
    reader = csv.DictReader(io.StringIO(text))
    names = [n.strip() for n in reader.fieldnames or []]
    if len(names) < 2:
        raise InvalidInputError(
            f"{key} needs an image column and a score column", code="bad_scores"
        )
    key_col = _pick(names, ("image_key", "image", "key", "path"), 0)
    score_col = _pick(names, ("image_score", "score"), 1)
    scores: dict[str, float] = {}
    for row in _rows(reader, key):
        image, value = row[key_col], row[score_col]
        try:
            score = float(value)
        except (TypeError, ValueError):
            raise InvalidInputError(
                f"{key}: score {value!r} of {image!r} is not a number", code="bad_scores"
            ) from None
        scores[image] = score
        scores.setdefault(PurePosixPath(image).stem, score)
    return scores


def _rows(reader: csv.DictReader[str], key: str) -> Iterable[dict[str, str]]:
    for row in reader:
        yield {(k or "").strip(): (v or "").strip() for k, v in row.items()}


def _pick(names: Sequence[str], preferred: Sequence[str], fallback: int) -> str:
    return next((n for n in preferred if n in names), names[fallback])


def score_of(scores: Mapping[str, float], image_key: str) -> float | None:
    """The image score by key, else by stem; None when the image is not listed."""
    found = scores.get(image_key)
    return found if found is not None else scores.get(PurePosixPath(image_key).stem)
