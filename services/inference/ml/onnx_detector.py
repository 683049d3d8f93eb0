"""YOLOv8 detection on an ultralytics ONNX export with ONNX Runtime; no torch at run time."""

from __future__ import annotations

import ast
import logging
import threading
from collections.abc import Mapping, Sequence
from pathlib import Path
from types import MappingProxyType
from typing import Any, Literal

import numpy as np
import onnxruntime as ort
from numpy.typing import NDArray

from services.inference.ml.detections import (
    Detections,
    DetectParams,
    Image,
    as_rgb,
    params_per_image,
)
from services.inference.ml.letterbox import (
    LetterboxGeometry,
    letterbox_geometry,
    letterbox_into,
    scale_boxes,
)
from services.inference.ml.nms import decode_and_nms
from shared.errors import InvalidInputError, UnavailableError

logger = logging.getLogger(__name__)

DEFAULT_IMGSZ = 640
DEFAULT_STRIDE = 32
_CUDA_EP = "CUDAExecutionProvider"
_TRT_EP = "TensorrtExecutionProvider"
_CPU_EP = "CPUExecutionProvider"

Backend = Literal["onnxruntime", "openvino"]
Precision = Literal["fp32", "fp16"]
SpinMode = Literal["off", "during_runs", "always"]
SPIN_MODES: tuple[SpinMode, ...] = ("off", "during_runs", "always")


