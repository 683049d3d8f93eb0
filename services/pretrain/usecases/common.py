"""Helpers of several pretrain use cases."""

from __future__ import annotations

from services.pretrain.config import PretrainSettings
from shared.imaging.intake import ImageLimits


def image_limits(settings: PretrainSettings) -> ImageLimits:
    """Caps for images read from the store (bytes from PRETRAIN_MAX_IMAGE_MB)."""
    return ImageLimits(
        max_bytes=int(settings.max_image_mb * 2**20),
        max_pixels=settings.common.http.max_image_pixels,
    )
