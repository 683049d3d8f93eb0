"""Discriminative network D: an inverse ResNet decoder segmenting anomalies (tocoad-spec §4.2)."""

from __future__ import annotations

from collections.abc import Mapping

import torch
import torch.nn.functional as F
from torch import Tensor, nn


def _shortcut(cin: int, cout: int, upsample: bool) -> nn.Module | None:
    if upsample:
        return nn.Sequential(
            nn.ConvTranspose2d(cin, cout, 2, stride=2, bias=False), nn.BatchNorm2d(cout)
        )
    if cin != cout:
        return nn.Sequential(nn.Conv2d(cin, cout, 1, bias=False), nn.BatchNorm2d(cout))
    return None


class InverseBasicBlock(nn.Module):
    """Mirror of a basic block: 2x2 stride-2 transposed conv (or 3x3) then 3x3."""

    def __init__(self, cin: int, cout: int, upsample: bool) -> None:
        """Create the convs; ``upsample`` doubles the resolution (first block of a stage)."""
        super().__init__()
        self.conv1: nn.Module = (
            nn.ConvTranspose2d(cin, cout, 2, stride=2, bias=False)
            if upsample
            else nn.Conv2d(cin, cout, 3, padding=1, bias=False)
        )
        self.bn1 = nn.BatchNorm2d(cout)
        self.conv2 = nn.Conv2d(cout, cout, 3, padding=1, bias=False)
        self.bn2 = nn.BatchNorm2d(cout)
        self.shortcut = _shortcut(cin, cout, upsample)

    def forward(self, x: Tensor) -> Tensor:
        """(B, cin, H, W) -> (B, cout, 2H, 2W) when upsampling, else (B, cout, H, W)."""
        out = torch.relu(self.bn1(self.conv1(x)))
        out = self.bn2(self.conv2(out))
        identity = x if self.shortcut is None else self.shortcut(x)
        return torch.relu(out + identity)


class InverseBottleneck(nn.Module):
    """RD4AD-style inverse bottleneck: 1x1 reduce, 2x2 transposed (or 3x3) conv, 1x1 expand."""

    def __init__(self, cin: int, cout: int, upsample: bool) -> None:
        """Create the convs; ``upsample`` doubles the resolution (first block of a stage)."""
        super().__init__()
        # Wide ResNet: bottleneck width = 2 x (cout / 4) = cout / 2 (de_wide_resnet50_2).
        width = cout // 2
        self.conv1 = nn.Conv2d(cin, width, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(width)
        self.conv2: nn.Module = (
            nn.ConvTranspose2d(width, width, 2, stride=2, bias=False)
            if upsample
            else nn.Conv2d(width, width, 3, padding=1, bias=False)
        )
        self.bn2 = nn.BatchNorm2d(width)
        self.conv3 = nn.Conv2d(width, cout, 1, bias=False)
        self.bn3 = nn.BatchNorm2d(cout)
        self.shortcut = _shortcut(cin, cout, upsample)

    def forward(self, x: Tensor) -> Tensor:
        """(B, cin, H, W) -> (B, cout, 2H, 2W) when upsampling, else (B, cout, H, W)."""
        out = torch.relu(self.bn1(self.conv1(x)))
        out = torch.relu(self.bn2(self.conv2(out)))
        out = self.bn3(self.conv3(out))
        identity = x if self.shortcut is None else self.shortcut(x)
        return torch.relu(out + identity)


def _stage(block: type[nn.Module], cin: int, cout: int, depth: int) -> nn.Sequential:
    return nn.Sequential(*(block(cin if i == 0 else cout, cout, i == 0) for i in range(depth)))


class Discriminator(nn.Module):
    """Segments synthetic anomalies from F's layer3/layer4 (and optionally layer2) features."""

    def __init__(
        self, channels: Mapping[str, int], bottleneck: bool, use_f2_skip: bool = False
    ) -> None:
        """Size the decoder from F's channels.

        Args:
            channels: F's output channels per layer name (``ResNetFeatures.channels``).
            bottleneck: inverse bottlenecks with depths [3, 4, 6] (WRN50) instead of inverse
                basic blocks with depths [2, 2, 2] (ResNet-18 variants).
            use_f2_skip: also add a 1x1 projection of layer2 after the second stage.
        """
        super().__init__()
        c1, c2, c3, c4 = (channels[f"layer{i}"] for i in range(1, 5))
        block: type[nn.Module] = InverseBottleneck if bottleneck else InverseBasicBlock
        depths = (3, 4, 6) if bottleneck else (2, 2, 2)
        self.stage_a = _stage(block, c4, c3, depths[0])
        self.stage_b = _stage(block, c3, c2, depths[1])
        self.stage_c = _stage(block, c2, c1, depths[2])
        self.skip3 = nn.Conv2d(c3, c3, 1)
        self.skip2 = nn.Conv2d(c2, c2, 1) if use_f2_skip else None
        hidden = min(64, c1)
        self.head = nn.Sequential(
            nn.Conv2d(c1, hidden, 3, padding=1, bias=False),
            nn.BatchNorm2d(hidden),
            nn.ReLU(inplace=True),
            nn.Conv2d(hidden, 2, 1),
        )
        self._init_weights()

    @property
    def input_layers(self) -> tuple[str, ...]:
        """F layers this network reads."""
        return ("layer2", "layer3", "layer4") if self.skip2 is not None else ("layer3", "layer4")

    def _init_weights(self) -> None:
        for module in self.modules():
            if isinstance(module, nn.Conv2d | nn.ConvTranspose2d):
                nn.init.kaiming_normal_(module.weight, mode="fan_out", nonlinearity="relu")
            elif isinstance(module, nn.BatchNorm2d):
                nn.init.ones_(module.weight)
                nn.init.zeros_(module.bias)
        # A near-zero classifier starts D at p = 0.5 everywhere: the Kaiming-scaled 2-way conv
        # would otherwise start confidently wrong and inflate the first focal-loss steps.
        classifier = self.head[-1]
        assert isinstance(classifier, nn.Conv2d)
        assert classifier.bias is not None
        nn.init.normal_(classifier.weight, std=0.01)
        nn.init.zeros_(classifier.bias)

    def forward(self, feats: Mapping[str, Tensor], out_size: int) -> Tensor:
        """Two-class logits (normal, anomalous).

        Args:
            feats: F features; needs layer3 (B, C3, S/16, S/16) and layer4 (B, C4, S/32, S/32),
                plus layer2 (B, C2, S/8, S/8) with ``use_f2_skip``.
            out_size: S.

        Returns:
            (B, 2, S, S) logits; softmax channel 1 is the anomaly probability.
        """
        x = self.stage_a(feats["layer4"]) + self.skip3(feats["layer3"])
        x = self.stage_b(x)
        if self.skip2 is not None:
            x = x + self.skip2(feats["layer2"])
        logits: Tensor = self.head(self.stage_c(x))
        return F.interpolate(
            logits, size=(out_size, out_size), mode="bilinear", align_corners=False
        )
