"""The ONNX graph of a Faster R-CNN and its decode.

The export takes one (1, 3, imgsz, imgsz) float image in [0, 1] and returns ``boxes`` (N, 4)
xyxy in that square, ``labels`` (N,) 1-based and ``scores`` (N,), already filtered by score
and NMS; ``decode_onnx`` maps them back to the caller's pixels.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path

import numpy as np
import torch
from torch import Tensor, nn
from torchvision.models.detection import FasterRCNN

from services.finetune.ml.dataset import ScoredBox
from services.finetune.ml.faster_rcnn.model import FasterRcnnConfig, scored_boxes, square_tensor


class _OnnxGraph(nn.Module):
    """One (1, 3, S, S) image in [0, 1] -> (boxes, labels, scores) of that image."""

    def __init__(self, model: FasterRCNN) -> None:
        super().__init__()
        self.model = model

    def forward(self, images: Tensor) -> tuple[Tensor, Tensor, Tensor]:
        out = self.model([images[0]])[0]
        return out["boxes"], out["labels"], out["scores"]


ONNX_OUTPUTS = ("boxes", "labels", "scores")


def export_onnx(
    model: FasterRCNN,
    path: Path,
    config: FasterRcnnConfig,
    opset: int = 17,
    metadata: Mapping[str, str] | None = None,
) -> Path:
    """Write the detector as ONNX (see the module docstring for its inputs and outputs),
    with ``metadata`` as the graph's metadata_props (inference reads its output layout)."""
    model.cpu().eval()
    example = torch.rand(1, 3, config.imgsz, config.imgsz)
    torch.onnx.export(
        _OnnxGraph(model), (example,), str(path), input_names=["images"],
        output_names=list(ONNX_OUTPUTS), opset_version=opset, dynamo=False,
    )  # fmt: skip
    if metadata:
        import onnx

        graph = onnx.load(str(path))
        for key, value in metadata.items():
            entry = graph.metadata_props.add()
            entry.key, entry.value = key, value
        onnx.save(graph, str(path))
    return path


def onnx_input(image: np.ndarray, imgsz: int) -> tuple[np.ndarray, float, float]:
    """The exported graph's input for a uint8 RGB image, and the scales ``decode_onnx`` needs."""
    tensor, sx, sy = square_tensor(image, imgsz)
    return tensor.unsqueeze(0).numpy(), sx, sy


def decode_onnx(outputs: Sequence[np.ndarray], sx: float, sy: float) -> list[ScoredBox]:
    """The exported graph's (boxes, labels, scores) as boxes in the original image's pixels."""
    boxes, labels, scores = (torch.from_numpy(np.asarray(o)) for o in outputs)
    return scored_boxes(boxes.float(), labels, scores.float(), sx, sy)
