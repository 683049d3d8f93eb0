"""Resident detectors, each behind its own ``DynamicBatcher``: stage following, hot swaps, LRU.

A *slot* serves one target (a followed stage or a pinned version) with one batcher, so one
worker thread runs each model's batches. The default slot (INFERENCE_MODEL_NAME at its stage,
or the local model) is never evicted; other slots live under an LRU cap. When a followed stage
moves, the new version loads on the load thread and ``batcher.swap`` installs it: queued and
in-flight requests are kept, and each answer names the version that actually ran it.
"""

from __future__ import annotations

import asyncio
import collections
import logging
import time
from collections.abc import Callable, Mapping
from concurrent.futures import ThreadPoolExecutor
from contextlib import AbstractContextManager
from datetime import UTC, datetime

from services.inference.ml.batcher import Arrivals
from services.inference.ml.batching_policy import measure_batch_gain
from services.inference.ml.detections import DetectionRequest, Detector, DetectParams, Image
from services.inference.runtime.slots import (
    BatchingConfig,
    BatchObserver,
    LoadedModel,
    Outcome,
    ResidentModel,
    Slot,
    describe,
)
from services.inference.stores.models import (
    ModelFiles,
    ModelKey,
    ModelRegistry,
    ModelTarget,
    PromotionWatch,
)
from shared.errors import NotFoundError, OverloadedError, SuiteError, UnavailableError

logger = logging.getLogger(__name__)

DetectorFactory = Callable[[ModelFiles], Detector]
ParamsFn = Callable[[Mapping[int, str]], DetectParams]
DEFAULT_TILE = 640  # detectors that do not state their input size (ultralytics' default)
_SUBMIT_ATTEMPTS = 3  # a slot evicted between lookup and submit is looked up again


