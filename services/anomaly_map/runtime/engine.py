"""``MapEngine``: the scorers on one model thread, with text-feature and bank caches.

The model is never called from two threads at once (a single model thread); requests beyond
``max_pending`` waiting for it are refused with 429 instead of queueing without bound. The CLIP
encoder is loaded on the first KeAD/WinCLIP call (``LazyScorers``); ToCoAD never touches it.
Text features and memory banks are stored beside the category version, so every API and
worker process reads what one of them computed (a restart costs no prompt encoding).
"""

from __future__ import annotations

import io
import logging
import pickle
import threading
from collections import OrderedDict
from collections.abc import Callable, Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any, Generic, TypeVar

import numpy as np
import torch
from torch import Tensor

from services.anomaly_map.config import AnomalyMapSettings
from services.anomaly_map.ml.clip.outputs import AnomalyScorer, MemoryBank
from services.anomaly_map.ml.clip.tiling import score_tiled
from services.anomaly_map.ml.tocoad.model import TocoadModel
from services.anomaly_map.params import Method
from services.anomaly_map.runtime.clip import LazyScorers, ScorerSet, load_scorers
from services.anomaly_map.runtime.methods import (
    BatchScores,
    MethodInputs,
    ScoringMethod,
    method_for,
    required,
)
from services.anomaly_map.stores.categories import CategoryRecord, CategoryStore
from services.anomaly_map.stores.tocoad_models import load_model, model_info
from shared.errors import InvalidInputError, OverloadedError
from shared.imaging.intake import ImageLimits, decode_image, image_limits
from shared.ml.device import resolve_device
from shared.storage.base import ObjectStore

log = logging.getLogger(__name__)
K = TypeVar("K")
T = TypeVar("T")
V = TypeVar("V")


def resolve_mode(requested: str | None, record: CategoryRecord) -> Method:
    """The scoring method of a request: the one asked for, else the category's own."""
    return method_for(requested or record.method).name


class LruCache(Generic[K, V]):
    """A small thread-safe LRU map."""

    def __init__(self, size: int) -> None:
        self.size = size
        self._items: OrderedDict[K, V] = OrderedDict()
        self._lock = threading.Lock()

    def get_or_create(self, key: K, create: Callable[[], V]) -> V:
        with self._lock:
            if key in self._items:
                self._items.move_to_end(key)
                return self._items[key]
        # Created outside the lock: a rare double computation beats blocking every reader.
        value = create()
        with self._lock:
            self._items[key] = value
            while len(self._items) > self.size:
                self._items.popitem(last=False)
        return value

    def __len__(self) -> int:
        return len(self._items)


@dataclass(frozen=True)
class TiledScores:
    """A stitched map of a large image: float32 (H_out, W_out), score = max over tiles."""

    anomaly_map: np.ndarray
    image_score: float
    tiles: int


def bank_to_bytes(bank: MemoryBank) -> bytes:
    buffer = io.BytesIO()
    torch.save(bank.to_state_dict(), buffer)
    return buffer.getvalue()


def tensor_to_bytes(tensor: Tensor) -> bytes:
    buffer = io.BytesIO()
    torch.save(tensor.detach().cpu().contiguous(), buffer)
    return buffer.getvalue()


def tensor_from_bytes(data: bytes) -> Tensor:
    value = torch.load(io.BytesIO(data), map_location="cpu", weights_only=True)
    if not isinstance(value, Tensor):
        raise ValueError("stored object is not a tensor")
    return value


def bank_from_bytes(data: bytes) -> MemoryBank:
    # weights_only: a bank is plain tensors; never unpickle arbitrary objects from the store.
    state = torch.load(io.BytesIO(data), map_location="cpu", weights_only=True)
    return MemoryBank.from_state_dict(state)


