"""Seam: the backbone names the suite knows, without torch.

The torch side (``shared.ml.backbones.factory``) builds from this table and the torch-free
APIs validate configs with it, so a name is accepted by a submission exactly when a worker
can build it. An AGBP artifact (pretrain writes it, pretrain and finetune start from it)
holds the distilled backbone's state_dict as ``BACKBONE_FILE``.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from types import MappingProxyType
from typing import Literal

from shared.errors import InvalidInputError

BACKBONE_FILE = "backbone.pt"
Family = Literal["cspdarknet", "resnet", "swin"]


@dataclass(frozen=True)
class BackboneSpec:
    """One backbone: family, default input size and the stages AGBP distils by default.

    ``stages`` use the suite's indexing: 0 = stem, 1..4 = the four stages (agssp-spec §4.4).
    ``variant`` is the family's own model name (YOLO yaml, timm name, or ``test``).
    ``detector_scale`` is the YOLOv8 scale a CSPDarknet backbone plugs into, else None.
    """

    name: str
    family: Family
    variant: str
    input_size: int
    stages: tuple[int, ...]
    detector_scale: str | None = None
    test_only: bool = False


BACKBONES: dict[str, BackboneSpec] = {
    spec.name: spec
    for spec in (
        BackboneSpec("yolov8n", "cspdarknet", "yolov8n.yaml", 224, (3, 4), "n"),
        BackboneSpec("yolov8s", "cspdarknet", "yolov8s.yaml", 224, (3, 4), "s"),
        BackboneSpec("yolov8m", "cspdarknet", "yolov8m.yaml", 224, (3, 4), "m"),
        BackboneSpec("resnet50", "resnet", "resnet50", 224, (3, 4)),
        BackboneSpec("swin_base", "swin", "swin_base_patch4_window7_224", 224, (4,)),
        # Tiny random-init variants for tests (timm's test_* models pattern).
        BackboneSpec("resnet18-test", "resnet", "test", 64, (3, 4), test_only=True),
        BackboneSpec("swin-tiny-test", "swin", "test", 64, (4,), test_only=True),
    )
}


DETECTOR_KEYS = "ultralytics-detector"  # AGBP tensors named as in the YOLOv8 detector
TIMM_KEYS = "timm"


@dataclass(frozen=True)
class BackboneFamily:
    """What differs between backbone families, for the code that must know (torch-free).

    Attributes:
        key_names: how an AGBP artifact of the family names its tensors (``DETECTOR_KEYS``:
            the YOLOv8 detector's ``model.<i>.*``, ready to load into a detector).
        recipe: the AGBP recipe it trains with (agssp-spec §4.4: conv or Swin column).
        masked_patches: its tokens are patches SimMIM can mask (``simmim_distill``).
        distill_loss, distill_weight: the distillation loss of agssp-spec §4.4.
    """

    name: Family
    key_names: str
    recipe: Literal["conv", "swin"]
    masked_patches: bool
    distill_loss: Literal["cosine", "l2"]
    distill_weight: float


# The L2 weight 2.0 is the reference L2Loss's loss_weight (agssp-spec §4.4).
BACKBONE_FAMILIES: Mapping[str, BackboneFamily] = MappingProxyType(
    {
        row.name: row
        for row in (
            BackboneFamily("cspdarknet", DETECTOR_KEYS, "conv", False, "cosine", 1.0),
            BackboneFamily("resnet", TIMM_KEYS, "conv", False, "cosine", 1.0),
            BackboneFamily("swin", TIMM_KEYS, "swin", True, "l2", 2.0),
        )
    }
)


def family_traits(name: str) -> BackboneFamily:
    """The family row of backbone ``name`` (InvalidInputError when the name is unknown)."""
    return BACKBONE_FAMILIES[backbone_spec(name).family]


def backbone_names() -> tuple[str, ...]:
    return tuple(BACKBONES)


def backbone_spec(name: str) -> BackboneSpec:
    """The spec of ``name``; raises InvalidInputError (code ``unknown_backbone``) otherwise."""
    try:
        return BACKBONES[name]
    except KeyError:
        raise InvalidInputError(
            f"unknown backbone {name!r}; choose one of {sorted(BACKBONES)}",
            code="unknown_backbone",
        ) from None
