"""ONNX export of a trained detector (ultralytics exporter) and a torch-vs-ONNX Runtime check.

The graph takes ``images`` (batch, 3, H, W) float in [0, 1] with a dynamic batch axis (and
dynamic H, W, multiples of 32), and returns ``output0`` (batch, 4 + num_classes, anchors):
cx, cy, w, h in input pixels, then per-class sigmoid scores; NMS is left to the server.
"""

from __future__ import annotations

import importlib.util
import shutil
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from services.finetune.ml.yolov8.detector import Detector
from services.finetune.ml.yolov8.predict import letterbox_batch
from shared.errors import InvalidInputError

ONNX_OPSET = 17  # fixed so artifacts do not change with the installed torch/onnx versions


@dataclass(frozen=True)
class OnnxCheck:
    """Largest absolute difference between torch and ONNX Runtime outputs, and the verdict."""

    max_abs_diff: float
    matches: bool


def export_onnx(
    detector: Detector,
    out_path: Path,
    imgsz: int = 640,
    opset: int = ONNX_OPSET,
    work_dir: Path | None = None,
) -> Path:
    """Export ``detector`` to ``out_path`` through ultralytics' exporter (CPU, FP32).

    onnxslim simplification runs only when the package is installed (ultralytics would
    otherwise try to pip-install it).

    Args:
        detector: the trained detector.
        out_path: where the ``.onnx`` file goes (parent created).
        imgsz: size of the example input used for tracing; any multiple of 32 runs later.
        opset: ONNX opset.
        work_dir: scratch folder for the intermediate ``.pt`` (default: next to out_path).
    """
    from ultralytics.models import YOLO

    scratch = work_dir or out_path.parent
    scratch.mkdir(parents=True, exist_ok=True)
    out_path.parent.mkdir(parents=True, exist_ok=True)
    pt = scratch / f"{out_path.stem}.export.pt"
    torch.save({"model": detector.model.float().cpu(), "train_args": {}}, pt)
    exported = YOLO(str(pt), task="detect").export(
        format="onnx",
        imgsz=imgsz,
        opset=opset,
        dynamic=True,
        simplify=importlib.util.find_spec("onnxslim") is not None,
        half=False,
        nms=False,
        batch=1,
        device="cpu",
        verbose=False,
    )
    shutil.move(str(exported), out_path)
    pt.unlink(missing_ok=True)
    return out_path


def check_onnx_matches(
    detector: Detector,
    onnx_path: Path,
    images_bgr: list[np.ndarray],
    imgsz: int = 640,
    atol: float = 1e-3,
    rtol: float = 1e-3,
) -> OnnxCheck:
    """Run the same letterboxed batch through torch and ONNX Runtime and compare outputs.

    Args:
        images_bgr: images (H, W, 3) uint8 BGR; sent as one batch, exercising the dynamic axis.
        atol, rtol: ``numpy.allclose`` tolerances on the raw outputs (boxes in pixels).

    Raises:
        InvalidInputError: no images given.
    """
    import onnxruntime as ort

    if not images_bgr:
        raise InvalidInputError("check_onnx_matches needs at least one image")
    batch = letterbox_batch(images_bgr, imgsz)
    model = detector.model.float().cpu().eval()
    with torch.inference_mode():
        out = model(batch)
    expected = (out[0] if isinstance(out, tuple | list) else out).numpy()
    session = ort.InferenceSession(str(onnx_path), providers=["CPUExecutionProvider"])
    (actual,) = session.run(["output0"], {"images": batch.numpy()})
    diff = float(np.max(np.abs(actual - expected))) if actual.shape == expected.shape else np.inf
    matches = actual.shape == expected.shape and bool(
        np.allclose(actual, expected, atol=atol, rtol=rtol)
    )
    return OnnxCheck(max_abs_diff=diff, matches=matches)
