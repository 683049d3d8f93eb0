"""INT8 post-training quantisation of a YOLOv8 ONNX export, calibrated on the user's images.

ONNX Runtime's static QDQ quantisation: weights int8 per output channel, activations uint8
with ranges observed on calibration images (MinMax, or Percentile to ignore outliers). The
post-processing of the Detect head (DFL softmax-expectation, stride scaling, the concat of
pixel boxes with 0-1 scores) stays FP32: one uint8 scale over pixel coordinates and scores
together would wipe the scores out. Its convolution branches (box and class logits) are
quantised like the rest of the network.

Weights are quantised to 7 bits (``reduce_range``, scheme ``u8s8-rr7``): full-range U8S8
saturates in ONNX Runtime's integer kernels on x86-64 CPUs without VNNI, 7-bit weights are
exact on every CPU (``shared.schemas.detector_artifact``). The scheme is written into the
ONNX metadata; ``int8_errors`` measures an INT8 export against its FP32 source, and a job
publishes only a model within ``INT8_TOLERANCE`` of it.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Iterable, Iterator, Sequence
from pathlib import Path
from typing import Any, Literal

import numpy as np
from numpy.typing import NDArray

from shared.errors import InvalidInputError
from shared.schemas.detector_artifact import (
    INT8_QDQ,
    INT8_SCHEME_KEY,
    QUANTIZATION_KEY,
    U8S8,
    U8S8_RR7,
)

Method = Literal["minmax", "percentile"]
Scheme = Literal["u8s8-rr7", "u8s8"]
SAFE_SCHEME: Scheme = "u8s8-rr7"
# The stated tolerance of an INT8 export against its FP32 source on the same images (the
# measures of ``int8_errors``); tests/unit/inference/test_quantize_int8.py holds a seeded
# random YOLOv8n to it, and a trained model quantises more gently than random weights.
INT8_TOLERANCE: dict[str, float] = {
    "score_p50": 0.005,
    "score_p99": 0.2,
    "confident_p50": 0.2,
    "box_p50": 0.01,
}
CONFIDENT_SCORE = 0.5  # anchors FP32 is confident about, for ``confident_p50``
# The check compares at most this many calibration images: outputs of both models are held
# in memory (64 at 640 px with 6 classes: 21 MB each), and calibration may use 2048.
CHECK_IMAGES = 64
_MODULE = re.compile(r"^/model\.(\d+)/")
_HEAD_CONVS = ("/cv2.", "/cv3.")  # the box and class branches of ultralytics' Detect


class _Reader:
    """ONNX Runtime's CalibrationDataReader over (B, 3, H, W) float32 batches."""

    def __init__(self, input_name: str, batches: Iterable[NDArray[np.float32]]) -> None:
        self._input_name = input_name
        self._batches: Iterator[NDArray[np.float32]] = iter(batches)

    def get_next(self) -> dict[str, NDArray[np.float32]] | None:
        batch = next(self._batches, None)
        return None if batch is None else {self._input_name: batch}


def head_nodes_to_keep_fp32(model: Any) -> list[str]:
    """Names of the Detect module's post-processing nodes (the last ``/model.N/`` block)."""
    indices = [int(m.group(1)) for n in model.graph.node if (m := _MODULE.match(n.name))]
    if not indices:
        raise InvalidInputError("not an ultralytics YOLO export: no /model.N/ node names")
    head = f"/model.{max(indices)}/"
    return [
        n.name
        for n in model.graph.node
        if n.name.startswith(head) and not any(branch in n.name for branch in _HEAD_CONVS)
    ]


def quantize_int8(
    fp32_path: Path,
    out_path: Path,
    calibration: Sequence[NDArray[np.float32]],
    *,
    method: Method = "minmax",
    scheme: Scheme = SAFE_SCHEME,
) -> Path:
    """Write an INT8 (QDQ) copy of ``fp32_path`` calibrated on ``calibration``.

    Args:
        fp32_path: An ultralytics YOLO detect export.
        out_path: Where the quantised model goes.
        calibration: Letterboxed batches (B, 3, H, W) float32 in [0, 1], the user's images.
        method: Activation range estimate.
        scheme: ``u8s8-rr7`` (7-bit weights, exact on every CPU) or ``u8s8`` (full-range
            weights, exact only with VNNI: kept to show and detect the difference).

    Returns:
        ``out_path``.

    Raises:
        InvalidInputError: no calibration images, or not a YOLO export.
    """
    import onnx
    from onnxruntime.quantization import (
        CalibrationMethod,
        QuantFormat,
        QuantType,
        quantize_static,
    )

    if not calibration:
        raise InvalidInputError("INT8 calibration needs at least one image", code="no_calibration")
    if scheme not in (U8S8_RR7, U8S8):
        raise InvalidInputError(f"unknown INT8 scheme {scheme!r}", code="int8_scheme")
    model = onnx.load(str(fp32_path))
    out_path.parent.mkdir(parents=True, exist_ok=True)
    quantize_static(
        str(fp32_path),
        str(out_path),
        _Reader(model.graph.input[0].name, calibration),
        quant_format=QuantFormat.QDQ,
        activation_type=QuantType.QUInt8,
        weight_type=QuantType.QInt8,
        per_channel=True,
        reduce_range=scheme == U8S8_RR7,
        calibrate_method=(
            CalibrationMethod.Percentile if method == "percentile" else CalibrationMethod.MinMax
        ),
        nodes_to_exclude=head_nodes_to_keep_fp32(model),
        extra_options={"ActivationSymmetric": False, "WeightSymmetric": True},
    )
    _copy_metadata(model, out_path, scheme)
    return out_path