class ModelRuntime:
    """Loads, follows, batches and evicts detectors. Use from one event loop.

    Args:
        registry: Where registry models come from.
        factory: Opens a detector from local files (runs on the load thread).
        batching: Per-slot batcher settings.
        max_resident: Most slots resident at once, the default slot included.
        default: The followed default target (INFERENCE_MODEL_NAME + stage), if any.
        local: Describes a local model file served as the default instead of the registry
            (called on the load thread: it may hash a large file).
        observer: Told about every batch call.
        on_default_status: Called with the reason the default model is missing, or None
            once it is loaded (readiness).
        promoted: With no ``default`` and no ``local``: picks the model most recently
            promoted to its stage (blocking, run on a thread); the default follows it.
        retry_failed_after_s: A target that failed to load answers with the same error for
            this long before it is tried again (a burst of requests must not stampede storage).
    """

    def __init__(
        self,
        *,
        registry: ModelRegistry,
        factory: DetectorFactory,
        batching: BatchingConfig,
        max_resident: int,
        default: ModelTarget | None = None,
        local: Callable[[], ModelFiles] | None = None,
        observer: BatchObserver | None = None,
        on_default_status: Callable[[str | None], None] = lambda _: None,
        retry_failed_after_s: float = 5.0,
        promoted: PromotionWatch | None = None,
    ) -> None:
        if max_resident < 1:
            raise ValueError(f"max_resident must be >= 1, got {max_resident}")
        self._registry = registry
        self._factory = factory
        self._batching = batching
        self._max_resident = max_resident
        self._default_target = None if local is not None else default
        self._local = local
        self._observer = observer
        self._on_default_status = on_default_status
        self._retry_after_s = retry_failed_after_s
        self._promoted = promoted if default is None and local is None else None
        self._default: Slot | None = None
        self._default_error: str | None = "not loaded yet"
        self._slots: collections.OrderedDict[ModelTarget, Slot] = collections.OrderedDict()
        self._opening: dict[ModelTarget, asyncio.Task[Slot]] = {}
        self._failures: dict[ModelTarget, tuple[float, SuiteError]] = {}
        self._retiring: set[asyncio.Task[None]] = set()
        self._refresh_lock = asyncio.Lock()
        # One load at a time: bounded memory while a new version loads beside the old one.
        self._loader = ThreadPoolExecutor(max_workers=1, thread_name_prefix="model-load")
        self._arrivals = Arrivals()

    def arriving(self) -> AbstractContextManager[None]:
        """Count one request on its way to a batcher while its block runs (reading and
        decoding): batches wait for batch-mates only while some are counted."""
        return self._arrivals.arriving()

    # -- what is served ------------------------------------------------------------------
    @property
    def default_target(self) -> ModelTarget | None:
        return self._default_target

    @property
    def default_error(self) -> str | None:
        """Why the default model is not being served, or None."""
        return None if self._default is not None else self._default_error

    @property
    def default_key(self) -> ModelKey | None:
        return None if self._default is None else self._default.model.key

    def resident(self) -> list[ResidentModel]:
        """Every resident model, the default first, then least recently used first."""
        return [describe(s, default=s is self._default) for s in self._all_slots()]

    # -- requests ------------------------------------------------------------------------
    async def submit(self, target: ModelTarget | None, image: Image, params: ParamsFn) -> Outcome:
        """Queue one image on the slot serving ``target`` (None: the default model).

        ``params`` builds the post-processing parameters from the model's class names.

        Raises:
            UnavailableError: no default model loaded, a model failed to load, or the
                resident cap leaves no room (503); ``OverloadedError`` when the queue is full.
            NotFoundError: unknown model, version or stage.
        """
        for _ in range(_SUBMIT_ATTEMPTS):
            slot = await self._slot_for(target)
            slot.last_used = time.monotonic()
            request = DetectionRequest(image, params(slot.model.detector.names))
            try:
                return await slot.batcher.submit(request)
            except UnavailableError as exc:
                if isinstance(exc, OverloadedError) or not slot.closed:
                    raise
        raise UnavailableError("models are being swapped too fast; retry", code="model_churn")

    async def input_size(self, target: ModelTarget | None) -> tuple[int, int]:
        """Network input (height, width) of the model serving ``target`` (tiling cuts to it)."""
        detector = (await self._slot_for(target)).model.detector
        hw = getattr(detector, "imgsz", None)
        return (int(hw[0]), int(hw[1])) if hw is not None else (DEFAULT_TILE, DEFAULT_TILE)

    async def _slot_for(self, target: ModelTarget | None) -> Slot:
        if target is None or (self._default and target == self._default.target):
            if self._default is None:
                raise UnavailableError(
                    f"no model loaded: {self._default_error}",
                    code="model_not_loaded",
                    retry_after_s=int(max(self._retry_after_s, 1)),
                )
            return self._default
        slot = self._slots.get(target)
        if slot is not None:
            self._slots.move_to_end(target)
            return slot
        failed = self._failures.get(target)
        if failed is not None and failed[0] > time.monotonic():
            raise failed[1]
        task = self._opening.get(target)
        if task is None:
            task = asyncio.create_task(self._open_slot(target))
            self._opening[target] = task
            task.add_done_callback(lambda _: self._opening.pop(target, None))
        # shield: one caller giving up must not cancel a load other callers wait for
        return await asyncio.shield(task)

    async def _open_slot(self, target: ModelTarget) -> Slot:
        if self._max_resident - self._reserved() < 1:
            raise UnavailableError(
                f"INFERENCE_MAX_RESIDENT_MODELS={self._max_resident} leaves no room beside the "
                f"default model for {target.label()}",
                code="model_capacity",
            )
        try:
            model = await self._load(await self._resolve(target))
        except SuiteError as exc:
            self._failures[target] = (time.monotonic() + self._retry_after_s, exc)
            raise
        self._failures.pop(target, None)
        slot = self._new_slot(target.label(), target, model)
        self._slots[target] = slot
        while self._slots and len(self._slots) + self._reserved() > self._max_resident:
            _, oldest = self._slots.popitem(last=False)
            self._retire(oldest)
        return slot

    def _reserved(self) -> int:
        configured = self._default_target is not None or self._local is not None
        return 1 if configured or self._default is not None else 0

    # -- following stages ----------------------------------------------------------------
    async def refresh(self, *, forget_failures: bool = False) -> None:
        """Re-read every followed stage now; load and swap in versions that moved.

        Args:
            forget_failures: Also let targets that failed to load be tried again at once.
        """
        if forget_failures:
            self._failures.clear()
        async with self._refresh_lock:
            await self._refresh_default()
            for slot in list(self._slots.values()):
                if slot.target is not None and not slot.target.pinned and not slot.closed:
                    await self._refresh_slot(slot)

    async def poll_forever(self, interval_s: float) -> None:
        """``refresh`` every ``interval_s`` until cancelled; errors are logged, never fatal."""
        while True:
            await asyncio.sleep(interval_s)
            try:
                await self.refresh()
            except Exception:
                logger.exception("model refresh failed; next try in %.1f s", interval_s)

    async def _follow_promotions(self) -> None:
        """With no model configured, aim the default at the model promoted most recently."""
        if self._promoted is None:
            return
        name = await asyncio.get_running_loop().run_in_executor(None, self._promoted.choose)
        if name is None:
            if self._default is None:
                self._set_default_error(
                    f"no model configured and none promoted to {self._promoted.stage!r} yet: "
                    "promote a detector, or set INFERENCE_MODEL_NAME or INFERENCE_LOCAL_MODEL_PATH"
                )
            return
        target = ModelTarget(name, stage=self._promoted.stage)
        if target == self._default_target:
            return
        self._default_target = target
        if self._default is not None:
            self._default.target = target  # _refresh_slot loads and swaps the new model in

    async def _refresh_default(self) -> None:
        try:
            await self._follow_promotions()
        except Exception as exc:  # storage down: keep serving what we have
            logger.warning("could not read the promoted models: %s", _reason(exc))
        if self._default is not None:
            if self._default.target is not None:
                await self._refresh_slot(self._default)
            return
        try:
            if self._local is not None:
                model = await self._open(self._local)
                self._default = self._new_slot("default", None, model)
            elif self._default_target is not None:
                model = await self._load(await self._resolve(self._default_target))
                self._default = self._new_slot("default", self._default_target, model)
            else:
                if self._promoted is None:
                    self._set_default_error(
                        "no model configured: set INFERENCE_MODEL_NAME or "
                        "INFERENCE_LOCAL_MODEL_PATH"
                    )
                return
        except Exception as exc:  # whatever broke, the app stays up and /readyz says why
            self._set_default_error(_reason(exc))
            logger.warning("default model not loaded: %s", _reason(exc))
            return
        logger.info("serving %s as the default model", self._default.model.key)
        self._set_default_error(None)

    async def _refresh_slot(self, slot: Slot) -> None:
        assert slot.target is not None
        try:
            key = await self._resolve(slot.target)
            if key == slot.model.key:
                slot.last_error = None
                return
            model = await self._load(key)
        except Exception as exc:  # keep serving what we have; say why in /v1/models
            slot.last_error = _reason(exc)
            logger.warning("%s: keeping %s: %s", slot.label, slot.model.key, _reason(exc))
            return
        previous = slot.swap(model)
        slot.last_error = None
        logger.info("%s: swapped %s -> %s", slot.label, previous.key, model.key)

    def _set_default_error(self, reason: str | None) -> None:
        self._default_error = reason
        self._on_default_status(reason)

    # -- loading -------------------------------------------------------------------------
    async def _resolve(self, target: ModelTarget) -> ModelKey:
        return await asyncio.get_running_loop().run_in_executor(
            None, self._registry.resolve, target
        )

    async def _load(self, key: ModelKey) -> LoadedModel:
        for slot in self._all_slots():  # ONNX Runtime sessions may be shared between threads
            if slot.model.key == key and slot.model.files.runtime == "onnx":
                return slot.model
        return await self._open(lambda: self._registry.fetch(key))

    async def _open(self, locate: Callable[[], ModelFiles]) -> LoadedModel:
        """Locate (download, verify) and open a model as one job on the load thread.

        One job, so evicting a version (which deletes its local copy, also on the load
        thread) can never fall between the download and the open.
        """

        def job() -> tuple[ModelFiles, Detector, float | None]:
            files = locate()
            detector = self._factory(files)
            return files, detector, self._batch_gain(files, detector)

        try:
            files, detector, gain = await asyncio.get_running_loop().run_in_executor(
                self._loader, job
            )
        except (NotFoundError, UnavailableError):
            raise
        except Exception as exc:  # a corrupt export is the server's problem, not the caller's
            raise UnavailableError(
                f"the model could not be opened: {exc}", code="model_load_failed"
            ) from exc
        logger.info("loaded %s (%s, %s)", files.key, files.runtime, files.source)
        return LoadedModel(
            files=files, detector=detector, loaded_at=datetime.now(UTC), batch_gain=gain
        )

    def _batch_gain(self, files: ModelFiles, detector: Detector) -> float | None:
        """Measured batch speed-up, for the adaptive delay (ONNX detectors only).

        A torch detector belongs to its batcher thread and is not run on the load thread.
        """
        size = getattr(detector, "imgsz", None)
        if not self._batching.adaptive_delay or files.runtime != "onnx" or size is None:
            return None
        batch = min(4, self._batching.max_batch_size)
        gain = measure_batch_gain(detector, (int(size[0]), int(size[1])), batch)
        logger.info("%s: batch of %d runs %.2fx faster per image than 1", files.key, batch, gain)
        return gain

    def _new_slot(self, label: str, target: ModelTarget | None, model: LoadedModel) -> Slot:
        return Slot(label, target, model, self._batching, self._observer, self._arrivals)

    # -- eviction and shutdown -----------------------------------------------------------
    def _all_slots(self) -> list[Slot]:
        return ([self._default] if self._default else []) + list(self._slots.values())

    def _retire(self, slot: Slot) -> None:
        slot.closed = True
        logger.info("evicting %s (%s)", slot.label, slot.model.key)
        task = asyncio.create_task(self._stop(slot))
        self._retiring.add(task)
        task.add_done_callback(self._retiring.discard)

    async def _stop(self, slot: Slot) -> None:
        await slot.batcher.stop(drain=True)  # queued requests still get their answers
        key = slot.model.key
        if slot.model.files.source == "registry" and all(
            s.model.key != key for s in self._all_slots()
        ):
            await asyncio.get_running_loop().run_in_executor(self._loader, self._registry.drop, key)

    async def close(self) -> None:
        """Answer everything queued, then stop every batcher and the load thread."""
        for task in list(self._opening.values()):
            task.cancel()
        slots = self._all_slots()
        self._default, self._slots = None, collections.OrderedDict()
        for slot in slots:
            slot.closed = True
            await slot.batcher.stop(drain=True)
        if self._retiring:
            await asyncio.gather(*self._retiring, return_exceptions=True)
        self._loader.shutdown(wait=False, cancel_futures=True)


def _reason(exc: Exception) -> str:
    return exc.message if isinstance(exc, SuiteError) else f"{type(exc).__name__}: {exc}"
