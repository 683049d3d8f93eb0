"""ResNet and Swin backbones built from timm modules (random init, never downloaded).

The timm modules are kept under their timm attribute names, so state_dict keys equal timm's
(and torchvision's for ResNet) without the classifier head.
"""

from __future__ import annotations

from typing import Any

from torch import Tensor, nn

from shared.errors import InvalidInputError
from shared.ml.backbones.base import Backbone

_RESNET_STRIDES = (4, 4, 8, 16, 32)
_SWIN_STRIDES = (4, 4, 8, 16, 32)


class ResNetBackbone(Backbone):
    """timm ResNet: stem = conv1/bn1/act1/maxpool (stride 4), stages = layer1..layer4.

    ResNet-50 at 224 px: stage 3 (B, 1024, 14, 14), stage 4 (B, 2048, 7, 7).
    """

    def __init__(
        self, name: str, net: Any, out_indices: tuple[int, ...], frozen_stages: int
    ) -> None:
        channels = tuple(int(info["num_chs"]) for info in net.feature_info)
        super().__init__(
            name=name,
            family="resnet",
            stage_channels=channels,
            stage_strides=_RESNET_STRIDES,
            out_indices=out_indices,
            frozen_stages=frozen_stages,
        )
        self.conv1: nn.Module = net.conv1
        self.bn1: nn.Module = net.bn1
        self.act1: nn.Module = net.act1
        self.maxpool: nn.Module = net.maxpool
        self.layer1: nn.Module = net.layer1
        self.layer2: nn.Module = net.layer2
        self.layer3: nn.Module = net.layer3
        self.layer4: nn.Module = net.layer4

    def stage_modules(self, index: int) -> list[nn.Module]:
        if index == 0:
            return [self.conv1, self.bn1, self.act1, self.maxpool]
        return [(self.layer1, self.layer2, self.layer3, self.layer4)[index - 1]]

    def run_stage(self, index: int, x: Tensor) -> Tensor:
        for module in self.stage_modules(index):
            x = module(x)
        return x


class SwinBackbone(Backbone):
    """timm Swin: stem = patch_embed, stages = layers.0..3, final ``norm`` after stage 4.

    Swin-B: stage 4 is (B, 1024, 7, 7) at 224 px and (B, 1024, 6, 6) at 192 px. Only the
    last stage is normalised (agssp-spec §4.4 "after norm3"); earlier maps are raw.
    """

    def __init__(
        self, name: str, net: Any, out_indices: tuple[int, ...], frozen_stages: int
    ) -> None:
        dims = [int(info["num_chs"]) for info in net.feature_info]
        super().__init__(
            name=name,
            family="swin",
            stage_channels=(dims[0], *dims),
            stage_strides=_SWIN_STRIDES,
            out_indices=out_indices,
            frozen_stages=frozen_stages,
        )
        self.patch_embed: nn.Module = net.patch_embed
        self.layers: nn.Sequential = net.layers
        self.norm: nn.Module = net.norm
        self.patch_size = int(net.patch_embed.patch_size[0])
        self.embed_dim = dims[0]

    def stage_modules(self, index: int) -> list[nn.Module]:
        if index == 0:
            return [self.patch_embed]
        if index == 4:
            return [self.layers[3], self.norm]
        return [self.layers[index - 1]]

    def run_stage(self, index: int, x: Tensor) -> Tensor:
        # timm Swin works channels-last (B, h, w, C) between stages.
        stage = self.patch_embed if index == 0 else self.layers[index - 1]
        out: Tensor = stage(x)
        return out

    def stage_output(self, index: int, x: Tensor) -> Tensor:
        if index == 4:
            x = self.norm(x)
        return x.permute(0, 3, 1, 2).contiguous()

    def forward_masked(self, x: Tensor, mask: Tensor, mask_token: Tensor) -> list[Tensor]:
        """Forward with masked patch embeddings (SimMIM).

        Args:
            x: images (B, 3, H, W).
            mask: (B, H / p, W / p) with 1 where a patch embedding is replaced, p = patch size.
            mask_token: (1, 1, 1, C_embed) learnable token written into masked positions.

        Returns:
            One (B, C_i, h_i, w_i) map per entry of ``out_indices`` (stem map already masked).
        """
        tokens = self.run_stage(0, x)
        weight = mask.unsqueeze(-1).to(tokens.dtype)
        tokens = tokens * (1.0 - weight) + mask_token.to(tokens.dtype) * weight
        feats = [self.stage_output(0, tokens)] if 0 in self.out_indices else []
        return feats + self.forward_from(tokens, 1)


def build_resnet(
    name: str, variant: str, out_indices: tuple[int, ...], frozen_stages: int, **kwargs: Any
) -> ResNetBackbone:
    """Build a timm ResNet (``variant`` = timm name, or ``"test"`` for a tiny ResNet-18)."""
    import timm
    from timm.models.resnet import BasicBlock, ResNet

    block: Any = BasicBlock

    net: Any
    if variant == "test":
        net = ResNet(
            block=block,
            layers=(2, 2, 2, 2),
            channels=(8, 16, 32, 64),
            num_classes=0,
            **kwargs,
        )
    else:
        net = timm.create_model(variant, pretrained=False, num_classes=0, **kwargs)
    return ResNetBackbone(name, net, out_indices, frozen_stages)


def build_swin(
    name: str,
    variant: str,
    out_indices: tuple[int, ...],
    frozen_stages: int,
    *,
    img_size: int,
    **kwargs: Any,
) -> SwinBackbone:
    """Build a timm Swin for square ``img_size`` inputs (``variant`` = timm name or ``"test"``).

    The window is ``img_size // 32`` (7 at 224, 6 at 192 as agssp-spec §4.4's SimMIM model),
    so the last stage is exactly one window.
    """
    import timm
    from timm.models.swin_transformer import SwinTransformer

    if img_size % 32:
        raise InvalidInputError(f"Swin img_size {img_size} must be a multiple of 32")
    window = img_size // 32
    net: Any
    if variant == "test":
        net = SwinTransformer(
            img_size=img_size,
            embed_dim=16,
            depths=(2, 2, 2, 2),
            num_heads=(1, 2, 4, 8),
            window_size=window,
            num_classes=0,
            **kwargs,
        )
    else:
        net = timm.create_model(
            variant,
            pretrained=False,
            num_classes=0,
            img_size=img_size,
            window_size=window,
            **kwargs,
        )
    return SwinBackbone(name, net, out_indices, frozen_stages)
