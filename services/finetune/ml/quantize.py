"""INT8 post-training quantisation of a YOLOv8 ONNX export, calibrated on the user's images.

ONNX Runtime's static QDQ quantisation: weights int8 per output channel, activations uint8
with ranges observed on calibration images (MinMax, or Percentile to ignore outliers). The
post-processing of the Detect head (DFL softmax-expectation, stride scaling, the concat of
pixel boxes with 0-1 scores) stays FP32: one uint8 scale over pixel coordinates and scores
together would wipe the scores out. Its convolution branches (box and class logits) are
quantised like the rest of the network.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Iterator, Sequence
from pathlib import Path
from typing import Any, Literal

import numpy as np
from numpy.typing import NDArray

from shared.errors import InvalidInputError

Method = Literal["minmax", "percentile"]
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
) -> Path:
    """Write an INT8 (QDQ) copy of ``fp32_path`` calibrated on ``calibration``.

    Args:
        fp32_path: An ultralytics YOLO detect export.
        out_path: Where the quantised model goes.
        calibration: Letterboxed batches (B, 3, H, W) float32 in [0, 1], the user's images.
        method: Activation range estimate.

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
        calibrate_method=(
            CalibrationMethod.Percentile if method == "percentile" else CalibrationMethod.MinMax
        ),
        nodes_to_exclude=head_nodes_to_keep_fp32(model),
        extra_options={"ActivationSymmetric": False, "WeightSymmetric": True},
    )
    _copy_metadata(model, out_path)
    return out_path


def _copy_metadata(source: Any, out_path: Path) -> None:
    """Keep ultralytics' metadata (names, imgsz, stride) so servers read the INT8 model alike."""
    import onnx

    quantized = onnx.load(str(out_path))
    del quantized.metadata_props[:]
    for prop in source.metadata_props:
        quantized.metadata_props.add(key=prop.key, value=prop.value)
    quantized.metadata_props.add(key="quantization", value="int8-qdq")
    onnx.save(quantized, str(out_path))
