"""Named recipes for the pipeline's training steps (what a preset sends to each service).

``cpu-demo`` finishes in minutes on 2 cores and only shows the path end to end; ``cpu`` is a
small-but-real run for a CPU server; ``gpu-paper`` sends nothing but the backbone, so every
service applies the paper's own recipe (agssp-spec §4-§6). The services validate the values;
overrides in a request are laid over these.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from services.pipeline.params import PresetName
from shared.schemas.detector_families import DEFAULT_FAMILY, FASTER_RCNN, agbp_backbone


@dataclass(frozen=True)
class Preset:
    """Configs per step; ``tocoad`` names the anomaly-map service's own ToCoAD preset;
    ``families`` lays a detector family's own values over a step's (family -> step ->
    values), where the default recipe does not suit it."""

    tocoad: str
    agbp: dict[str, Any] = field(default_factory=dict)
    agdp: dict[str, Any] = field(default_factory=dict)
    finetune: dict[str, Any] = field(default_factory=dict)
    families: dict[str, dict[str, dict[str, Any]]] = field(default_factory=dict)


_CPU_AGBP = {"objective": "distill", "amp": False, "num_workers": 0, "checkpoint_every": 0}

# A few dozen labels give 4-7 steps an epoch, and ultralytics warms up for at least 100
# iterations whenever warmup_epochs > 0: 20 epochs were all warm-up and every demo detector
# stayed at mAP 0. Without warm-up, at lr0 0.01 and 80 epochs, the demo's generated set
# reaches mAP@0.5 0.77 (0.67 from scratch), NEU-DET 0.29 and a Magnetic-tile draw 0.05. The
# `cpu` finetune drops the warm-up for the same reason: in benchmarks/agssp_lift.py its
# 100-iteration floor kept a 30-epoch run on 50 labels flat at mAP 0 for 28 epochs.
# The demo validates every epoch (its val split is small and its run short: a curve point per
# epoch); the finetune's own default is the paper's every 10.
_DEMO_FINETUNE = {
    "epochs": 80, "batch": 8, "imgsz": 160, "patience": 0,
    "lr0": 0.01, "warmup_epochs": 0, "close_mosaic": 20, "val_every": 1,
}  # fmt: skip

# At least 2,500 optimiser steps, however few the labels (min_steps raises the epochs): on
# NEU-DET mini-10 (56 labelled images, 7 steps an epoch at batch 8, 160 px) a finetune from
# scratch reached mAP@0.5 6 after 80 epochs (560 steps) and 34 after 389 (2,723), its val
# curve flat from about epoch 325, 2,300 steps (seed 0 of
# benchmarks/results/agssp_lift_neu-det_native_converged.json).
# Validating every 5th epoch: on that split, validating every epoch was 62 % of the time.
_CPU_FINETUNE = {
    "epochs": 60, "min_steps": 2500, "batch": 16, "imgsz": 320, "lr0": 0.01,
    "warmup_epochs": 0, "val_every": 5,
}  # fmt: skip

_FRCNN_SMOKE = {"epochs": 12, "batch": 4, "imgsz": 160, "patience": 0, "lr0": 0.01}

PRESETS: dict[PresetName, Preset] = {
    # ToCoAD ``demo`` (300 Stage I steps, minutes on 2 cores), not ``tiny``: the demo's maps
    # should mean something (issue 21). They are weak and the report says so (lift_stats.py).
    "cpu-demo": Preset(
        tocoad="demo",
        agbp={**_CPU_AGBP, "epochs": 3, "batch_size": 8, "input_size": 128, "resize_base": 128},
        agdp={"epochs": 3, "batch": 8, "imgsz": 160},
        finetune=_DEMO_FINETUNE,
        # A ResNet-50 Faster R-CNN costs several times a YOLOv8n step on a CPU: the smoke
        # run keeps its epochs few and its batches small so the demo still ends in minutes.
        families={FASTER_RCNN: {"agdp": {"epochs": 2, "batch": 4}, "finetune": _FRCNN_SMOKE}},
    ),
    # AGBP and AGDP epochs from the knee of benchmarks/results/agssp_budget.json (NEU-DET
    # mini-10, pool 600, 160 px, 3 seeds): mAP@0.5 6.3 +- 2.6 from scratch, 7.9 +- 1.0 after
    # 4 + 4 epochs, 9.7 +- 0.3 after 16 + 16, and 6.9 +- 2.9 after 48 + 48 (one seed fell to
    # 3.7; why is not measured) at 3x the pretraining time: 16 is the knee.
    "cpu": Preset(
        tocoad="cpu",
        agbp={**_CPU_AGBP, "epochs": 16, "batch_size": 16, "input_size": 224, "resize_base": 224},
        agdp={"epochs": 16, "batch": 16, "imgsz": 320},
        finetune=_CPU_FINETUNE,
    ),
    "gpu-paper": Preset(tocoad="gpu"),
}


def step_config(
    preset: PresetName,
    step: str,
    scale: str,
    seed: int,
    overrides: dict[str, Any],
    detector: str = DEFAULT_FAMILY,
) -> dict[str, Any]:
    """The ``config`` body of a training step: preset values, then the request's overrides.

    Every step carries the request's seed (the AGSSP run and the scratch baseline share it,
    and another seed is another run end to end); AGBP trains the backbone the ``detector``
    family builds on (for YOLOv8, the one of the requested scale), and the detector steps
    name a family other than the default.
    """
    chosen = PRESETS[preset]
    base: dict[str, Any] = {
        **getattr(chosen, step),
        **chosen.families.get(detector, {}).get(step, {}),
    }
    if step == "agbp":
        base["backbone"] = agbp_backbone(detector, scale)
    elif detector != DEFAULT_FAMILY:
        base["family"] = detector
    base["seed"] = seed
    return {**base, **overrides}