class OnnxDetector:
    """Runs an ultralytics YOLOv8 detect export, ``output0`` of shape (B, 4 + nc, N).

    Pre- and post-processing follow ultralytics' ``predict`` (letterbox with pad 114 and
    bilinear resize, best-class NMS with class offsets, boxes scaled back and clipped).
    Parity, tested per image with the same classes and count: against ``YOLO(path).predict``
    on the same file, boxes within 1e-3 px and scores within 1e-5 (in practice identical);
    against the source PyTorch model, 0.1 px and 1e-4. After construction the object holds
    only a per-thread input buffer; ONNX Runtime sessions may be run from several threads.

    Args:
        path: Local ``.onnx`` file (trusted or not: ONNX carries no code).
        device: ``auto`` (CUDA when ONNX Runtime has it, else CPU), ``cpu``, ``cuda`` or
            ``cuda:N``.
        intra_op_threads: ONNX Runtime intra-op threads; ``None`` keeps its default.
        names: Class names; default from the export's metadata, else ``"0"``, ``"1"``, ...
        imgsz: Network input (height, width) or one side; must match a fixed-shape export.
            Dynamic-shape exports default to the export size from the metadata.
        rect: For dynamic-shape exports, pad only to the next stride multiple, as
            ``predict`` does. Images whose padded shapes differ run in separate calls, so an
            image's detections never depend on its batch-mates.
        backend: ``onnxruntime`` (default) or ``openvino`` (CPU only, same export).
        precision: ``fp16`` runs on CUDA only: TensorRT's FP16 engine where ONNX Runtime has
            TensorRT, else the CUDA provider on an FP16 copy of the graph (inputs and
            outputs stay FP32).
        openvino_hint: ``throughput`` or ``latency`` (OpenVINO's performance hint).
        spinning: When ONNX Runtime's idle intra-op threads busy-wait (``SpinMode``):
            ``always`` (ORT's default), ``during_runs`` (between the graph's parallel
            regions, stopped as each run returns) or ``off``. Between batches spinning
            threads burn the cores that decode, HTTP and the event loop need.
        session: An already open session of ``path`` (``open_session``), whose settings
            then replace the device, thread, backend and precision arguments.

    Raises:
        InvalidInputError: The file is not a loadable YOLO detect export, or arguments
            contradict it.
        UnavailableError: CUDA was requested explicitly but ONNX Runtime cannot use it.
    """

    def __init__(
        self,
        path: str | Path,
        *,
        device: str = "auto",
        intra_op_threads: int | None = None,
        names: Mapping[int, str] | None = None,
        imgsz: int | tuple[int, int] | None = None,
        rect: bool = True,
        backend: Backend = "onnxruntime",
        precision: Precision = "fp32",
        openvino_hint: Literal["throughput", "latency"] = "throughput",
        spinning: SpinMode = "always",
        session: Any | None = None,
    ) -> None:
        self._session = session or open_session(
            Path(path), device=device, intra_op_threads=intra_op_threads, backend=backend,
            precision=precision, openvino_hint=openvino_hint, spinning=spinning,
        )  # fmt: skip
        self._metadata: dict[str, str] = dict(self._session.get_modelmeta().custom_metadata_map)
        meta = _read_metadata(self._session)
        if meta.get("task", "detect") != "detect" or meta.get("end2end", False):
            raise InvalidInputError(
                f"{path} is a {meta.get('task')!r} export (end2end={meta.get('end2end')}); "
                "only YOLO detect exports without embedded NMS (nms=False) are supported"
            )
        inp, out = self._session.get_inputs()[0], self._session.get_outputs()[0]
        if len(inp.shape) != 4 or len(out.shape) != 3:
            raise InvalidInputError(
                f"{path}: expected input (B, 3, H, W) and output (B, 4 + nc, N), "
                f"got {inp.shape} and {out.shape}"
            )
        self._input_name: str = inp.name
        self._input_dtype = np.float16 if "float16" in inp.type else np.float32
        self._output_name: str = out.name
        b, _, h, w = inp.shape
        self._fixed_batch: int | None = b if isinstance(b, int) else None
        self._dynamic_hw = not (isinstance(h, int) and isinstance(w, int))
        self._stride = int(meta.get("stride", DEFAULT_STRIDE))
        self._imgsz = self._resolve_imgsz(imgsz, meta.get("imgsz"), (h, w))
        self._auto = rect and self._dynamic_hw
        self._names = dict(names) if names is not None else meta.get("names") or self._probe_names()
        self._nc = len(self._names)
        self._buffers = threading.local()  # per thread: see _input_batch

    @property
    def names(self) -> Mapping[int, str]:
        """Class id to class name (read-only)."""
        return MappingProxyType(self._names)

    @property
    def metadata(self) -> Mapping[str, str]:
        """The export's raw ONNX metadata (ultralytics' keys, an INT8 export's scheme)."""
        return MappingProxyType(self._metadata)

    @property
    def imgsz(self) -> tuple[int, int]:
        """Network input (height, width) the letterbox targets."""
        return self._imgsz

    @property
    def fixed_batch(self) -> int | None:
        """The export's fixed batch size, or ``None`` for a dynamic batch axis."""
        return self._fixed_batch

    @property
    def providers(self) -> list[str]:
        """ONNX Runtime execution providers in use, best first."""
        return list(self._session.get_providers())

    def detect(
        self,
        images: Sequence[Image],
        params: DetectParams | Sequence[DetectParams] = DetectParams(),
    ) -> list[Detections]:
        """Detect objects in a batch of images.

        Args:
            images: B RGB uint8 arrays (H, W, 3) of any sizes; (H, W) grey is replicated.
            params: One ``DetectParams`` for all images or one per image.

        Returns:
            B ``Detections`` in input order, boxes in each image's own pixels.
        """
        per_image = params_per_image(params, len(images))
        rgb = [as_rgb(im) for im in images]
        geoms = [self._geometry(im.shape[:2]) for im in rgb]
        results: list[Detections] = [Detections.empty(g.orig_hw) for g in geoms]
        for indices in _group_by_out_shape(geoms):
            batch = self._input_batch(len(indices), geoms[indices[0]].out_hw)
            for row, i in enumerate(indices):
                letterbox_into(rgb[i], geoms[i], batch[row])
            raw = self.forward(batch)
            for row, i in enumerate(indices):
                results[i] = _postprocess(raw[row], geoms[i], per_image[i])
        return results

    def _input_batch(self, n: int, hw: tuple[int, int]) -> NDArray[np.float32]:
        """A (n, 3, H, W) float32 input to fill: this thread's buffer, reused between calls.

        A fresh batch of tens of MB page-faults on every call (the allocator hands such
        blocks back to the OS) and cost as much as the letterbox itself at batch 8. The
        buffer belongs to the calling thread (the batcher's), and neither runtime keeps its
        input after ``run`` returns (OpenVINO copies it in), so reuse is safe.
        """
        buffer: NDArray[np.float32] | None = getattr(self._buffers, "batch", None)
        if buffer is None or buffer.shape[2:] != hw or len(buffer) < n:
            size = n if buffer is None or buffer.shape[2:] != hw else max(n, len(buffer))
            buffer = np.empty((size, 3, *hw), dtype=np.float32)
            self._buffers.batch = buffer
        return buffer[:n]

    def forward(self, batch: NDArray[np.floating[Any]]) -> NDArray[np.float32]:
        """Run the network on already letterboxed input.

        Args:
            batch: (B, 3, H, W) in [0, 1]; any B (fixed-batch exports run in chunks).

        Returns:
            (B, 4 + nc, N) float32: ``cx, cy, w, h`` in input pixels, then class scores.
        """
        n = self._fixed_batch
        out = self._run(batch) if n is None else self._run_chunked(batch, n)
        if out.shape[1] != 4 + self._nc:
            raise InvalidInputError(
                f"model output has {out.shape[1]} channels, expected 4 + {self._nc} class names"
            )
        return out

    def _run_chunked(self, batch: NDArray[np.floating[Any]], n: int) -> NDArray[np.float32]:
        outs = []
        for start in range(0, len(batch), n):
            chunk = batch[start : start + n]
            real = len(chunk)
            if real < n:  # the export insists on exactly n images: pad with blank ones
                pad = np.zeros((n - real, *chunk.shape[1:]), dtype=chunk.dtype)
                chunk = np.concatenate([chunk, pad])
            outs.append(self._run(chunk)[:real])
        return np.concatenate(outs)

    def _run(self, batch: NDArray[np.floating[Any]]) -> NDArray[np.float32]:
        feed = {self._input_name: batch.astype(self._input_dtype, copy=False)}
        return np.asarray(self._session.run([self._output_name], feed)[0], dtype=np.float32)

    def _geometry(self, orig_hw: tuple[int, int]) -> LetterboxGeometry:
        return letterbox_geometry(orig_hw, self._imgsz, auto=self._auto, stride=self._stride)

    def _resolve_imgsz(
        self, given: int | tuple[int, int] | None, meta_imgsz: Any, input_hw: tuple[Any, Any]
    ) -> tuple[int, int]:
        if not self._dynamic_hw:
            fixed = (int(input_hw[0]), int(input_hw[1]))
            if given is not None and _as_hw(given) != fixed:
                raise InvalidInputError(f"imgsz {given} contradicts the export's input {fixed}")
            return fixed
        hw = _as_hw(given if given is not None else meta_imgsz or DEFAULT_IMGSZ)
        if hw[0] % self._stride or hw[1] % self._stride:
            raise InvalidInputError(f"imgsz {hw} must be multiples of the stride {self._stride}")
        return hw

    def _probe_names(self) -> dict[int, str]:
        # No metadata: learn the class count from one blank forward pass (it also warms up).
        h, w = self._imgsz
        out = self._run(np.zeros((self._fixed_batch or 1, 3, h, w), dtype=self._input_dtype))
        return {i: str(i) for i in range(out.shape[1] - 4)}


