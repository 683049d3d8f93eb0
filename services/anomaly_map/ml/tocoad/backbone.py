"""Feature extractor F: ResNet family with torchvision parameter names (tocoad-spec §4.1).

Our own code, so a torchvision ``state_dict`` loads directly without importing torchvision.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import torch
from torch import Tensor, nn

from shared.errors import InvalidInputError

LAYERS = ("layer1", "layer2", "layer3", "layer4")


def _conv3x3(cin: int, cout: int, stride: int = 1) -> nn.Conv2d:
    return nn.Conv2d(cin, cout, 3, stride=stride, padding=1, bias=False)


def _downsample(cin: int, cout: int, stride: int) -> nn.Sequential | None:
    if stride == 1 and cin == cout:
        return None
    return nn.Sequential(nn.Conv2d(cin, cout, 1, stride=stride, bias=False), nn.BatchNorm2d(cout))


class BasicBlock(nn.Module):
    """Two 3x3 convs with identity shortcut (ResNet-18)."""

    expansion = 1

    def __init__(self, cin: int, planes: int, stride: int = 1, base_width: int = 64) -> None:
        """Create the convs; a 1x1 downsample shortcut when stride or channels change."""
        super().__init__()
        self.conv1 = _conv3x3(cin, planes, stride)
        self.bn1 = nn.BatchNorm2d(planes)
        self.relu = nn.ReLU(inplace=True)
        self.conv2 = _conv3x3(planes, planes)
        self.bn2 = nn.BatchNorm2d(planes)
        self.downsample = _downsample(cin, planes, stride)

    def forward(self, x: Tensor) -> Tensor:
        """(B, cin, H, W) -> (B, planes * expansion, H / stride, W / stride)."""
        out = self.relu(self.bn1(self.conv1(x)))
        out = self.bn2(self.conv2(out))
        identity = x if self.downsample is None else self.downsample(x)
        return torch.relu(out + identity)


class Bottleneck(nn.Module):
    """1x1 reduce, 3x3 (strided), 1x1 expand x4; ``base_width`` 128 gives the wide variant."""

    expansion = 4

    def __init__(self, cin: int, planes: int, stride: int = 1, base_width: int = 64) -> None:
        """Create the convs; a 1x1 downsample shortcut when stride or channels change."""
        super().__init__()
        width = planes * base_width // 64
        cout = planes * self.expansion
        self.conv1 = nn.Conv2d(cin, width, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(width)
        self.conv2 = _conv3x3(width, width, stride)
        self.bn2 = nn.BatchNorm2d(width)
        self.conv3 = nn.Conv2d(width, cout, 1, bias=False)
        self.bn3 = nn.BatchNorm2d(cout)
        self.relu = nn.ReLU(inplace=True)
        self.downsample = _downsample(cin, cout, stride)

    def forward(self, x: Tensor) -> Tensor:
        """(B, cin, H, W) -> (B, planes * expansion, H / stride, W / stride)."""
        out = self.relu(self.bn1(self.conv1(x)))
        out = self.relu(self.bn2(self.conv2(out)))
        out = self.bn3(self.conv3(out))
        identity = x if self.downsample is None else self.downsample(x)
        return torch.relu(out + identity)


class ResNetFeatures(nn.Module):
    """ResNet trunk without the classifier; returns the requested stage outputs."""

    def __init__(
        self,
        block: type[BasicBlock] | type[Bottleneck],
        depths: Sequence[int],
        planes: Sequence[int],
        base_width: int = 64,
    ) -> None:
        """Lay out the stem and the four stages.

        Args:
            block: ``BasicBlock`` or ``Bottleneck``.
            depths: blocks per stage (4 stages).
            planes: base planes per stage (output channels = planes * block.expansion).
            base_width: bottleneck width multiplier base (128 for WideResNet-50-2).
        """
        super().__init__()
        stem = planes[0]
        self.is_bottleneck = block is Bottleneck
        self.conv1 = nn.Conv2d(3, stem, 7, stride=2, padding=3, bias=False)
        self.bn1 = nn.BatchNorm2d(stem)
        self.relu = nn.ReLU(inplace=True)
        self.maxpool = nn.MaxPool2d(3, stride=2, padding=1)
        self.channels: dict[str, int] = {}
        cin = stem
        for index, (depth, plane) in enumerate(zip(depths, planes, strict=True)):
            stride = 1 if index == 0 else 2
            blocks: list[nn.Module] = []
            for b in range(depth):
                blocks.append(block(cin, plane, stride if b == 0 else 1, base_width))
                cin = plane * block.expansion
            self.add_module(LAYERS[index], nn.Sequential(*blocks))
            self.channels[LAYERS[index]] = cin
        self._init_weights()

    def _init_weights(self) -> None:
        for module in self.modules():
            if isinstance(module, nn.Conv2d):
                nn.init.kaiming_normal_(module.weight, mode="fan_out", nonlinearity="relu")
            elif isinstance(module, nn.BatchNorm2d):
                nn.init.ones_(module.weight)
                nn.init.zeros_(module.bias)

    def forward(self, x: Tensor, layers: Sequence[str] = LAYERS) -> dict[str, Tensor]:
        """Stage features, computed only up to the deepest requested stage.

        Args:
            x: (B, 3, S, S) ImageNet-normalised images.
            layers: subset of layer1..layer4.

        Returns:
            {name: (B, C_name, S / stride, S / stride)} with strides 4, 8, 16, 32.
        """
        unknown = set(layers) - set(LAYERS)
        if unknown:
            raise InvalidInputError(f"unknown backbone layers {sorted(unknown)}; use {LAYERS}")
        deepest = max(LAYERS.index(name) for name in layers)
        out: dict[str, Tensor] = {}
        x = self.maxpool(self.relu(self.bn1(self.conv1(x))))
        for name in LAYERS[: deepest + 1]:
            x = getattr(self, name)(x)
            if name in layers:
                out[name] = x
        return out


def create_backbone(name: str) -> ResNetFeatures:
    """Build F by name: ``wrn50`` (paper), ``resnet18`` (CPU), ``resnet18_quarter`` (CI).

    Raises:
        InvalidInputError: for an unknown name.
    """
    if name == "wrn50":
        return ResNetFeatures(Bottleneck, (3, 4, 6, 3), (64, 128, 256, 512), base_width=128)
    if name == "resnet18":
        return ResNetFeatures(BasicBlock, (2, 2, 2, 2), (64, 128, 256, 512))
    if name == "resnet18_quarter":
        # tocoad-spec §10: CI config, ResNet-18 topology at 1/4 width.
        return ResNetFeatures(BasicBlock, (2, 2, 2, 2), (16, 32, 64, 128))
    raise InvalidInputError(
        f"unknown backbone {name!r}; choose wrn50, resnet18 or resnet18_quarter"
    )


def load_backbone_weights(model: ResNetFeatures, path: str | Path) -> None:
    """Load a local torchvision-format ``state_dict`` (the ``fc.*`` classifier is ignored).

    Raises:
        InvalidInputError: when the file is missing or its keys/shapes do not match.
    """
    file = Path(path)
    if not file.is_file():
        raise InvalidInputError(f"backbone_weights {str(file)!r} is not a file; pass a local path")
    state = torch.load(file, map_location="cpu", weights_only=True)
    if isinstance(state, dict) and isinstance(state.get("state_dict"), dict):
        state = state["state_dict"]
    if not isinstance(state, dict):
        raise InvalidInputError(f"{str(file)!r} does not hold a state_dict")
    kept = {k: v for k, v in state.items() if not k.startswith("fc.")}
    try:
        model.load_state_dict(kept, strict=True)
    except RuntimeError as exc:
        raise InvalidInputError(
            f"{str(file)!r} does not match the chosen backbone; check `backbone`: {exc}"
        ) from exc