class MapEngine:
    """Scores images of stored categories with KeAD, WinCLIP (one shared encoder) or ToCoAD.

    Args:
        scorers: the CLIP scorers, loaded or lazy (loaded on the first CLIP-mode call).
        categories: where categories, banks, text features and ToCoAD models live.
        limits: what an image may be.
        device: where ToCoAD models run; default the loaded scorers' device, else 'auto'.
    """

    def __init__(
        self,
        scorers: ScorerSet | LazyScorers,
        categories: CategoryStore,
        *,
        limits: ImageLimits,
        device: torch.device | None = None,
        text_cache_size: int = 64,
        bank_cache_size: int = 8,
        max_pending: int = 32,
    ) -> None:
        if isinstance(scorers, ScorerSet):
            self.clip = LazyScorers.loaded(scorers)
            device = device or scorers.bundle.device
        else:
            self.clip = scorers
        self.device = device or resolve_device("auto")
        self.categories = categories
        self.limits = limits
        # One dedicated thread runs every model call: calls never overlap, and torch keeps one
        # intra-op (OpenMP) team instead of one per server thread that happens to call it.
        self._model_thread = ThreadPoolExecutor(max_workers=1, thread_name_prefix="model")
        self._pending = threading.BoundedSemaphore(max_pending)
        self._text: LruCache[tuple[str, str, str, str], Tensor] = LruCache(text_cache_size)
        self._banks: LruCache[tuple[str, str, str, str], MemoryBank | None] = LruCache(
            bank_cache_size
        )
        self._tocoad: LruCache[tuple[str, str, str], TocoadModel] = LruCache(bank_cache_size)

    def _on_model_thread(self, work: Callable[[], T]) -> T:
        return self._model_thread.submit(work).result()

    def close(self) -> None:
        """Stop the model thread (after the calls already queued)."""
        self._model_thread.shutdown(wait=True)

    @property
    def scorers(self) -> ScorerSet:
        """The CLIP scorers (loaded now if needed); 503 ``model_weights_missing`` without."""
        return self.clip.get()

    @property
    def model_id(self) -> str:
        return self.scorers.model_id

    def model_for(self, record: CategoryRecord, mode: Method) -> str:
        """Names the model that scores ``mode``: the CLIP id, or the fitted ToCoAD version."""
        if method_for(mode).needs.fitted_model:
            return str(self.tocoad_info(record)["model_version"])
        return self.model_id

    def eval_size(self, record: CategoryRecord, mode: Method) -> int:
        """Side on which evaluations compare maps with masks: the model input side S."""
        if method_for(mode).needs.fitted_model:
            return self._tocoad_model(record).image_size
        return self.image_size

    def tocoad_info(self, record: CategoryRecord) -> dict[str, Any]:
        """Version, fit job and config of the category version's fitted ToCoAD model."""
        return model_info(self.categories, record)

    @property
    def grid_size(self) -> int:
        return self.scorers.bundle.grid_size

    @property
    def image_size(self) -> int:
        return self.scorers.bundle.image_size

    @contextmanager
    def admitted(self) -> Iterator[None]:
        """Hold a place in the bounded waiting room, or raise 429 when it is full."""
        if not self._pending.acquire(blocking=False):
            raise OverloadedError("too many anomaly-map requests are waiting; retry shortly")
        try:
            yield
        finally:
            self._pending.release()

    def _key(self, record: CategoryRecord, mode: str) -> tuple[str, str, str, str]:
        return (self.model_id, mode, record.name, record.version)

    def _clip_scorer(self, mode: str) -> AnomalyScorer:
        """The scorer of a CLIP method (loads CLIP now if needed)."""
        scorer = method_for(mode).clip_scorer(self.scorers)
        if scorer is None:
            raise InvalidInputError(f"mode {mode!r} uses no CLIP scorer", code="mode_unavailable")
        return scorer

    def text_features(self, record: CategoryRecord, mode: str) -> Tensor:
        """(Dj, 2) features, cached per (model, mode, category version) in memory and store."""
        return self._text.get_or_create(
            self._key(record, mode), lambda: self._load_or_encode_text(record, mode)
        )

    def _load_or_encode_text(self, record: CategoryRecord, mode: str) -> Tensor:
        relative = f"text/{mode}-{self.model_id}-{self._clip_scorer(mode).config_tag}.pt"
        stored = self.categories.get_blob(record, relative)
        if stored is not None:
            try:
                return tensor_from_bytes(stored)
            except (RuntimeError, ValueError, EOFError, pickle.UnpicklingError):
                log.warning("stored text features %s%s unreadable", record.prefix, relative)
        scorer = self._clip_scorer(mode)
        text = self._on_model_thread(lambda: scorer.text_features(record.description()))
        self.categories.put_blob(record, relative, tensor_to_bytes(text))
        log.info("encoded %s text features for %s/%s", mode, record.name, record.version)
        return text

    def memory_bank(self, record: CategoryRecord, mode: str) -> MemoryBank | None:
        """The few-shot bank of a category version; None without reference images (zero-shot).

        Built once per (category version, model, mode) and stored next to the category.
        """
        if not record.references:
            return None
        return self._banks.get_or_create(
            self._key(record, mode), lambda: self._load_or_build_bank(record, mode)
        )

    def _load_or_build_bank(self, record: CategoryRecord, mode: str) -> MemoryBank:
        relative = f"banks/{mode}-{self.model_id}-{self._clip_scorer(mode).config_tag}.pt"
        stored = self.categories.get_blob(record, relative)
        if stored is not None:
            try:
                return bank_from_bytes(stored)
            except (InvalidInputError, RuntimeError, ValueError):
                log.warning("stored bank %s%s is unreadable; rebuilding", record.prefix, relative)
        images = [
            decode_image(raw, self.limits).array for raw in self.categories.reference_bytes(record)
        ]
        scorer = self._clip_scorer(mode)
        bank = self._on_model_thread(lambda: scorer.build_memory_bank(scorer.preprocess(images)))
        self.categories.put_blob(record, relative, bank_to_bytes(bank))
        log.info(
            "built %s bank for %s/%s (%d refs)", mode, record.name, record.version, len(images)
        )
        return bank

    def score(
        self, images: Sequence[np.ndarray], record: CategoryRecord, mode: Method
    ) -> BatchScores:
        """Whole-image scores of uint8 (H, W, 3) images, each squashed to S x S (§1.2)."""
        method = method_for(mode)
        inputs = self._inputs(method, record)
        return self._on_model_thread(lambda: method.score(inputs, list(images)))

    def _inputs(self, method: ScoringMethod, record: CategoryRecord) -> MethodInputs:
        """Exactly what ``method`` declares it needs (CLIP is never loaded for ToCoAD)."""
        needs, name = method.needs, method.name
        return MethodInputs(
            scorer=self._clip_scorer(name) if needs.clip else None,
            text=self.text_features(record, name) if needs.text else None,
            bank=self.memory_bank(record, name) if needs.references else None,
            fitted=self._tocoad_model(record) if needs.fitted_model else None,
        )

    def map_side(self, record: CategoryRecord, mode: Method) -> int:
        """Side of the maps ``score`` returns: G for CLIP modes, ToCoAD's input side S."""
        if not method_for(mode).needs.fitted_model:
            return self.grid_size
        return self._tocoad_model(record).image_size

    def _tocoad_model(self, record: CategoryRecord) -> TocoadModel:
        # Keyed by the stored model version too: a refit of the same category version (by a
        # worker) replaces what this process serves at its next request.
        version = str(self.tocoad_info(record)["model_version"])
        return self._tocoad.get_or_create(
            (record.name, record.version, version),
            lambda: load_model(self.categories, record, self.device),
        )

    def score_tiled(
        self,
        image: np.ndarray,
        record: CategoryRecord,
        mode: str,
        *,
        tile: int,
        overlap: int,
        output_size: tuple[int, int],
        batch_size: int,
    ) -> TiledScores:
        """Stitched map of a large image scored in overlapping square tiles.

        Raises:
            InvalidInputError: ``mode_unavailable`` for a method that declares no tiling.
        """
        method = method_for(mode)
        if not method.needs.tiling:
            raise InvalidInputError(f"mode {mode!r} cannot tile", code="mode_unavailable")
        inputs = self._inputs(method, record)
        scorer, text = required(inputs.scorer, "a CLIP scorer"), required(inputs.text, "text")
        result = self._on_model_thread(
            lambda: score_tiled(
                scorer,
                image,
                text,
                inputs.bank,
                tile_size=tile,
                overlap=overlap,
                batch_size=batch_size,
                output_size=output_size,
            )
        )
        return TiledScores(
            anomaly_map=result.anomaly_map.float().cpu().numpy(),
            image_score=result.image_score,
            tiles=len(result.tiles),
        )


def build_engine(settings: AnomalyMapSettings, store: ObjectStore) -> MapEngine:
    """The engine with caches and the model thread; CLIP loads on the first KeAD/WinCLIP call.

    Nothing here needs weights: ToCoAD serves from a plant with no CLIP file anywhere, and a
    KeAD request without weights gets 503 ``model_weights_missing`` from ``engine.scorers``.
    """
    return MapEngine(
        LazyScorers(lambda: load_scorers(settings)),
        CategoryStore(store),
        limits=image_limits(settings),
        device=resolve_device(settings.device),
        text_cache_size=settings.text_cache_size,
        bank_cache_size=settings.bank_cache_size,
        max_pending=settings.max_pending,
    )
