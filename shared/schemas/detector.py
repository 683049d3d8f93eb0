"""Detector training hyper-parameters for AGDP and finetuning (agssp-spec §5.1-5.4).

Pydantic only, so the finetune API validates job configs with the very classes the workers
train with, without importing torch; unknown keys are rejected.
"""

from __future__ import annotations

from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field

Scale = Literal["n", "s", "m"]


class DetectorTrainConfig(BaseModel):
    """Hyper-parameters shared by AGDP and finetuning; mapped onto ultralytics train args.

    Deviations from the mmyolo recipe that ultralytics forces: warm-up is
    ``max(warmup_epochs x batches, 100)`` iterations (mmyolo: max(3 epochs, 1000 iters));
    early stopping has no minimum delta (mmyolo: 0.005).
    """

    model_config = ConfigDict(extra="forbid")

    scale: Scale = Field("s", description="YOLOv8 scale n/s/m (agssp-spec §5: s)")
    epochs: int = Field(100, ge=1)
    batch: int = Field(16, ge=1, description="images per step")
    imgsz: int = Field(640, ge=32, multiple_of=32, description="square training size, px")
    lr0: float = Field(0.01, gt=0, description="initial learning rate")
    lrf: float = Field(0.01, gt=0, le=1, description="final lr = lr0 x lrf (linear decay)")
    momentum: float = Field(0.937, ge=0, lt=1)
    weight_decay: float = Field(5e-4, ge=0)
    warmup_epochs: float = Field(3.0, ge=0)
    optimizer: Literal["SGD", "Adam", "AdamW"] = "SGD"
    patience: int = Field(100, ge=0, description="epochs without improvement; 0 disables")
    select_metric: Literal["map50", "map50_95"] = Field(
        "map50",
        description="val metric that picks best.pt and drives early stopping; agssp-spec §5.4 "
        "keeps the best by mAP@0.5 (ultralytics' own fitness is mAP@0.5:0.95)",
    )
    seed: int = 2024
    deterministic: bool = True
    workers: int = Field(0, ge=0, description="dataloader processes; 0 on CPU")
    freeze: int | list[int] = Field(
        0, description="first N layers (10 = whole backbone) or a list of layer indices"
    )
    amp: bool = Field(True, description="mixed precision; only takes effect on CUDA")
    device: str = Field("auto", description="'auto', 'cpu', 'cuda', 'cuda:1', 'mps'")
    mosaic: float = Field(1.0, ge=0, le=1)
    close_mosaic: int = Field(10, ge=0, description="last N epochs without mosaic")
    mixup: float = Field(0.0, ge=0, le=1)
    fliplr: float = Field(0.5, ge=0, le=1)
    flipud: float = Field(0.0, ge=0, le=1)
    aug_scale: float = Field(0.5, ge=0, description="random affine scale gain (mmyolo 0.5-1.5)")
    translate: float = Field(0.1, ge=0, le=1)
    degrees: float = Field(0.0, ge=0)
    hsv_h: float = Field(0.015, ge=0, le=1)
    hsv_s: float = Field(0.7, ge=0, le=1)
    hsv_v: float = Field(0.4, ge=0, le=1)
    max_det: int = Field(300, ge=1)
    cache: bool = Field(False, description="cache decoded images in RAM")
    time_hours: float | None = Field(None, gt=0, description="wall-clock cap for the run")

    def ultralytics_args(self, device: str) -> dict[str, Any]:
        """Keyword arguments for ``YOLO.train``; ``device`` in ultralytics' spelling."""
        args = self.model_dump(exclude={"scale", "select_metric", "aug_scale", "time_hours"})
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

    epochs: int = Field(10, ge=1)
    batch: int = Field(32, ge=1)
    lr0: float = Field(0.01, gt=0)
    freeze: int | list[int] = Field(10, description="10 = the whole backbone (layers 0-9)")
    close_mosaic: int = Field(0, ge=0, description="mosaic on throughout (§5.2)")


class FinetuneConfig(DetectorTrainConfig):
    """Finetuning on the target dataset, everything trainable (agssp-spec §5.4)."""

    epochs: int = Field(500, ge=1)
    batch: int = Field(32, ge=1)
    lr0: float = Field(0.0025, gt=0, description="0.01 / 4 as in the released configs")
    freeze: int | list[int] = Field(0, description="frozen_stages -1: nothing frozen")
