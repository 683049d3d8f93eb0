"""Faster R-CNN with an FPN on the suite's ResNet backbones: build, train, predict, export.

The detector is torchvision's ``FasterRCNN``; its feature extractor is the backbone table's
ResNet (``shared.ml.backbones``: timm modules, random init, never downloaded) with a
torchvision ``FeaturePyramidNetwork`` over stages 1-4 and a max-pooled fifth level, the
layout of the paper's Faster R-CNN R50-FPN (agssp-spec §5). Start weights for the ResNet come
from an AGBP artifact through ``create_backbone``'s counted load, which refuses weights that
fill less than its ``min_match`` share instead of dropping them silently.

Images are resized to ``imgsz`` x ``imgsz`` before the network (no letterbox, no further
resize inside torchvision: ``min_size = max_size = imgsz``), and boxes come back in the
caller's pixel coordinates. The ONNX export takes one (1, 3, imgsz, imgsz) float image in
[0, 1] and returns ``boxes`` (N, 4) xyxy in that square, ``labels`` (N,) 1-based and
``scores`` (N,), already filtered by score and NMS; ``decode_onnx`` maps them back.
"""

from __future__ import annotations

import math
import random
from collections import OrderedDict
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import cv2
import numpy as np
import torch
from torch import Tensor, nn
from torchvision.models.detection import FasterRCNN
from torchvision.models.detection.anchor_utils import AnchorGenerator
from torchvision.ops import FeaturePyramidNetwork
from torchvision.ops.feature_pyramid_network import LastLevelMaxPool

from services.finetune.ml.dataset import ScoredBox
from shared.ml.backbones.base import Backbone
from shared.ml.backbones.factory import create_backbone
from shared.ml.backbones.weights import DEFAULT_MIN_MATCH

FPN_STAGES = (1, 2, 3, 4)  # ResNet layer1..layer4 (agssp-spec §4.4 stage numbering)
DEFAULT_MEAN = (0.485, 0.456, 0.406)  # used when the start weights record no statistics
DEFAULT_STD = (0.229, 0.224, 0.225)


@dataclass(frozen=True)
class FasterRcnnConfig:
    """Architecture and training recipe (agssp-spec §5.3 leaves the CPU recipe to us).

    Attributes:
        imgsz: the square side images are resized to.
        anchor_sizes: one anchor size per FPN level (4 stages + the pooled level), in pixels
            of the resized image; torchvision's defaults (32..512) suit 800 px images, these
            suit the 160-400 px images of a CPU run.
        frozen_stages: ResNet stages kept frozen (0 = stem; torchvision's default trains
            layers 2-4, i.e. 1).
        epochs, batch, lr, momentum, weight_decay: SGD with a cosine schedule.
        warmup_iters: linear learning-rate warm-up at the start.
        hflip: probability of a horizontal flip per image in training.
        score_thresh: lowest score kept at prediction (low, for mAP).
        max_dets: detections kept per image.
        mean, std: input normalisation (the start weights' own when they record them).
        seed: seeds torch, numpy and the sampler.
    """

    imgsz: int = 320
    anchor_sizes: tuple[int, ...] = (16, 32, 64, 128, 256)
    frozen_stages: int = 1
    epochs: int = 24
    batch: int = 4
    lr: float = 0.01
    momentum: float = 0.9
    weight_decay: float = 1e-4
    warmup_iters: int = 50
    hflip: float = 0.5
    score_thresh: float = 0.001
    max_dets: int = 100
    mean: tuple[float, float, float] = DEFAULT_MEAN
    std: tuple[float, float, float] = DEFAULT_STD
    seed: int = 0


@dataclass(frozen=True)
class Sample:
    """One training image: uint8 RGB (H, W, 3), boxes xyxy in its pixels, 0-based classes."""

    image: np.ndarray
    boxes: np.ndarray  # float32 (N, 4)
    labels: np.ndarray  # int64 (N,)


@dataclass
class EpochLog:
    """Mean losses of one epoch (torchvision's four, and their sum)."""

    epoch: int
    losses: dict[str, float] = field(default_factory=dict)


class FpnBackbone(nn.Module):
    """A suite ``Backbone`` (stages 1-4) with a feature pyramid: the ``backbone`` torchvision's
    detectors expect (a dict of maps and an ``out_channels`` attribute)."""

    def __init__(self, body: Backbone, channels: int = 256) -> None:
        super().__init__()
        self.body = body
        self.fpn = FeaturePyramidNetwork(
            list(body.out_channels), channels, extra_blocks=LastLevelMaxPool()
        )
        self.out_channels = channels

    def forward(self, x: Tensor) -> dict[str, Tensor]:
        maps = self.body(x)
        out: dict[str, Tensor] = self.fpn(OrderedDict((str(i), m) for i, m in enumerate(maps)))
        return out


