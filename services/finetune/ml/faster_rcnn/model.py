"""Faster R-CNN with an FPN on the suite's ResNet backbones: the network, its input and its boxes.

The detector is torchvision's ``FasterRCNN``; its feature extractor is the backbone table's
ResNet (``shared.ml.backbones``: timm modules, random init, never downloaded) with a
torchvision ``FeaturePyramidNetwork`` over stages 1-4 and a max-pooled fifth level, the
layout of the paper's Faster R-CNN R50-FPN (agssp-spec §5). Start weights for the ResNet come
from an AGBP artifact through ``create_backbone``'s counted load, which refuses weights that
fill less than its ``min_match`` share instead of dropping them silently.

Images are resized to ``imgsz`` x ``imgsz`` before the network (no letterbox, no further
resize inside torchvision: ``min_size = max_size = imgsz``), and boxes come back in the
caller's pixel coordinates.
"""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

import cv2
import numpy as np
import torch
from torch import Tensor, nn
from torchvision.models.detection import FasterRCNN
from torchvision.models.detection.anchor_utils import AnchorGenerator
from torchvision.models.detection.faster_rcnn import FastRCNNPredictor, TwoMLPHead
from torchvision.ops import FeaturePyramidNetwork
from torchvision.ops.feature_pyramid_network import LastLevelMaxPool

from services.finetune.ml.dataset import ScoredBox
from shared.ml.backbones.base import Backbone
from shared.ml.backbones.factory import create_backbone
from shared.ml.backbones.weights import DEFAULT_MIN_MATCH

FPN_CHANNELS = 256
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
        rois_per_image: proposals per image the box head trains on (torchvision's 512; the
            box head's 12544 x 1024 layer over them is most of a step's cost on a CPU).
        head_dim: width of the box head's two layers (torchvision's 1024: 13 M of the
            model's weights; test-only backbones get a narrow head, ``head_width``).
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
    rois_per_image: int = 512
    head_dim: int = 1024
    score_thresh: float = 0.001
    max_dets: int = 100
    mean: tuple[float, float, float] = DEFAULT_MEAN
    std: tuple[float, float, float] = DEFAULT_STD
    seed: int = 0


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

    The layers that start random (head, FPN, any part ``weights`` leave out) are drawn from
    ``config.seed`` on a forked generator: the same request builds the same model whatever ran
    before it in the process, and the caller's random state is left as it was.

    Raises:
        InvalidInputError: an unknown backbone, or ``weights`` that fill less than
            ``min_match`` of the ResNet (``model.backbone.body.load_report`` has the counts).
    """
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(config.seed)
        return _build(num_classes, config, backbone, weights, min_match)


def _build(
    num_classes: int,
    config: FasterRcnnConfig,
    backbone: str,
    weights: Path | Mapping[str, Tensor] | None,
    min_match: float,
) -> FasterRCNN:
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
    pooled = 7  # torchvision's MultiScaleRoIAlign output side
    head = TwoMLPHead(FPN_CHANNELS * pooled * pooled, config.head_dim)
    return FasterRCNN(
        FpnBackbone(body, FPN_CHANNELS),
        num_classes=None,  # the predictor below has num_classes + 1 (0 is the background)
        min_size=config.imgsz,
        max_size=config.imgsz,
        image_mean=list(config.mean),
        image_std=list(config.std),
        rpn_anchor_generator=anchors,
        box_score_thresh=config.score_thresh,
        box_batch_size_per_image=config.rois_per_image,
        box_head=head,
        box_predictor=FastRCNNPredictor(config.head_dim, num_classes + 1),
        box_detections_per_img=config.max_dets,
    )


def square_tensor(image: np.ndarray, imgsz: int) -> tuple[Tensor, float, float]:
    """uint8 (H, W, 3) -> float (3, imgsz, imgsz) in [0, 1], and the x and y scales."""
    h, w = image.shape[:2]
    resized = cv2.resize(image, (imgsz, imgsz), interpolation=cv2.INTER_LINEAR)
    tensor = torch.from_numpy(np.ascontiguousarray(resized)).permute(2, 0, 1).float() / 255.0
    return tensor, imgsz / w, imgsz / h


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
        tensor, sx, sy = square_tensor(image, config.imgsz)
        out = model([tensor.to(device)])[0]
        found.append(
            scored_boxes(out["boxes"].cpu(), out["labels"].cpu(), out["scores"].cpu(), sx, sy)
        )
    return found


def scored_boxes(
    boxes: Tensor, labels: Tensor, scores: Tensor, sx: float, sy: float
) -> list[ScoredBox]:
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


def head_width(test_only: bool) -> int:
    """The box head's width: torchvision's 1024, or 128 for the tiny test backbones (their
    checkpoints then stay a few MB, not 100)."""
    return 128 if test_only else 1024
