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

import io
import math
import random
from collections import OrderedDict
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

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
from services.finetune.ml.image_files import read_bgr
from shared.errors import InvalidInputError
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


@dataclass(frozen=True)
class Sample:
    """One training image: uint8 RGB (H, W, 3), boxes xyxy in its pixels, 0-based classes."""

    image: np.ndarray
    boxes: np.ndarray  # float32 (N, 4)
    labels: np.ndarray  # int64 (N,)


@dataclass
class EpochLog:
    """Mean losses of one epoch (torchvision's four, and their sum), and the optimiser's
    state after it (what a checkpoint needs to resume at the next epoch)."""

    epoch: int
    losses: dict[str, float] = field(default_factory=dict)
    optimiser: dict[str, Any] | None = field(default=None, repr=False)


@dataclass(frozen=True)
class Resume:
    """Where an interrupted run goes on: epochs done and the optimiser's saved state."""

    epochs_done: int
    optimiser: dict[str, Any]


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
    should_stop: Callable[[], bool] | None = None,
    device: torch.device | None = None,
    resume: Resume | None = None,
) -> list[EpochLog]:
    """SGD over ``samples`` for ``config.epochs``; ``on_epoch`` returning False stops early,
    and so does ``should_stop`` (asked before every batch, so a cancel on a slow device
    does not wait for the epoch's end; the unfinished epoch is dropped, not logged).

    Each epoch seeds its own shuffle and torch's generator from ``(seed, epoch)``, so a run
    resumed after epoch k (``resume``, with the model's tensors from that epoch's checkpoint)
    trains the remaining epochs as the uninterrupted run would.

    Returns:
        The per-epoch mean losses of the epochs trained here.
    """
    if not samples:
        raise ValueError("no training images")
    device = device or torch.device("cpu")
    model.to(device).train()
    params = [p for p in model.parameters() if p.requires_grad]
    optimiser = torch.optim.SGD(
        params, lr=config.lr, momentum=config.momentum, weight_decay=config.weight_decay
    )
    first = 0
    if resume is not None:
        optimiser.load_state_dict(resume.optimiser)
        first = resume.epochs_done
    steps_per_epoch = math.ceil(len(samples) / config.batch)
    total, step = steps_per_epoch * config.epochs, steps_per_epoch * first
    logs: list[EpochLog] = []
    for epoch in range(first, config.epochs):
        rng = random.Random(config.seed * 100_003 + epoch)
        torch.manual_seed(config.seed * 100_003 + epoch)
        order = list(range(len(samples)))
        rng.shuffle(order)
        sums: dict[str, float] = {}
        for start in range(0, len(order), config.batch):
            if should_stop is not None and should_stop():
                model.eval()
                return logs
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
        log = EpochLog(
            epoch + 1, {k: v / steps_per_epoch for k, v in sums.items()}, optimiser.state_dict()
        )
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
    tensor, sx, sy = _square(image, imgsz)
    return tensor.unsqueeze(0).numpy(), sx, sy


def decode_onnx(outputs: Sequence[np.ndarray], sx: float, sy: float) -> list[ScoredBox]:
    """The exported graph's (boxes, labels, scores) as boxes in the original image's pixels."""
    boxes, labels, scores = (torch.from_numpy(np.asarray(o)) for o in outputs)
    return _scored(boxes.float(), labels, scores.float(), sx, sy)


CHECKPOINT_FORMAT = "agssp-faster-rcnn-v1"


