"""YOLOv8 CSPDarknet backbone cut from ultralytics' own detector definition.

Layers 0..9 of ``DetectionModel("yolov8<scale>.yaml")`` kept under the attribute ``model`` so
the state_dict keys are exactly the detector's (``model.<i>.…``) and load without renaming.
"""

from __future__ import annotations

from typing import Any

from torch import Tensor, nn

from shared.ml.backbones.base import Backbone

# Layer ranges of each stage in the ultralytics YAML: stem conv, then (down-conv, C2f) pairs,
# SPPF closing stage 4 as in mmyolo's YOLOv8CSPDarknet (agssp-spec §4.4).
_STAGE_LAYERS: tuple[tuple[int, ...], ...] = ((0,), (1, 2), (3, 4), (5, 6), (7, 8, 9))
_STAGE_STRIDES = (2, 4, 8, 16, 32)
NUM_BACKBONE_LAYERS = 10


class CSPDarknet(Backbone):
    """CSPDarknet P5 of YOLOv8 (n/s/m scales); stage outputs are layers 0, 2, 4, 6 and 9.

    At 224 px yolov8s gives (B, 256, 14, 14) for stage 3 and (B, 512, 7, 7) for stage 4.
    """

    def __init__(
        self, name: str, layers: nn.Sequential, out_indices: tuple[int, ...], frozen_stages: int
    ) -> None:
        channels = tuple(_out_channels(layers[stage[-1]]) for stage in _STAGE_LAYERS)
        super().__init__(
            name=name,
            family="cspdarknet",
            stage_channels=channels,
            stage_strides=_STAGE_STRIDES,
            out_indices=out_indices,
            frozen_stages=frozen_stages,
        )
        self.model: nn.Sequential = layers

    def stage_modules(self, index: int) -> list[nn.Module]:
        return [self.model[i] for i in _STAGE_LAYERS[index]]

    def run_stage(self, index: int, x: Tensor) -> Tensor:
        for layer in self.stage_modules(index):
            x = layer(x)
        return x


def build_cspdarknet(
    name: str, yaml_name: str, out_indices: tuple[int, ...], frozen_stages: int
) -> CSPDarknet:
    """Build layers 0..9 of the ultralytics detector described by ``yaml_name``.

    Uses the package's bundled YAML; nothing is downloaded. The detector's weight init
    (BatchNorm eps 1e-3, momentum 0.03) is kept, matching mmyolo's CSPDarknet.
    """
    from ultralytics.nn.tasks import DetectionModel

    detector: Any = DetectionModel(yaml_name, ch=3, verbose=False)  # type: ignore[no-untyped-call]
    # Layers 0..9 all read the previous layer's output (f == -1), so plain sequential order
    # reproduces the detector's forward for the backbone part.
    layers = nn.Sequential(*list(detector.model[:NUM_BACKBONE_LAYERS]))
    return CSPDarknet(name, layers, out_indices, frozen_stages)


def _out_channels(layer: nn.Module) -> int:
    # ultralytics Conv keeps its conv in `.conv`; C2f and SPPF end with the Conv `.cv2`.
    last = getattr(layer, "cv2", layer)
    conv = getattr(last, "conv", None)
    if not isinstance(conv, nn.Conv2d):
        raise TypeError(f"unexpected ultralytics layer {type(layer).__name__}: no output conv")
    return int(conv.out_channels)
