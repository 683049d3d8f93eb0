"""Galleries: a stored image set in pages, each image with the layers drawn over it.

Sets: a dataset version's split (ground-truth boxes and class names), a pseudo-label output
(pseudo boxes with their scores, each image's anomaly map and score where the map job wrote
them), a model version's saved evaluation on a split (ground truth found or missed,
predictions matched or false alarms; ``usecases.evaluation_gallery``), or any prefix of
images. A whole set is indexed once and kept (a few at a time): a
dataset version and a finished pseudo-label output never change. Filters run over the index,
so ``total`` counts every matching image, not only the page's.
"""

from __future__ import annotations

import threading
from collections import OrderedDict
from collections.abc import Callable, Sequence

from pydantic import BaseModel

from services.finetune.ml.dataset import DetectionDataset, ImageRecord
from services.finetune.ml.splits import mini_subset
from services.finetune.stores.datasets import DatasetCatalog, DatasetRef, mini_size
from services.finetune.stores.models import ModelRegistry, artifact_ref
from services.finetune.stores.pools import PoolImage, PoolSet, list_pool_sets, read_pool
from services.finetune.stores.thumbnails import ThumbnailStore
from services.finetune.usecases.evaluation_gallery import evaluation_index, evaluation_key
from services.finetune.usecases.evaluation_views import find_evaluation
from services.finetune.usecases.gallery_pages import (
    GalleryBox,
    GalleryFilter,
    GalleryIndex,
    GalleryItem,
    GalleryPage,
    Layer,
    page_of,
)
from shared.errors import NotFoundError
from shared.schemas.pseudo_labels import CLASS_NAMES
from shared.storage.base import ObjectStore, listing_prefix

_CACHED_SETS = 8
_THUMBNAIL_MEMORY = 64 * 2**20  # about 5,000 thumbnails of 256 px


class PoolSummary(BaseModel):
    """A pseudo-label output the gallery can show."""

    prefix: str
    category: str
    job_id: str | None
    images_prefix: str
    maps_prefix: str
    images: int
    images_with_boxes: int
    threshold: float


class Galleries:
    """Pages of galleries over one store, with the last few set indexes and the most recent
    thumbnails kept."""

    def __init__(self, store: ObjectStore, cached_sets: int = _CACHED_SETS) -> None:
        self.store = store
        self.thumbnails = ThumbnailStore(store, memory_bytes=_THUMBNAIL_MEMORY)
        self.catalog = DatasetCatalog(store)
        self.registry = ModelRegistry(store)
        self._cache: OrderedDict[tuple[str, ...], GalleryIndex] = OrderedDict()
        self._size = cached_sets
        self._lock = threading.Lock()

    def dataset_page(
        self, name: str, version: str, split: str, filters: GalleryFilter, offset: int, limit: int
    ) -> GalleryPage:
        """A page of a dataset version's split ('latest' for the newest version).

        Raises:
            NotFoundError: unknown dataset, version (dataset_not_found) or split
                (split_not_found).
            InvalidInputError: a bad name or version, or filters the set cannot apply.
        """
        ref = self.catalog.resolve(f"{name}:{version}")
        index = self._cached(("dataset", str(ref), split), lambda: self._dataset(ref, split))
        return page_of(index, filters, offset, limit)

    def evaluation_page(
        self,
        name: str,
        version: str,
        dataset: str | None,
        split: str,
        filters: GalleryFilter,
        offset: int,
        limit: int,
    ) -> GalleryPage:
        """A page of model ``name:version``'s ('latest' for the newest) saved evaluation on
        ``split`` of ``dataset`` ('name' or 'name:version'; None: the newest evaluated).

        Raises:
            NotFoundError: unknown model or version (model_not_found, artifact_not_found) or
                dataset, or no evaluation saved there (evaluation_not_found).
            InvalidInputError: a bad reference, an evaluation saved before per-image records
                (evaluation_without_errors), or filters the set cannot apply.
        """
        ref = artifact_ref(name, version)  # a bad name is a 422, 'latest' included
        if version == "latest":
            ref = self.registry.resolve(name)
        # A re-evaluation rewrites its document in place, so only reading it tells a stale
        # index from a fresh one: the document is read on every call, as the evaluation
        # route reads it (about 1 MB and 10 ms of JSON parsing per thousand images), and
        # the index built from it (validated records and items, about three times that) is
        # cached under its evaluated_at.
        document = find_evaluation(self.registry, self.catalog, ref, dataset, split)
        index = self._cached(evaluation_key(ref, document), lambda: evaluation_index(document))
        return page_of(index, filters, offset, limit)

    def pool_page(
        self, prefix: str, filters: GalleryFilter, offset: int, limit: int
    ) -> GalleryPage:
        """A page of a pseudo-label output or of the images under any prefix.

        Raises:
            NotFoundError: nothing to show under ``prefix`` (pool_not_found).
            InvalidInputError: a bad prefix, or filters the set cannot apply.
        """
        prefix = listing_prefix(prefix)
        with self._lock:
            index = self._cache.get(("pool", prefix))
        if index is None:
            found, images = read_pool(self.store, prefix)
            index = pool_index(prefix, found, images)
            if found is not None:  # a plain prefix may change: it is read every time
                self._keep(("pool", prefix), index)
        return page_of(index, filters, offset, limit)

    def pools(self) -> list[PoolSummary]:
        """Finished pseudo-label outputs under ``pseudo/``, newest first."""
        return [_summary(p) for p in list_pool_sets(self.store)]

    def _cached(self, key: tuple[str, ...], build: Callable[[], GalleryIndex]) -> GalleryIndex:
        with self._lock:
            index = self._cache.get(key)
            if index is not None:
                self._cache.move_to_end(key)
                return index
        index = build()  # outside the lock: two first requests may both build, harmlessly
        self._keep(key, index)
        return index

    def _keep(self, key: tuple[str, ...], index: GalleryIndex) -> None:
        with self._lock:
            self._cache[key] = index
            self._cache.move_to_end(key)
            while len(self._cache) > self._size:
                self._cache.popitem(last=False)

    def _dataset(self, ref: DatasetRef, split: str) -> GalleryIndex:
        dataset = DetectionDataset.model_validate_json(self.catalog.dataset_bytes(ref))
        subset = _split(self.catalog, ref, dataset, split)
        items = tuple(_truth_item(ref, subset.classes, im) for im in subset.images)
        return GalleryIndex("dataset", f"{ref} · {split}", subset.classes, ["truth"], items)


