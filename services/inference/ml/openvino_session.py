"""OpenVINO behind the few ONNX Runtime session calls ``OnnxDetector`` makes (an optional CPU
runtime for Intel/AMD hosts; the ``openvino`` extra).

The same ONNX export is read by OpenVINO, so pre- and post-processing stay those of
``OnnxDetector``. In ``throughput`` mode a batch is split into single images that run at
once on OpenVINO's parallel streams (its fastest CPU mode, measured in
``benchmarks/detect.py``); ``latency`` mode runs the whole batch as one request.
"""

from __future__ import annotations

import threading
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import numpy as np
from numpy.typing import NDArray

from shared.errors import InvalidInputError, UnavailableError

Hint = Literal["throughput", "latency"]


@dataclass(frozen=True)
class _Arg:
    """What ORT's ``NodeArg`` offers and ``OnnxDetector`` reads: name, shape, element type."""

    name: str
    shape: list[int | str]
    type: str


@dataclass(frozen=True)
class _Meta:
    custom_metadata_map: dict[str, str]


def _shape(partial: Any) -> list[int | str]:
    return [int(d.get_length()) if d.is_static else f"d{i}" for i, d in enumerate(partial)]


def _onnx_metadata(path: Path) -> dict[str, str]:
    import onnx  # ships with onnxruntime in the ``yolo`` extra

    proto = onnx.load(str(path), load_external_data=False)
    return {p.key: p.value for p in proto.metadata_props}


class OpenVinoSession:
    """An OpenVINO compiled model with ``get_inputs``/``get_outputs``/``run`` like ORT's session.

    Args:
        path: The ONNX export.
        hint: ``throughput`` (parallel streams) or ``latency``.
        threads: CPU inference threads; None = OpenVINO's choice.

    Raises:
        UnavailableError: OpenVINO is not installed.
        InvalidInputError: OpenVINO cannot read the file.
    """

    def __init__(self, path: Path, *, hint: Hint = "throughput", threads: int | None = None):
        try:
            import openvino as ov  # type: ignore[import-untyped]
        except ImportError as exc:
            raise UnavailableError(
                "INFERENCE_BACKEND=openvino needs the openvino package (extra 'openvino')"
            ) from exc
        # f32 explicitly: on CPUs with AMX/AVX512-BF16 OpenVINO would otherwise run bf16.
        config: dict[str, Any] = {
            "PERFORMANCE_HINT": hint.upper(),
            "INFERENCE_PRECISION_HINT": "f32",
        }
        if threads:
            config["INFERENCE_NUM_THREADS"] = threads
        try:
            self._compiled = ov.Core().compile_model(str(path), "CPU", config)
        except Exception as exc:  # OpenVINO raises its own untyped errors for bad files
            raise InvalidInputError(f"OpenVINO cannot load {path}: {exc}") from exc
        self._parallel = hint == "throughput"
        self._streams = max(1, int(self._compiled.get_property("OPTIMAL_NUMBER_OF_INFER_REQUESTS")))
        self._meta = _onnx_metadata(path)
        self._local = threading.local()  # infer requests are not thread-safe; one per thread
        self._ov = ov

    def get_inputs(self) -> list[_Arg]:
        port = self._compiled.inputs[0]
        return [_Arg(port.any_name, _shape(port.get_partial_shape()), _type(port))]

    def get_outputs(self) -> list[_Arg]:
        port = self._compiled.outputs[0]
        return [_Arg(port.any_name, _shape(port.get_partial_shape()), _type(port))]

    def get_modelmeta(self) -> _Meta:
        return _Meta(dict(self._meta))

    def get_providers(self) -> list[str]:
        return ["OpenVINO:CPU"]

    def run(self, outputs: Sequence[str], feed: Mapping[str, NDArray[Any]]) -> list[NDArray[Any]]:
        """Run one (B, 3, H, W) batch; returns ``[output0]`` like ORT."""
        (batch,) = feed.values()
        if self._parallel and len(batch) > 1 and self._streams > 1:
            return [self._run_parallel(batch)]
        request = self._request()
        request.infer({0: batch})
        return [np.array(request.get_output_tensor(0).data, copy=True)]

    def _request(self) -> Any:
        request = getattr(self._local, "request", None)
        if request is None:
            request = self._local.request = self._compiled.create_infer_request()
        return request

    def _run_parallel(self, batch: NDArray[Any]) -> NDArray[Any]:
        queue = getattr(self._local, "queue", None)
        if queue is None:
            queue = self._local.queue = self._ov.AsyncInferQueue(self._compiled, self._streams)
        results: list[NDArray[Any] | None] = [None] * len(batch)

        def done(request: Any, index: int) -> None:
            results[index] = np.array(request.get_output_tensor(0).data, copy=True)

        queue.set_callback(done)
        for i in range(len(batch)):
            queue.start_async({0: batch[i : i + 1]}, i)
        queue.wait_all()
        return np.concatenate([r for r in results if r is not None])


def _type(port: Any) -> str:
    return "tensor(float16)" if "f16" in str(port.get_element_type()) else "tensor(float)"