def build_faster_rcnn(
    num_classes: int,
    config: FasterRcnnConfig,
    *,
    backbone: str = "resnet50",
    weights: Path | Mapping[str, Tensor] | None = None,
    min_match: float = DEFAULT_MIN_MATCH,
) -> FasterRCNN:
    """A Faster R-CNN for ``num_classes`` defect classes on the named ResNet.

    Raises:
        InvalidInputError: an unknown backbone, or ``weights`` that fill less than
            ``min_match`` of the ResNet (``model.backbone.body.load_report`` has the counts).
    """
    body = create_backbone(
        backbone, weights=weights, frozen_stages=config.frozen_stages,
        out_indices=FPN_STAGES, img_size=config.imgsz, min_match=min_match,
    )  # fmt: skip
    levels = len(FPN_STAGES) + 1
    if len(config.anchor_sizes) != levels:
        raise ValueError(f"anchor_sizes needs one size per FPN level ({levels})")
    anchors = AnchorGenerator(
        sizes=tuple((s,) for s in config.anchor_sizes), aspect_ratios=((0.5, 1.0, 2.0),) * levels
    )
    return FasterRCNN(
        FpnBackbone(body),
        num_classes=num_classes + 1,  # torchvision's class 0 is the background
        min_size=config.imgsz,
        max_size=config.imgsz,
        image_mean=list(config.mean),
        image_std=list(config.std),
        rpn_anchor_generator=anchors,
        box_score_thresh=config.score_thresh,
        box_detections_per_img=config.max_dets,
    )


def _square(image: np.ndarray, imgsz: int) -> tuple[Tensor, float, float]:
    """uint8 (H, W, 3) -> float (3, imgsz, imgsz) in [0, 1], and the x and y scales."""
    h, w = image.shape[:2]
    resized = cv2.resize(image, (imgsz, imgsz), interpolation=cv2.INTER_LINEAR)
    tensor = torch.from_numpy(np.ascontiguousarray(resized)).permute(2, 0, 1).float() / 255.0
    return tensor, imgsz / w, imgsz / h


def _target(sample: Sample, sx: float, sy: float, flip: bool, imgsz: int) -> dict[str, Tensor]:
    boxes = sample.boxes.astype(np.float32).reshape(-1, 4) * np.array([sx, sy, sx, sy], np.float32)
    if flip:
        boxes = boxes[:, [2, 1, 0, 3]] * np.array([-1, 1, -1, 1], np.float32)
        boxes[:, [0, 2]] += imgsz
    return {
        "boxes": torch.from_numpy(boxes),
        "labels": torch.from_numpy(sample.labels.astype(np.int64).reshape(-1) + 1),
    }


def _batch(
    samples: Sequence[Sample], imgsz: int, hflip: float, rng: random.Random
) -> tuple[list[Tensor], list[dict[str, Tensor]]]:
    images, targets = [], []
    for sample in samples:
        tensor, sx, sy = _square(sample.image, imgsz)
        flip = rng.random() < hflip
        images.append(tensor.flip(-1) if flip else tensor)
        targets.append(_target(sample, sx, sy, flip, imgsz))
    return images, targets


def _lr_at(step: int, total: int, config: FasterRcnnConfig) -> float:
    if step < config.warmup_iters:
        return config.lr * (0.1 + 0.9 * step / max(1, config.warmup_iters))
    done = (step - config.warmup_iters) / max(1, total - config.warmup_iters)
    return config.lr * 0.5 * (1 + math.cos(math.pi * min(1.0, done)))


