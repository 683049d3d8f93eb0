"""Fixtures for the detection core: a tiny random YOLOv8n made to detect, exported to ONNX."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import cv2
import numpy as np
import pytest

from services.inference.ml.detections import Detections

IMGSZ = 320  # small input keeps the CPU runs short; the geometry code is size-agnostic


@dataclass(frozen=True)
class YoloFiles:
    pt: Path
    imgsz: int
    static_onnx: Path  # batch 1, input fixed at IMGSZ x IMGSZ
    dynamic_onnx: Path  # batch, height and width dynamic


def blocky_image(rng: np.random.Generator, h: int, w: int, *, grey: bool = False) -> np.ndarray:
    """Random 16-px colour blocks: edges and flat areas give a random net varied outputs."""
    small = rng.integers(0, 256, (max(h // 16, 1), max(w // 16, 1), 3), dtype=np.uint8)
    image = cv2.resize(small, (w, h), interpolation=cv2.INTER_NEAREST)
    return np.repeat(image[..., :1], 3, axis=2) if grey else image


def _make_detecting_model(seed: int) -> Any:
    """YOLOv8n from YAML whose outputs are neither flat nor saturated.

    Out of the box a random YOLOv8n gives almost identical scores everywhere (activations
    shrink layer by layer), so every box ties. Re-estimating BatchNorm statistics on a
    few images gives unit-scale features, and a class-bias shift puts the best scores
    around 0.15-0.8, so conf=0.1 keeps tens to hundreds of overlapping boxes for NMS.
    """
    import torch
    from ultralytics.models.yolo.model import YOLO

    torch.manual_seed(seed)
    model = YOLO("yolov8n.yaml")
    net: Any = model.model
    rng = np.random.default_rng(seed)
    calib = np.stack([blocky_image(rng, IMGSZ, IMGSZ, grey=i % 2 == 1) for i in range(6)])
    batch = torch.from_numpy(calib).permute(0, 3, 1, 2).float() / 255
    for module in net.modules():
        if isinstance(module, torch.nn.BatchNorm2d):
            module.reset_running_stats()
            module.momentum = None  # cumulative average: one pass sets the statistics
    net.train()
    with torch.no_grad():
        net(batch)
    net.eval()
    for branch in net.model[-1].cv3:
        branch[-1].bias.data += 6.5
    return model


@pytest.fixture(scope="session")
def yolo_files(tmp_path_factory: pytest.TempPathFactory) -> YoloFiles:
    from ultralytics.models.yolo.model import YOLO

    out = tmp_path_factory.mktemp("yolo")
    pt = out / "model.pt"
    # ultralytics saves weights in fp16; export from the saved file so .pt and .onnx agree.
    _make_detecting_model(seed=0).save(str(pt))
    model: Any = YOLO(str(pt))
    paths = {}
    for name, dynamic in (("static", False), ("dynamic", True)):
        # The exporter names its output after the source file; point it into our tmp dir.
        model.model.pt_path = str(out / f"{name}.pt")
        paths[name] = Path(
            model.export(format="onnx", imgsz=IMGSZ, dynamic=dynamic, simplify=False)
        )
    return YoloFiles(pt=pt, imgsz=IMGSZ, static_onnx=paths["static"], dynamic_onnx=paths["dynamic"])


@pytest.fixture(scope="session")
def parity_images() -> list[np.ndarray]:
    """RGB images of several sizes and aspect ratios, one grey replicated to RGB."""
    rng = np.random.default_rng(123)
    return [
        blocky_image(rng, 200, 200, grey=True),
        blocky_image(rng, 480, 640),
        blocky_image(rng, 123, 457),
        blocky_image(rng, 701, 96),
    ]


def _assert_same_detections(
    ours: Detections, ref: Detections, *, box_tol: float, score_tol: float
) -> None:
    """Same count and a one-to-one match: same class, box and score within tolerance."""
    assert len(ours) == len(ref), f"{len(ours)} detections vs {len(ref)} in the reference"
    assert ours.image_hw == ref.image_hw
    used = np.zeros(len(ours), dtype=bool)
    # Match rather than compare by rank: near-equal scores may swap places between runtimes,
    # and boxes clipped to the image border can coincide.
    for box, score, cls in zip(ref.boxes, ref.scores, ref.class_ids, strict=True):
        ok = (
            ~used
            & (ours.class_ids == cls)
            & (np.abs(ours.boxes - box).max(axis=1) <= box_tol)
            & (np.abs(ours.scores - score) <= score_tol)
        )
        assert ok.any(), f"no match for box {box} score {score} class {cls}"
        used[np.flatnonzero(ok)[0]] = True


@pytest.fixture(scope="session")
def assert_same_detections() -> Callable[..., None]:
    return _assert_same_detections


@pytest.fixture
def make_image() -> Callable[..., np.ndarray]:
    rng = np.random.default_rng(7)
    return lambda h, w, grey=False: blocky_image(rng, h, w, grey=grey)
