"""Detector training hyper-parameters for AGDP and finetuning (agssp-spec §5.1-5.4).

Pydantic only, so the finetune API validates job configs with the very classes the workers
train with, without importing torch; unknown keys are rejected.
"""

from __future__ import annotations

import math
from typing import Annotated, Any, Literal, Self

from pydantic import AfterValidator, BaseModel, Field, model_validator

from shared.errors import InvalidInputError
from shared.schemas.backbones import BACKBONES
from shared.schemas.bounds import FINITE, SEED_MAX
from shared.schemas.detector_families import DEFAULT_FAMILY, FAMILIES, check_backbone

Scale = Literal["n", "s", "m"]
# Finite ranges for every number (issue 15): far above any real run, far below overflow.
MAX_EPOCHS = 10_000
MAX_BATCH = 4096
MAX_LR = 10.0
LayerIndex = Annotated[int, Field(ge=0, le=1000)]


def _known_family(name: str) -> str:
    if name not in FAMILIES:
        raise ValueError(f"unknown detector family {name!r}; choose one of {sorted(FAMILIES)}")
    return name


FamilyName = Annotated[
    str, AfterValidator(_known_family), Field(json_schema_extra={"enum": list(FAMILIES)})
]
FrozenLayers = LayerIndex | Annotated[list[LayerIndex], Field(max_length=1000)]


class DetectorTrainConfig(BaseModel):
    """Hyper-parameters shared by AGDP and finetuning; mapped onto ultralytics train args.

    Deviations from the mmyolo recipe that ultralytics forces: warm-up is
    ``max(warmup_epochs x batches, 100)`` iterations (mmyolo: max(3 epochs, 1000 iters));
    early stopping has no minimum delta (mmyolo: 0.005).
    """

    model_config = FINITE

    family: FamilyName = Field(
        DEFAULT_FAMILY, description="detector family (shared.schemas.detector_families)"
    )
    backbone: str | None = Field(
        None, description="backbone name for families that take one (default: the family's)"
    )
    scale: Scale = Field("s", description="YOLOv8 scale n/s/m (agssp-spec §5: s)")
    epochs: int = Field(100, ge=1, le=MAX_EPOCHS)
    batch: int = Field(16, ge=1, le=MAX_BATCH, description="images per step")
    imgsz: int = Field(640, ge=32, le=4096, multiple_of=32, description="square training size, px")
    lr0: float = Field(0.01, gt=0, le=MAX_LR, description="initial learning rate")
    lrf: float = Field(0.01, gt=0, le=1, description="final lr = lr0 x lrf (linear decay)")
    momentum: float = Field(0.937, ge=0, lt=1)
    weight_decay: float = Field(5e-4, ge=0, le=1)
    warmup_epochs: float = Field(3.0, ge=0, le=MAX_EPOCHS)
    optimizer: Literal["SGD", "Adam", "AdamW"] = "SGD"
    patience: int = Field(
        100, ge=0, le=MAX_EPOCHS, description="epochs without improvement; 0 disables"
    )
    select_metric: Literal["map50", "map50_95"] = Field(
        "map50",
        description="val metric that picks best.pt and drives early stopping; agssp-spec §5.4 "
        "keeps the best by mAP@0.5 (ultralytics' own fitness is mAP@0.5:0.95)",
    )
    val_every: int = Field(
        1,
        ge=1,
        le=MAX_EPOCHS,
        description="YOLOv8: validate every N epochs and always the last; best.pt and early "
        "stopping see only validated epochs (a long finetune on a few labels spends most of "
        "its time validating). Faster R-CNN evaluates once, at the end, either way",
    )
    min_steps: int = Field(
        0,
        ge=0,
        le=100_000_000,
        description="raise epochs until the run takes at least this many optimiser steps "
        "(ceil(train images / batch) an epoch): a recipe that converges on a few dozen labels "
        "and on a few thousand alike; 0 = epochs as given",
    )
    seed: int = Field(2024, ge=0, le=SEED_MAX)
    deterministic: bool = True
    workers: int = Field(0, ge=0, le=64, description="dataloader processes; 0 on CPU")
    freeze: FrozenLayers = Field(
        0, description="first N layers (10 = whole backbone) or a list of layer indices"
    )
    amp: bool = Field(True, description="mixed precision; only takes effect on CUDA")
    device: str = Field("auto", description="'auto', 'cpu', 'cuda', 'cuda:1', 'mps'")
    mosaic: float = Field(1.0, ge=0, le=1)
    close_mosaic: int = Field(10, ge=0, le=MAX_EPOCHS, description="last N epochs without mosaic")
    mixup: float = Field(0.0, ge=0, le=1)
    fliplr: float = Field(0.5, ge=0, le=1)
    flipud: float = Field(0.0, ge=0, le=1)
    aug_scale: float = Field(
        0.5, ge=0, le=10, description="random affine scale gain (mmyolo 0.5-1.5)"
    )
    translate: float = Field(0.1, ge=0, le=1)
    degrees: float = Field(0.0, ge=0, le=180)
    hsv_h: float = Field(0.015, ge=0, le=1)
    hsv_s: float = Field(0.7, ge=0, le=1)
    hsv_v: float = Field(0.4, ge=0, le=1)
    max_det: int = Field(300, ge=1, le=10_000)
    cache: bool = Field(False, description="cache decoded images in RAM")
    time_hours: float | None = Field(
        None, gt=0, le=24 * 366, description="wall-clock cap for the run"
    )

    @model_validator(mode="after")
    def _backbone_fits(self) -> DetectorTrainConfig:
        """A backbone the family takes, of the config's scale where the backbone has one."""
        try:
            check_backbone(self.family, self.backbone)
        except InvalidInputError as exc:
            raise ValueError(str(exc)) from None
        spec = BACKBONES.get(self.backbone or "")
        if spec is not None and spec.detector_scale not in (None, self.scale):
            raise ValueError(
                f"backbone {self.backbone!r} is of scale {spec.detector_scale!r}, "
                f"the config asks for {self.scale!r}"
            )
        return self

    def for_train_images(self, images: int) -> Self:
        """This config with ``epochs`` raised to reach ``min_steps`` on ``images`` training
        images (ultralytics keeps the last partial batch: ceil(images / batch) steps an
        epoch), at most ``MAX_EPOCHS``; unchanged when ``min_steps`` is 0 or already met."""
        if not self.min_steps or images <= 0:
            return self
        per_epoch = math.ceil(images / self.batch)
        needed = min(math.ceil(self.min_steps / per_epoch), MAX_EPOCHS)
        return self if needed <= self.epochs else self.model_copy(update={"epochs": needed})

    def resolved_backbone(self) -> str | None:
        """The backbone the run builds on: the config's, else the family's default."""
        return check_backbone(self.family, self.backbone)

    def ultralytics_args(self, device: str) -> dict[str, Any]:
        """Keyword arguments for ``YOLO.train``; ``device`` in ultralytics' spelling."""
        ours = {"family", "backbone", "scale", "select_metric", "aug_scale", "time_hours"}
        args = self.model_dump(exclude=ours | {"val_every", "min_steps"})
        args.update(
            device=device,
            scale=self.aug_scale,
            time=self.time_hours,
            plots=False,  # plotting would fetch Arial.ttf and costs time on every epoch
            val=True,
            verbose=False,
            save=True,
            save_period=-1,
            exist_ok=True,
        )
        return args