def _postprocess(
    pred: NDArray[np.float32], geometry: LetterboxGeometry, params: DetectParams
) -> Detections:
    boxes, scores, class_ids = decode_and_nms(pred, params)
    return Detections(scale_boxes(boxes, geometry), scores, class_ids, geometry.orig_hw)


def _group_by_out_shape(geoms: Sequence[LetterboxGeometry]) -> list[list[int]]:
    groups: dict[tuple[int, int], list[int]] = {}
    for i, g in enumerate(geoms):
        groups.setdefault(g.out_hw, []).append(i)
    return list(groups.values())


def _as_hw(size: int | Sequence[int]) -> tuple[int, int]:
    if isinstance(size, int):
        return size, size
    if len(size) == 1:
        return int(size[0]), int(size[0])
    return int(size[0]), int(size[1])


def _providers(device: str, precision: Precision = "fp32") -> list[Any]:
    """Execution providers, best first, for a device and precision setting."""
    available = ort.get_available_providers()
    if device == "cpu" or (device == "auto" and _CUDA_EP not in available):
        if precision == "fp16":
            raise UnavailableError(
                "INFERENCE_PRECISION=fp16 needs CUDA; this host runs on CPU "
                f"(onnxruntime providers: {available})"
            )
        return [_CPU_EP]
    kind, _, index = ("cuda" if device == "auto" else device).partition(":")
    if kind != "cuda" or not (index == "" or index.isdigit()):
        raise InvalidInputError(f"device must be auto, cpu, cuda or cuda:N, got {device!r}")
    if _CUDA_EP not in available:
        raise UnavailableError(
            f"device {device!r} requested but this onnxruntime build has no CUDA provider "
            f"(available: {available}); install onnxruntime-gpu or use device='cpu'"
        )
    device_id = {"device_id": int(index or 0)}
    providers: list[Any] = [(_CUDA_EP, device_id), _CPU_EP]
    if precision == "fp16" and _TRT_EP in available:
        providers.insert(0, (_TRT_EP, {**device_id, "trt_fp16_enable": True}))
    return providers


