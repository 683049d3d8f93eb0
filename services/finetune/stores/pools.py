"""Stored image pools for the gallery: a pseudo-label output with its boxes, scores and maps,
or a plain prefix of images.

A pseudo-label output (the seam ``shared.schemas.pseudo_labels``, pretrain writes it) names
its images, their sizes and scored boxes in its COCO file, and the dataset-map output it came
from (the seam ``shared.schemas.dataset_maps``, anomaly_map writes it): each image's map key
from that output's manifest (or, for maps a user brought without one, by file stem) and its
anomaly score from ``scores.csv`` when one was written.
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass
from pathlib import PurePosixPath
from typing import Any

from shared.errors import InvalidInputError, NotFoundError
from shared.schemas.dataset_maps import (
    DatasetMapManifest,
    is_image_key,
    is_map_key,
    output_prefixes,
    read_scores_csv,
    scores_key,
)
from shared.schemas.dataset_maps import manifest_key as maps_manifest_key
from shared.schemas.pseudo_labels import (
    KIND,
    MANIFEST_FILE,
    PseudoLabelManifest,
    file_key,
    manifest_key,
)
from shared.storage.base import ObjectNotFoundError, ObjectStore, listing_prefix

POOLS_PREFIX = "pseudo/"  # where pseudo-label jobs write unless given an out_prefix
_KEAD_SUFFIX = "_anomaly"  # KeAD's own map file naming: <stem>_anomaly.npy


@dataclass(frozen=True)
class ScoredBox:
    """A pseudo box in pixels of the original image, with its score."""

    x1: float
    y1: float
    x2: float
    y2: float
    score: float | None


@dataclass(frozen=True)
class PoolImage:
    """One image of a pool; size and boxes are unknown (None, ()) for a plain prefix."""

    image_key: str
    name: str
    width: int | None = None
    height: int | None = None
    boxes: tuple[ScoredBox, ...] = ()
    score: float | None = None
    map_key: str | None = None


@dataclass(frozen=True)
class PoolSet:
    """A pseudo-label output as the pool listing shows it."""

    prefix: str
    category: str
    job_id: str | None
    images_prefix: str
    maps_prefix: str
    images: int
    images_with_boxes: int
    threshold: float


def pool_set(prefix: str, manifest: PseudoLabelManifest) -> PoolSet:
    return PoolSet(
        prefix=prefix,
        category=manifest.category,
        job_id=manifest.job_id,
        images_prefix=manifest.images_prefix,
        maps_prefix=manifest.maps_prefix,
        images=manifest.count,
        images_with_boxes=manifest.images_with_boxes,
        threshold=manifest.threshold,
    )


def list_pool_sets(store: ObjectStore) -> list[PoolSet]:
    """Complete pseudo-label outputs under ``pseudo/<category>/<job>/``, newest job first."""
    found = []
    for key in store.list(POOLS_PREFIX):
        parts = key[len(POOLS_PREFIX) :].split("/")
        if len(parts) != 3 or parts[2] != MANIFEST_FILE:
            continue
        prefix = key[: -len(MANIFEST_FILE)]
        manifest = _pseudo_manifest(store, prefix)
        if manifest is not None:
            found.append(pool_set(prefix, manifest))
    return sorted(found, key=lambda p: (p.job_id or "", p.prefix), reverse=True)


def read_pool(store: ObjectStore, prefix: str) -> tuple[PoolSet | None, list[PoolImage]]:
    """The images of ``prefix``: a pseudo-label output's (with its set), else the images
    stored under it (no set).

    Raises:
        InvalidInputError: an invalid prefix (code invalid_prefix / invalid_key).
        NotFoundError: neither a pseudo-label output nor any image (code pool_not_found).
    """
    prefix = listing_prefix(prefix)
    manifest = _pseudo_manifest(store, prefix)
    if manifest is None:
        images = [PoolImage(k, k[len(prefix) :]) for k in store.list(prefix) if is_image_key(k)]
        if not images:
            raise NotFoundError(
                f"{prefix} holds neither a pseudo-label output nor images", code="pool_not_found"
            )
        return None, images
    coco = _json(store, file_key(prefix, manifest.files.annotations))
    map_of = _map_keys(store, manifest)
    score_of = _scores(store, manifest.maps_prefix)
    images = [_pool_image(entry, boxes, map_of, score_of) for entry, boxes in _by_image(coco)]
    return pool_set(prefix, manifest), images


def _pseudo_manifest(store: ObjectStore, prefix: str) -> PseudoLabelManifest | None:
    try:
        raw = store.get_bytes(manifest_key(prefix))
    except ObjectNotFoundError:
        return None
    try:
        kind = json.loads(raw).get("kind")
    except (ValueError, AttributeError):
        return None
    return PseudoLabelManifest.from_bytes(raw, manifest_key(prefix)) if kind == KIND else None


def _json(store: ObjectStore, key: str) -> dict[str, Any]:
    try:
        value: dict[str, Any] = json.loads(store.get_bytes(key))
    except ObjectNotFoundError as exc:
        raise NotFoundError(f"{key} is missing", code="pool_not_found") from exc
    except ValueError as exc:
        raise InvalidInputError(f"{key} is not JSON: {exc}", code="bad_annotations") from exc
    return value


def _by_image(coco: dict[str, Any]) -> list[tuple[dict[str, Any], list[ScoredBox]]]:
    """COCO images in file order, each with its boxes (``bbox`` is x, y, w, h)."""
    boxes: dict[Any, list[ScoredBox]] = {}
    for ann in coco.get("annotations", []):
        x, y, w, h = (float(v) for v in ann["bbox"])
        score = ann.get("score")
        box = ScoredBox(x, y, x + w, y + h, None if score is None else float(score))
        boxes.setdefault(ann["image_id"], []).append(box)
    return [(entry, boxes.get(entry["id"], [])) for entry in coco.get("images", [])]


def _pool_image(
    entry: dict[str, Any],
    boxes: list[ScoredBox],
    map_of: dict[str, str],
    score_of: dict[str, float],
) -> PoolImage:
    key = str(entry.get("image_key") or entry["file_name"])
    return PoolImage(
        image_key=key,
        name=str(entry["file_name"]),
        width=int(entry["width"]),
        height=int(entry["height"]),
        boxes=tuple(boxes),
        score=score_of.get(key),
        map_key=map_of.get(key) or map_of.get(PurePosixPath(key).stem),
    )


def _map_keys(store: ObjectStore, manifest: PseudoLabelManifest) -> dict[str, str]:
    """Image key -> map key from the map output's manifest; else file stem -> map key."""
    for out in output_prefixes(manifest.maps_prefix):
        try:
            raw = store.get_bytes(maps_manifest_key(out))
        except ObjectNotFoundError:
            continue
        return dict(DatasetMapManifest.from_bytes(raw, maps_manifest_key(out)).maps)
    stems: dict[str, list[str]] = {}
    for key in filter(is_map_key, store.list(manifest.maps_prefix)):
        stem = PurePosixPath(key).stem
        stems.setdefault(stem.removesuffix(_KEAD_SUFFIX), []).append(key)
    return {stem: keys[0] for stem, keys in stems.items() if len(keys) == 1}


def _scores(store: ObjectStore, maps_prefix: str) -> dict[str, float]:
    """Image key -> anomaly image score, from the map output's ``scores.csv`` if any."""
    for out in output_prefixes(maps_prefix):
        try:
            raw = store.get_bytes(scores_key(out))
        except ObjectNotFoundError:
            continue
        rows = read_scores_csv(raw, scores_key(out))
        return {r.image_key: r.image_score for r in rows if math.isfinite(r.image_score)}
    return {}


def read_map_bytes(store: ObjectStore, key: str) -> bytes:
    """A stored map's bytes.

    Raises:
        InvalidInputError: not a ``.npy`` key (code not_a_map).
        NotFoundError: nothing stored there (code map_not_found).
    """
    if not is_map_key(key):
        raise InvalidInputError(f"{key} is not a .npy map", code="not_a_map")
    try:
        return store.get_bytes(key)
    except ObjectNotFoundError as exc:
        raise NotFoundError(f"no map is stored at {key}", code="map_not_found") from exc