class AgdpConfig(DetectorTrainConfig):
    """AGDP: one-class detector, backbone frozen (agssp-spec §5.2, CSPDarknet column)."""

    epochs: int = Field(10, ge=1, le=MAX_EPOCHS)
    batch: int = Field(32, ge=1, le=MAX_BATCH)
    lr0: float = Field(0.01, gt=0, le=MAX_LR)
    freeze: FrozenLayers = Field(10, description="10 = the whole backbone (layers 0-9)")
    close_mosaic: int = Field(0, ge=0, le=MAX_EPOCHS, description="mosaic on throughout (§5.2)")


class FinetuneConfig(DetectorTrainConfig):
    """Finetuning on the target dataset, everything trainable (agssp-spec §5.4)."""

    epochs: int = Field(500, ge=1, le=MAX_EPOCHS)
    batch: int = Field(32, ge=1, le=MAX_BATCH)
    lr0: float = Field(0.0025, gt=0, le=MAX_LR, description="0.01 / 4 as in the released configs")
    freeze: FrozenLayers = Field(0, description="frozen_stages -1: nothing frozen")
    val_every: int = Field(
        10,
        ge=1,
        le=MAX_EPOCHS,
        description="validate every N epochs and always the last (agssp-spec §5.4: every 10 "
        "of 500); best.pt and early stopping see only validated epochs",
    )