def _fp16_graph(path: Path) -> bytes:
    """An FP16 copy of the graph with FP32 inputs and outputs (for the CUDA provider)."""
    import onnx
    from onnxruntime.transformers.float16 import convert_float_to_float16

    model = convert_float_to_float16(onnx.load(str(path)), keep_io_types=True)
    return bytes(model.SerializeToString())


def open_session(
    path: Path,
    *,
    device: str = "auto",
    intra_op_threads: int | None = None,
    backend: Backend = "onnxruntime",
    precision: Precision = "fp32",
    openvino_hint: Literal["throughput", "latency"] = "throughput",
    spinning: SpinMode = "always",
) -> Any:
    """An ONNX Runtime (or OpenVINO) session of ``path`` with the service's settings; the
    detectors of every output layout run on it (``layouts.open_onnx_detector``).

    Raises:
        InvalidInputError: a missing or corrupt file, or settings the backend cannot honour.
        UnavailableError: CUDA requested explicitly but unavailable.
    """
    if backend == "openvino":
        return _openvino_session(path, device, precision, openvino_hint, intra_op_threads)
    return _create_session(path, device, intra_op_threads, precision, spinning=spinning)


def _set_spinning(options: Any, spinning: SpinMode) -> None:
    """ORT's two switches for ``spinning``: ``allow_spinning`` (idle threads busy-wait for
    more work, within a run and between runs) and ``force_spinning_stop`` (they stop the
    moment the last concurrent run returns, and spin again from the next one)."""
    if spinning not in SPIN_MODES:
        raise InvalidInputError(f"spinning must be one of {', '.join(SPIN_MODES)}")
    if spinning == "off":
        options.add_session_config_entry("session.intra_op.allow_spinning", "0")
    elif spinning == "during_runs":
        options.add_session_config_entry("session.force_spinning_stop", "1")


def _openvino_session(
    path: Path, device: str, precision: Precision, hint: Any, threads: int | None
) -> Any:
    from services.inference.ml.openvino_session import OpenVinoSession

    if device.startswith("cuda") or precision == "fp16":
        raise InvalidInputError(
            "the OpenVINO backend runs FP32 on the CPU: use INFERENCE_DEVICE=cpu or auto and "
            "INFERENCE_PRECISION=fp32, or the onnxruntime backend for CUDA"
        )
    if not path.is_file():
        raise InvalidInputError(f"ONNX model file {path} does not exist")
    return OpenVinoSession(path, hint=hint, threads=threads)


def _create_session(
    path: Path,
    device: str,
    intra_op_threads: int | None,
    precision: Precision = "fp32",
    *,
    spinning: SpinMode = "always",
) -> Any:
    providers = _providers(device, precision)
    options = ort.SessionOptions()
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    options.log_severity_level = 3  # errors only: ORT's per-node warnings flood service logs
    if intra_op_threads is not None:
        options.intra_op_num_threads = intra_op_threads
    _set_spinning(options, spinning)
    if not path.is_file():
        raise InvalidInputError(f"ONNX model file {path} does not exist")
    on_trt = isinstance(providers[0], tuple) and providers[0][0] == _TRT_EP
    source: str | bytes = _fp16_graph(path) if precision == "fp16" and not on_trt else str(path)
    try:
        session = ort.InferenceSession(source, options, providers=providers)
    except Exception as exc:  # ORT raises its own untyped errors for corrupt files
        raise InvalidInputError(f"{path} is not a loadable ONNX model: {exc}") from exc
    if device.startswith("cuda") and session.get_providers()[0] != _CUDA_EP:
        raise UnavailableError(f"device {device!r} requested but ONNX Runtime fell back to CPU")
    logger.info("loaded %s with %s", path, session.get_providers()[0])
    return session


def _read_metadata(session: Any) -> dict[str, Any]:
    """Parse what ultralytics' exporter writes (names, imgsz, stride, task, end2end)."""
    raw: dict[str, str] = session.get_modelmeta().custom_metadata_map
    meta: dict[str, Any] = {}
    for key in ("names", "imgsz", "stride", "end2end"):
        if key in raw:
            try:  # literal_eval evaluates literals only, never code
                meta[key] = ast.literal_eval(raw[key])
            except (ValueError, SyntaxError) as exc:
                raise InvalidInputError(f"bad {key!r} in ONNX metadata: {raw[key]!r}") from exc
    if "task" in raw:
        meta["task"] = raw["task"]
    if "names" in meta:
        meta["names"] = {int(k): str(v) for k, v in dict(meta["names"]).items()}
    return meta
