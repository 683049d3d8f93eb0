"""SimMIM + AGBP for Swin: masked patch reconstruction plus distillation.

agssp-spec §4.5 SimMIM_Distill: pass 1 masks 4x4 patch embeddings at 32-px granularity,
decodes with a 1x1 conv + pixel shuffle and takes L1 on masked pixels; pass 2 is an ordinary
unmasked forward whose outputs are distilled.
"""

from __future__ import annotations

import math
from typing import cast

import torch
from torch import Tensor, nn

from services.pretrain.ml.distill import DistillHead
from services.pretrain.ml.objectives import AgbpObjective, Batch, LossBalancer
from shared.errors import InvalidInputError
from shared.ml.backbones import Backbone
from shared.ml.backbones.timm_backbones import SwinBackbone


def random_patch_mask(
    batch: int,
    image_size: int,
    *,
    mask_patch: int,
    model_patch: int,
    ratio: float,
    device: torch.device | None = None,
) -> Tensor:
    """Mask ``ceil(ratio * n)`` of the n mask patches of every image, upsampled to tokens.

    Returns:
        (B, image_size / model_patch, image_size / model_patch) float mask, 1 = masked.
    """
    if image_size % mask_patch or mask_patch % model_patch:
        raise ValueError(
            f"image {image_size} must be divisible by mask patch {mask_patch}, "
            f"and that by the model patch {model_patch}"
        )
    grid = image_size // mask_patch
    count = math.ceil(grid * grid * ratio)
    order = torch.rand(batch, grid * grid, device=device).argsort(dim=1)
    mask = torch.zeros(batch, grid * grid, device=device)
    mask.scatter_(1, order[:, :count], 1.0)
    scale = mask_patch // model_patch
    mask = mask.view(batch, grid, grid)
    return mask.repeat_interleave(scale, dim=1).repeat_interleave(scale, dim=2)


class SimMIMDistillObjective(AgbpObjective):
    """Reconstruction of masked pixels (L1, task) + unmasked distillation."""

    def __init__(
        self,
        backbone: Backbone,
        head: DistillHead,
        balancer: LossBalancer,
        *,
        mask_ratio: float = 0.6,
        mask_patch_size: int = 32,
    ) -> None:
        if not isinstance(backbone, SwinBackbone):
            raise InvalidInputError(f"SimMIM needs a Swin backbone, got {backbone.name!r}")
        super().__init__(backbone, head, balancer)
        stride = backbone.strides[-1]
        self.mask_token = nn.Parameter(torch.zeros(1, 1, 1, backbone.embed_dim))
        nn.init.trunc_normal_(self.mask_token, std=0.02)
        # Linear decoder of SimMIM: one 1x1 conv to stride^2 * 3 channels, pixel shuffle.
        self.decoder = nn.Sequential(
            nn.Conv2d(backbone.out_channels[-1], stride * stride * 3, kernel_size=1),
            nn.PixelShuffle(stride),
        )
        self.mask_ratio = mask_ratio
        self.mask_patch_size = mask_patch_size

    @property
    def swin(self) -> SwinBackbone:
        """The backbone with its Swin type (checked in ``__init__``)."""
        return cast(SwinBackbone, self.backbone)

    def losses(self, batch: Batch) -> tuple[Tensor, Tensor | None]:
        image = batch["image"]
        mask = random_patch_mask(
            image.shape[0],
            image.shape[-1],
            mask_patch=self.mask_patch_size,
            model_patch=self.swin.patch_size,
            ratio=self.mask_ratio,
            device=image.device,
        )
        recon = self.decoder(self.swin.forward_masked(image, mask, self.mask_token)[-1])
        task = masked_l1(recon, image, mask, self.swin.patch_size)
        distill = self.head(self.backbone(image), batch["map"])
        return distill, task


def masked_l1(recon: Tensor, image: Tensor, mask: Tensor, patch: int) -> Tensor:
    """Mean absolute error over masked pixels and channels.

    Args:
        recon: (B, 3, H, W) reconstruction.
        image: (B, 3, H, W) normalised input (SimMIM's target).
        mask: (B, H / patch, W / patch), 1 = masked.
        patch: token size in pixels.

    Returns:
        Scalar.
    """
    pixel_mask = mask.repeat_interleave(patch, dim=1).repeat_interleave(patch, dim=2)
    pixel_mask = pixel_mask.unsqueeze(1).to(recon.dtype)
    error = (recon - image).abs() * pixel_mask
    return error.sum() / (pixel_mask.sum() * image.shape[1] + 1e-5)
