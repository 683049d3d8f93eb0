"""Stored detection datasets: ``datasets/<name>/<version>/`` with images, labels and splits.

Layout of a version: ``shared.schemas.detection_dataset`` (the seam its other readers use).

``datasets/<name>/LATEST`` moves after the manifest, as for model artifacts. Reading a split
back (``load_split``) lives here too: every job that trains or evaluates downloads one.
"""

from __future__ import annotations

import json
import re
from collections.abc import Callable, Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from services.finetune.ml.dataset import DetectionDataset
from services.finetune.ml.splits import mini_subset
from shared.errors import InvalidInputError, NotFoundError
from shared.schemas.artifacts import check_segment
from shared.schemas.detection_dataset import (
    DATASET_FILE,
    DATASETS_PREFIX,
    IMAGES_DIR,
    LATEST_FILE,
    MANIFEST_FILE,
    SPLITS_FILE,
    version_prefix,
)
from shared.storage.base import ObjectNotFoundError, ObjectStore

_MINI = re.compile(r"^mini-([1-9][0-9]{0,5})$")


@dataclass(frozen=True)
class DatasetRef:
    """One stored version of a dataset."""

    name: str
    version: str

    def __post_init__(self) -> None:
        try:
            check_segment(self.name, "name")
            check_segment(self.version, "version")
        except ValueError as exc:
            raise InvalidInputError(str(exc), code="invalid_dataset_ref") from exc

    @property
    def prefix(self) -> str:
        return version_prefix(self.name, self.version)

    def key(self, filename: str) -> str:
        return self.prefix + filename

    def image_key(self, file_name: str) -> str:
        return self.prefix + IMAGES_DIR + file_name

    def __str__(self) -> str:
        return f"{self.name}:{self.version}"


def _checked_name(name: str) -> str:
    try:
        return check_segment(name, "name")
    except ValueError as exc:
        raise InvalidInputError(str(exc), code="invalid_dataset_ref") from exc


def mini_size(split: str) -> int | None:
    """N for a split named ``mini-N``, else None."""
    match = _MINI.match(split)
    return int(match.group(1)) if match else None