def int8_errors(
    reference: NDArray[np.floating[Any]], quantized: NDArray[np.floating[Any]], imgsz: int
) -> dict[str, float]:
    """How far INT8 outputs are from FP32 outputs on the same inputs.

    Args:
        reference: FP32 raw detect outputs (B, 4 + nc, N): pixel boxes (cx, cy, w, h), then
            class scores in [0, 1].
        quantized: INT8 outputs of the same inputs, same shape.
        imgsz: Input side in pixels; box errors are fractions of it.

    Returns:
        ``score_p50`` / ``score_p99``: median and 99th percentile of the absolute class-score
        error over every anchor and class; ``confident_p50``: median error of the best
        score on anchors whose FP32 best score is above 0.5 (0.0 when there are none);
        ``box_p50``: median absolute box-coordinate error over ``imgsz``.
    """
    a, b = np.asarray(reference, np.float64), np.asarray(quantized, np.float64)
    if a.shape != b.shape:
        raise InvalidInputError(f"outputs differ in shape: {a.shape} and {b.shape}")
    score_err = np.abs(a[:, 4:] - b[:, 4:])
    best_a, best_b = a[:, 4:].max(axis=1), b[:, 4:].max(axis=1)
    confident = best_a > CONFIDENT_SCORE
    best_err = np.abs(best_a - best_b)[confident]
    return {
        "score_p50": float(np.median(score_err)),
        "score_p99": float(np.percentile(score_err, 99)),
        "confident_p50": float(np.median(best_err)) if best_err.size else 0.0,
        "box_p50": float(np.median(np.abs(a[:, :4] - b[:, :4]))) / imgsz,
    }


def measure_int8_errors(
    fp32_path: Path, int8_path: Path, batches: Sequence[NDArray[np.float32]], imgsz: int
) -> dict[str, float]:
    """``int8_errors`` of two exports run with ONNX Runtime (CPU) on ``batches``.

    Args:
        fp32_path: The FP32 export.
        int8_path: Its INT8 copy.
        batches: Letterboxed batches (B, 3, imgsz, imgsz) float32 in [0, 1].
        imgsz: Their side in pixels.
    """
    outputs = []
    for path in (fp32_path, int8_path):
        run = _ort_forward(path)
        outputs.append(np.concatenate([run(batch) for batch in batches]))
    return int8_errors(outputs[0], outputs[1], imgsz)


def over_tolerance(
    errors: dict[str, float], tolerance: dict[str, float] | None = None
) -> dict[str, float]:
    """The measures of ``errors`` above ``tolerance`` (default ``INT8_TOLERANCE``)."""
    limits = INT8_TOLERANCE if tolerance is None else tolerance
    return {k: v for k, v in errors.items() if k in limits and not v <= limits[k]}


def _ort_forward(path: Path) -> Callable[[NDArray[np.float32]], NDArray[np.float32]]:
    import onnxruntime as ort

    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    name = session.get_inputs()[0].name

    def forward(batch: NDArray[np.float32]) -> NDArray[np.float32]:
        return np.asarray(session.run(None, {name: batch})[0], np.float32)

    return forward


def _copy_metadata(source: Any, out_path: Path, scheme: str) -> None:
    """Keep ultralytics' metadata (names, imgsz, stride) so servers read the INT8 model alike;
    add the quantisation and its scheme (servers check the scheme against their CPU)."""
    import onnx

    quantized = onnx.load(str(out_path))
    del quantized.metadata_props[:]
    for prop in source.metadata_props:
        quantized.metadata_props.add(key=prop.key, value=prop.value)
    quantized.metadata_props.add(key=QUANTIZATION_KEY, value=INT8_QDQ)
    quantized.metadata_props.add(key=INT8_SCHEME_KEY, value=scheme)
    onnx.save(quantized, str(out_path))