def train_faster_rcnn(
    model: FasterRCNN,
    samples: Sequence[Sample],
    config: FasterRcnnConfig,
    *,
    on_epoch: Callable[[EpochLog], bool] | None = None,
    device: torch.device | None = None,
) -> list[EpochLog]:
    """SGD over ``samples`` for ``config.epochs``; ``on_epoch`` returning False stops early.

    Returns:
        The per-epoch mean losses.
    """
    if not samples:
        raise ValueError("no training images")
    device = device or torch.device("cpu")
    torch.manual_seed(config.seed)
    rng = random.Random(config.seed)
    model.to(device).train()
    params = [p for p in model.parameters() if p.requires_grad]
    optimiser = torch.optim.SGD(
        params, lr=config.lr, momentum=config.momentum, weight_decay=config.weight_decay
    )
    steps_per_epoch = math.ceil(len(samples) / config.batch)
    total, step, logs = steps_per_epoch * config.epochs, 0, []
    for epoch in range(config.epochs):
        order = list(range(len(samples)))
        rng.shuffle(order)
        sums: dict[str, float] = {}
        for start in range(0, len(order), config.batch):
            chosen = [samples[i] for i in order[start : start + config.batch]]
            images, targets = _batch(chosen, config.imgsz, config.hflip, rng)
            losses = model([i.to(device) for i in images], [
                {k: v.to(device) for k, v in t.items()} for t in targets
            ])  # fmt: skip
            loss = sum(losses.values(), torch.zeros((), device=device))
            for group in optimiser.param_groups:
                group["lr"] = _lr_at(step, total, config)
            optimiser.zero_grad(set_to_none=True)
            loss.backward()
            optimiser.step()
            step += 1
            for name, value in {**losses, "loss": loss}.items():
                sums[name] = sums.get(name, 0.0) + float(value.detach())
        log = EpochLog(epoch + 1, {k: v / steps_per_epoch for k, v in sums.items()})
        logs.append(log)
        if on_epoch is not None and on_epoch(log) is False:
            break
    model.eval()
    return logs


@torch.no_grad()
def predict(
    model: FasterRCNN,
    images: Sequence[np.ndarray],
    config: FasterRcnnConfig,
    *,
    device: torch.device | None = None,
) -> list[list[ScoredBox]]:
    """Boxes per uint8 RGB image, in that image's pixels, 0-based classes."""
    device = device or torch.device("cpu")
    model.to(device).eval()
    found = []
    for image in images:
        tensor, sx, sy = _square(image, config.imgsz)
        out = model([tensor.to(device)])[0]
        found.append(_scored(out["boxes"].cpu(), out["labels"].cpu(), out["scores"].cpu(), sx, sy))
    return found


def _scored(boxes: Tensor, labels: Tensor, scores: Tensor, sx: float, sy: float) -> list[ScoredBox]:
    scale = torch.tensor([sx, sy, sx, sy], dtype=boxes.dtype)
    boxes = boxes.reshape(-1, 4) / scale
    return [
        ScoredBox(
            x1=float(b[0]), y1=float(b[1]), x2=float(b[2]), y2=float(b[3]),
            class_id=int(c) - 1, score=float(s),
        )
        for b, c, s in zip(boxes, labels.reshape(-1), scores.reshape(-1), strict=True)
        if int(c) >= 1
    ]  # fmt: skip


class _OnnxGraph(nn.Module):
    """One (1, 3, S, S) image in [0, 1] -> (boxes, labels, scores) of that image."""

    def __init__(self, model: FasterRCNN) -> None:
        super().__init__()
        self.model = model

    def forward(self, images: Tensor) -> tuple[Tensor, Tensor, Tensor]:
        out = self.model([images[0]])[0]
        return out["boxes"], out["labels"], out["scores"]


ONNX_OUTPUTS = ("boxes", "labels", "scores")


def export_onnx(model: FasterRCNN, path: Path, config: FasterRcnnConfig, opset: int = 17) -> Path:
    """Write the detector as ONNX (see the module docstring for its inputs and outputs)."""
    model.cpu().eval()
    example = torch.rand(1, 3, config.imgsz, config.imgsz)
    torch.onnx.export(
        _OnnxGraph(model), (example,), str(path), input_names=["images"],
        output_names=list(ONNX_OUTPUTS), opset_version=opset, dynamo=False,
    )  # fmt: skip
    return path


def onnx_input(image: np.ndarray, imgsz: int) -> tuple[np.ndarray, float, float]:
    """The exported graph's input for a uint8 RGB image, and the scales ``decode_onnx`` needs."""
    tensor, sx, sy = _square(image, imgsz)
    return tensor.unsqueeze(0).numpy(), sx, sy


def decode_onnx(outputs: Sequence[np.ndarray], sx: float, sy: float) -> list[ScoredBox]:
    """The exported graph's (boxes, labels, scores) as boxes in the original image's pixels."""
    boxes, labels, scores = (torch.from_numpy(np.asarray(o)) for o in outputs)
    return _scored(boxes.float(), labels, scores.float(), sx, sy)
