"""The runtime the API serves from, wired from settings: registry, detector factory, batching."""

from __future__ import annotations

import functools
from collections.abc import Callable
from pathlib import Path

import numpy as np

from services.inference.config import InferenceSettings
from services.inference.ml.detections import Detector
from services.inference.ml.layouts import open_onnx_detector
from services.inference.runtime.model_runtime import DetectorFactory, ModelRuntime
from services.inference.runtime.slots import BatchingConfig, BatchObserver
from services.inference.stores.models import ModelFiles, ModelRegistry, ModelTarget, PromotionWatch
from services.inference.stores.models import local_model as describe_local_model
from shared.errors import UnavailableError
from shared.ml.cpu_features import CpuFeatures, host_cpu, int8_problem
from shared.schemas.detector_artifact import int8_scheme
from shared.storage.artifacts import ArtifactStore
from shared.storage.base import ObjectStore

PAD_VALUE = 114  # ultralytics' letterbox grey; a warm-up image like a padded frame


def open_detector(
    files: ModelFiles, settings: InferenceSettings, cpu: CpuFeatures | None = None
) -> Detector:
    """Open ``files`` with ONNX Runtime (or, for a trusted local ``.pt``, ultralytics) and warm it.

    Raises:
        UnavailableError: an INT8 export whose scheme is unsafe on ``cpu`` (default: this
            machine's), code ``int8_unsupported_cpu``; the registry serves such a version's
            FP32 source instead, so this is a local file (or a version with none).
    """
    if files.runtime == "torch":
        # Deferred: torch and ultralytics are not in the ONNX-only serving image.
        from services.inference.ml.torch_detector import TorchDetector

        # Not warmed here: the detector belongs to the batcher thread that first calls it.
        return TorchDetector(
            files.path,
            allow_pickle=settings.allow_pickle and files.source == "local",
            device=settings.device,
            imgsz=settings.imgsz or 640,
        )
    detector = open_onnx_detector(
        files.path,
        device=settings.device,
        intra_op_threads=settings.intra_op_threads or None,
        names=files.names,
        imgsz=settings.imgsz or None,
        backend=settings.backend,
        precision=settings.precision,
        openvino_hint=settings.openvino_hint,
        spinning=settings.ort_spinning,
    )
    problem = int8_problem(int8_scheme(detector.metadata), cpu or host_cpu())
    if problem is not None:
        raise UnavailableError(
            f"{files.key} is not served on this CPU: {problem}", code="int8_unsupported_cpu"
        )
    # One pass at full size allocates ORT's arenas now, not on a camera's first request, and
    # fails a model whose ``classes.json`` disagrees with its outputs before it is served.
    height, width = detector.imgsz
    detector.detect([np.full((height, width, 3), PAD_VALUE, np.uint8)])
    return detector


def build_runtime(
    settings: InferenceSettings,
    store: ObjectStore,
    *,
    factory: DetectorFactory | None = None,
    observer: BatchObserver | None = None,
    on_default_status: Callable[[str | None], None] = lambda _: None,
    cpu: CpuFeatures | None = None,
) -> ModelRuntime:
    """The runtime the API serves from, wired from settings.

    ``cpu`` (default: this machine's, from ``/proc/cpuinfo``) decides which INT8 versions
    are served as they are (``shared.ml.cpu_features``).
    """
    cpu = cpu or host_cpu()
    default = None
    if settings.model_name:
        default = ModelTarget(
            settings.model_name, stage=settings.model_stage, fallback=settings.fallback_latest
        )
    local = None
    if settings.local_model_path:
        path = Path(settings.local_model_path).expanduser()
        local = functools.partial(
            describe_local_model,
            path,
            settings.model_name or path.stem,
            allow_pickle=settings.allow_pickle,
        )
    artifacts = ArtifactStore(store)
    return ModelRuntime(
        registry=ModelRegistry(artifacts, settings.resolved_cache_dir(), cpu),
        factory=factory or (lambda files: open_detector(files, settings, cpu)),
        batching=BatchingConfig(
            max_batch_size=settings.max_batch_size,
            max_queue_delay_ms=settings.max_queue_delay_ms,
            max_queue=settings.max_queue,
            adaptive_delay=settings.adaptive_delay,
        ),
        max_resident=settings.max_resident_models,
        default=default,
        local=local,
        observer=observer,
        on_default_status=on_default_status,
        retry_failed_after_s=settings.retry_failed_load_s,
        promoted=PromotionWatch(artifacts, settings.model_stage),
    )
