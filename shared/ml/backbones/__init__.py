"""Backbones shared by the pretrain and finetune services (CSPDarknet, ResNet, Swin).

Only torch is imported here; ultralytics and timm load when a backbone is built.
"""

from shared.ml.backbones.base import Backbone, LoadReport
from shared.ml.backbones.factory import (
    available_backbones,
    backbone_family,
    create_backbone,
    default_out_indices,
)
from shared.ml.backbones.weights import detector_state_dict, load_weights

__all__ = [
    "Backbone",
    "LoadReport",
    "available_backbones",
    "backbone_family",
    "create_backbone",
    "default_out_indices",
    "detector_state_dict",
    "load_weights",
]