@dataclass(frozen=True)
class FasterRcnnCheckpoint:
    """A trained Faster R-CNN: its tensors, classes, backbone and architecture settings.

    Attributes:
        classes: class names, index = class id (0-based; torchvision's background is not one).
        backbone: the ResNet's ``BACKBONES`` name.
        config: the ``FasterRcnnConfig`` it was built and trained with, as a dict.
        state_dict: every tensor of the model (float32, CPU).
        metrics: evaluation figures of this checkpoint.
        train: the job's training config (style guide §0.4: config beside the weights).
    """

    classes: tuple[str, ...]
    backbone: str
    config: dict[str, Any]
    state_dict: dict[str, Tensor]
    metrics: dict[str, float] = field(default_factory=dict)
    train: dict[str, Any] = field(default_factory=dict)

    def architecture(self) -> FasterRcnnConfig:
        """The ``FasterRcnnConfig`` the tensors belong to."""
        known = {k: v for k, v in self.config.items() if k in FasterRcnnConfig.__dataclass_fields__}
        for key in ("anchor_sizes", "mean", "std"):
            if key in known:
                known[key] = tuple(known[key])
        return FasterRcnnConfig(**known)

    def payload(self) -> dict[str, Any]:
        """Tensors and plain data only: what ``torch.save`` writes (``weights_only`` reads)."""
        return {
            "format": CHECKPOINT_FORMAT,
            "classes": list(self.classes),
            "backbone": self.backbone,
            "config": self.config,
            "state_dict": self.state_dict,
            "metrics": self.metrics,
            "train": self.train,
        }

    def to_bytes(self) -> bytes:
        """Serialise :meth:`payload` with ``torch.save``."""
        buffer = io.BytesIO()
        torch.save(self.payload(), buffer)
        return buffer.getvalue()

    @classmethod
    def from_payload(cls, raw: Any, source: str = "<bytes>") -> FasterRcnnCheckpoint:
        """The checkpoint a :meth:`payload` holds.

        Raises:
            InvalidInputError: not a checkpoint of this format (code ``bad_weights``).
        """
        if not isinstance(raw, dict) or raw.get("format") != CHECKPOINT_FORMAT:
            raise InvalidInputError(
                f"{source}: not a {CHECKPOINT_FORMAT} checkpoint", code="bad_weights"
            )
        return cls(
            classes=tuple(raw["classes"]),
            backbone=str(raw["backbone"]),
            config=dict(raw["config"]),
            state_dict=dict(raw["state_dict"]),
            metrics=dict(raw.get("metrics", {})),
            train=dict(raw.get("train", {})),
        )

    @classmethod
    def from_bytes(cls, data: bytes, source: str = "<bytes>") -> FasterRcnnCheckpoint:
        """Load bytes written by :meth:`to_bytes`; refuses pickled code (``weights_only``).

        Raises:
            InvalidInputError: not a checkpoint of this format (code ``bad_weights``).
        """
        return cls.from_payload(load_tensors(data, source), source)


def load_tensors(data: bytes, source: str) -> Any:
    """``torch.load`` with ``weights_only`` (no pickled code), on the CPU.

    Raises:
        InvalidInputError: unreadable (code ``bad_weights``).
    """
    try:
        return torch.load(io.BytesIO(data), map_location="cpu", weights_only=True)
    except Exception as exc:  # torch raises several unpickling error types
        raise InvalidInputError(f"{source}: not a readable checkpoint", code="bad_weights") from exc


def checkpoint_of(
    model: FasterRCNN,
    classes: Sequence[str],
    backbone: str,
    config: FasterRcnnConfig,
    train: Mapping[str, Any] | None = None,
) -> FasterRcnnCheckpoint:
    """The model's tensors (copied to the CPU) as a checkpoint."""
    state = {k: v.detach().cpu().clone() for k, v in model.state_dict().items()}
    return FasterRcnnCheckpoint(
        tuple(classes), backbone, _plain(config), state, train=dict(train or {})
    )


def model_from_checkpoint(checkpoint: FasterRcnnCheckpoint) -> FasterRCNN:
    """The model the checkpoint holds, in eval mode on the CPU."""
    config = checkpoint.architecture()
    model = build_faster_rcnn(len(checkpoint.classes), config, backbone=checkpoint.backbone)
    model.load_state_dict(checkpoint.state_dict)
    return model.eval()