def _split(
    catalog: DatasetCatalog, ref: DatasetRef, dataset: DetectionDataset, split: str
) -> DetectionDataset:
    splits = catalog.splits(ref)
    if split in splits:
        return dataset.subset(splits[split])
    if (n := mini_size(split)) is not None and "train" in splits:
        return mini_subset(dataset.subset(splits["train"]), n, catalog.split_seed(ref))
    raise NotFoundError(
        f"dataset {ref} has no split {split!r}; it has {sorted(splits)}", code="split_not_found"
    )


def _truth_item(ref: DatasetRef, classes: Sequence[str], image: ImageRecord) -> GalleryItem:
    boxes = [
        GalleryBox(x1=b.x1, y1=b.y1, x2=b.x2, y2=b.y2, label=classes[b.class_id])
        for b in image.boxes
    ]
    return GalleryItem(
        name=image.file_name,
        image_key=ref.image_key(image.file_name),
        width=image.width,
        height=image.height,
        truth=boxes,
    )


def pool_index(prefix: str, found: PoolSet | None, images: Sequence[PoolImage]) -> GalleryIndex:
    """The index of a pseudo-label output (``found``) or of a plain prefix's images."""
    if found is None:
        items = tuple(GalleryItem(name=i.name, image_key=i.image_key) for i in images)
        return GalleryIndex("images", prefix, [], [], items)
    items = tuple(_pool_item(image) for image in images)
    layers: list[Layer] = ["pseudo", "map"] if any(i.map_key for i in items) else ["pseudo"]
    title = f"{found.category} · pseudo boxes · {prefix}"
    return GalleryIndex("pool", title, list(CLASS_NAMES), layers, items)


def _pool_item(image: PoolImage) -> GalleryItem:
    label = CLASS_NAMES[0]
    boxes = [
        GalleryBox(x1=b.x1, y1=b.y1, x2=b.x2, y2=b.y2, label=label, score=b.score)
        for b in image.boxes
    ]
    return GalleryItem(
        name=image.name,
        image_key=image.image_key,
        width=image.width,
        height=image.height,
        pseudo=boxes,
        score=image.score,
        map_key=image.map_key,
    )


def _summary(found: PoolSet) -> PoolSummary:
    return PoolSummary(
        prefix=found.prefix,
        category=found.category,
        job_id=found.job_id,
        images_prefix=found.images_prefix,
        maps_prefix=found.maps_prefix,
        images=found.images,
        images_with_boxes=found.images_with_boxes,
        threshold=found.threshold,
    )