class DatasetCatalog:
    """Reads and publishes dataset versions in an ``ObjectStore``."""

    def __init__(self, store: ObjectStore) -> None:
        self.store = store

    def names(self) -> list[str]:
        """Datasets with at least one complete version, sorted."""
        found = set()
        for key in self.store.list(DATASETS_PREFIX):
            parts = key[len(DATASETS_PREFIX) :].split("/")
            if len(parts) == 3 and parts[2] == MANIFEST_FILE:
                found.add(parts[0])
        return sorted(found)

    def versions(self, name: str) -> list[str]:
        """Complete versions of ``name``, oldest first (versions sort by time)."""
        prefix = f"{DATASETS_PREFIX}{_checked_name(name)}/"
        return sorted(
            key[len(prefix) :].split("/")[0]
            for key in self.store.list(prefix)
            if key.count("/") == 3 and key.endswith("/" + MANIFEST_FILE)
        )

    def latest(self, name: str) -> DatasetRef | None:
        try:
            raw = self.store.get_bytes(f"{DATASETS_PREFIX}{_checked_name(name)}/{LATEST_FILE}")
        except ObjectNotFoundError:
            return None
        return DatasetRef(name, raw.decode().strip())

    def resolve(self, spec: str) -> DatasetRef:
        """``'name'``, ``'name:latest'`` or ``'name:version'`` -> a complete version.

        Raises:
            NotFoundError: unknown dataset or version (code dataset_not_found).
        """
        name, _, version = spec.partition(":")
        if version in ("", "latest"):
            ref = self.latest(name)
            if ref is None:
                raise NotFoundError(f"dataset {name!r} does not exist", code="dataset_not_found")
            return ref
        ref = DatasetRef(name, version)
        if not self.store.exists(ref.key(MANIFEST_FILE)):
            raise NotFoundError(f"dataset {ref} does not exist", code="dataset_not_found")
        return ref

    def manifest(self, ref: DatasetRef) -> dict[str, Any]:
        return self._json(ref, MANIFEST_FILE)

    def splits(self, ref: DatasetRef) -> dict[str, list[str]]:
        splits: dict[str, list[str]] = self._json(ref, SPLITS_FILE)["splits"]
        return splits

    def split_seed(self, ref: DatasetRef) -> int:
        return int(self._json(ref, SPLITS_FILE).get("seed", 0))

    def dataset_bytes(self, ref: DatasetRef) -> bytes:
        return self.store.get_bytes(ref.key(DATASET_FILE))

    def check_split(self, ref: DatasetRef, split: str, *, allow_mini: bool = True) -> int:
        """Number of images in ``split``; ``mini-N`` not stored is drawn from 'train' later.

        Raises:
            InvalidInputError: no such split, or it is empty (code unknown_split / empty_split).
        """
        sizes: dict[str, int] = self.manifest(ref).get("splits", {})
        if split not in sizes:
            if allow_mini and mini_size(split) is not None and sizes.get("train"):
                return sizes["train"]
            raise InvalidInputError(
                f"dataset {ref} has no split {split!r}; it has {sorted(sizes)}",
                code="unknown_split",
            )
        if sizes[split] == 0:
            raise InvalidInputError(f"split {split!r} of {ref} is empty", code="empty_split")
        return sizes[split]

    def publish(
        self, ref: DatasetRef, files: Mapping[str, bytes | Path], manifest: dict[str, Any]
    ) -> DatasetRef:
        """Write ``files`` (relative names), then the manifest, then move LATEST."""
        for filename, data in files.items():
            if isinstance(data, bytes):
                self.store.put_bytes(ref.key(filename), data)
            else:
                self.store.put_file(ref.key(filename), data)
        body = json.dumps(manifest, indent=1).encode()
        self.store.put_bytes(ref.key(MANIFEST_FILE), body, content_type="application/json")
        latest = self.latest(ref.name)
        if latest is None or latest.version < ref.version:
            self.store.put_bytes(
                f"{DATASETS_PREFIX}{ref.name}/{LATEST_FILE}", ref.version.encode(), "text/plain"
            )
        return ref

    def _json(self, ref: DatasetRef, filename: str) -> dict[str, Any]:
        try:
            value: dict[str, Any] = json.loads(self.store.get_bytes(ref.key(filename)))
        except ObjectNotFoundError as exc:
            raise NotFoundError(
                f"dataset {ref} has no {filename}", code="dataset_not_found"
            ) from exc
        return value


def load_split(
    store: ObjectStore, ref: DatasetRef, split: str, dest: Path, threads: int = 8
) -> tuple[DetectionDataset, Path]:
    """The images of one split, downloaded into ``dest/images``; ``mini-N`` may be computed.

    A ``mini-N`` split that was not stored at import is drawn from ``train`` with the
    dataset's split seed, so it is the subset the import would have stored.
    """
    catalog = DatasetCatalog(store)
    dataset = DetectionDataset.model_validate_json(catalog.dataset_bytes(ref))
    splits = catalog.splits(ref)
    if split in splits:
        subset = dataset.subset(splits[split])
    elif (n := mini_size(split)) is not None:
        subset = mini_subset(dataset.subset(splits["train"]), n, catalog.split_seed(ref))
    else:
        raise InvalidInputError(f"dataset {ref} has no split {split!r}", code="unknown_split")
    images_dir = dest / "images"
    pairs = [(ref.image_key(im.file_name), images_dir / im.file_name) for im in subset.images]
    download_all(store, pairs, threads)
    return subset, images_dir


def download_all(
    store: ObjectStore,
    pairs: Sequence[tuple[str, Path]],
    threads: int,
    check: Callable[[str], None] | None = None,
) -> None:
    """Download ``(key, path)`` pairs in parallel; files already present are kept."""

    def fetch(pair: tuple[str, Path]) -> None:
        key, path = pair
        if path.is_file():
            return
        if check is not None:
            check(key)
        path.parent.mkdir(parents=True, exist_ok=True)
        store.get_file(key, path)

    with ThreadPoolExecutor(max_workers=threads) as pool:
        list(pool.map(fetch, pairs))