def _plain(config: FasterRcnnConfig) -> dict[str, Any]:
    return {k: list(v) if isinstance(v, tuple) else v for k, v in vars(config).items()}


@dataclass(frozen=True)
class Transfer:
    """Counts of a whole-detector start (AGDP -> finetune): tensors loaded out of the
    model's, and those left fresh (class-specific layers when the class count differs)."""

    loaded: int
    total: int
    target_total: int
    skipped: tuple[tuple[str, str], ...]

    @property
    def fraction(self) -> float:
        """Share of the source's tensors that found a place."""
        return self.loaded / self.total if self.total else 0.0


def transfer_detector(
    model: FasterRCNN, source: Mapping[str, Tensor], min_fraction: float
) -> Transfer:
    """Copy the source detector's tensors of the same name and shape into ``model``.

    Tensors whose shapes differ (the box predictor's class logits and box deltas, when the
    class count differs) keep their fresh init and are listed in ``skipped``.

    Raises:
        InvalidInputError: fewer than ``min_fraction`` of the source's tensors fit (code
            ``transfer_too_small``); nothing is copied then.
    """
    own = model.state_dict()
    usable: dict[str, Tensor] = {}
    skipped: list[tuple[str, str]] = []
    for key, tensor in source.items():
        if key not in own:
            skipped.append((key, "not in the model"))
        elif own[key].shape != tensor.shape:
            skipped.append((key, f"shape {tuple(tensor.shape)} != {tuple(own[key].shape)}"))
        else:
            usable[key] = tensor
    report = Transfer(len(usable), len(source), len(own), tuple(skipped))
    if report.fraction < min_fraction:
        raise InvalidInputError(
            f"only {report.loaded}/{report.total} tensors of the start detector fit this "
            f"Faster R-CNN (needs {min_fraction:.0%}); first skipped: {list(skipped[:3])}",
            code="transfer_too_small",
        )
    model.load_state_dict(usable, strict=False)
    return report


def read_yolo_split(root: Path, split: str) -> list[Sample]:
    """Training samples of a materialised YOLO folder's ``images/<split>`` (RGB) with the
    boxes of ``labels/<split>/<stem>.txt`` (``class cx cy w h``, normalised)."""
    images, labels = root / "images" / split, root / "labels" / split
    samples = []
    for path in sorted(p for p in images.rglob("*") if p.is_file() or p.is_symlink()):
        image = read_rgb(path)
        h, w = image.shape[:2]
        label = labels / path.relative_to(images).with_suffix(".txt")
        rows = _label_rows(label)
        boxes = np.array(
            [[(cx - bw / 2) * w, (cy - bh / 2) * h, (cx + bw / 2) * w, (cy + bh / 2) * h]
             for _, cx, cy, bw, bh in rows], np.float32,
        ).reshape(-1, 4)  # fmt: skip
        classes = np.array([int(r[0]) for r in rows], np.int64)
        samples.append(Sample(image, boxes, classes))
    return samples


def _label_rows(path: Path) -> list[tuple[float, ...]]:
    if not path.is_file():
        return []
    rows = []
    for line in path.read_text(encoding="utf-8").splitlines():
        values = line.split()
        if len(values) == 5:  # a box; segment polygons are boxed by materialize_yolo already
            rows.append(tuple(float(v) for v in values))
    return rows


def read_rgb(path: Path) -> np.ndarray:
    """Decode an image file to RGB uint8 (H, W, 3); grey images are expanded.

    Raises:
        InvalidInputError: missing or not a decodable image.
    """
    return np.ascontiguousarray(read_bgr(path)[..., ::-1])


def head_width(test_only: bool) -> int:
    """The box head's width: torchvision's 1024, or 128 for the tiny test backbones (their
    checkpoints then stay a few MB, not 100)."""
    return 128 if test_only else 1024
