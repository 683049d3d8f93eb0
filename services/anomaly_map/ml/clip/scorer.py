"""What the KeAD and WinCLIP scorers share: the CLIP bundle, preprocessing and text features."""

from __future__ import annotations

import hashlib
from collections.abc import Sequence
from typing import Protocol

import numpy as np
from torch import Tensor

from services.anomaly_map.ml.clip.backbone import ClipBundle
from services.anomaly_map.ml.clip.preprocess import Resampler, preprocess
from services.anomaly_map.ml.clip.prompts import (
    CategoryDescription,
    OverlongPrompt,
    build_prompts,
    find_overlong_prompts,
)
from services.anomaly_map.ml.clip.text_features import description_text_features
from shared.errors import InvalidInputError


def bank_references(ref_images: Tensor, k_shot: int | None) -> Tensor:
    """The references a memory bank is built from: the first ``k_shot`` (all when None).

    Raises:
        InvalidInputError: ``k_shot`` is 0 (zero-shot), or no reference image is left.
    """
    if k_shot == 0:
        raise InvalidInputError("k_shot is 0 (zero-shot): no memory bank is used")
    refs = ref_images if k_shot is None else ref_images[:k_shot]
    if refs.shape[0] == 0:
        raise InvalidInputError("a memory bank needs at least one reference image")
    return refs


class TextOptions(Protocol):
    """The prompt options both scorer configs carry."""

    @property
    def subtract_empty_template(self) -> bool: ...

    @property
    def strict_prompt_length(self) -> bool: ...

    @property
    def resampler(self) -> Resampler: ...

    def model_dump_json(self) -> str: ...


class ClipScorerBase:
    """Base of the CLIP scorers; subclasses set ``bundle`` and ``config`` in ``__init__``."""

    bundle: ClipBundle
    config: TextOptions

    @property
    def image_size(self) -> int:
        """Model input side S."""
        return self.bundle.image_size

    @property
    def grid_size(self) -> int:
        """Patch-grid side G of the maps."""
        return self.bundle.grid_size

    def preprocess(self, images: Sequence[np.ndarray]) -> Tensor:
        """uint8 (H, W, 3) RGB images -> normalised (B, 3, S, S) on the model's device."""
        b = self.bundle
        return preprocess(
            images, size=b.image_size, mean=b.mean, std=b.std, resampler=self.config.resampler
        ).to(b.device)

    @property
    def config_tag(self) -> str:
        """Short digest of the config: stored banks and text features are keyed by it, so a
        changed option (level mode, resampler, template subtraction) never reads stale ones."""
        return hashlib.sha256(self.config.model_dump_json().encode()).hexdigest()[:8]

    def check_prompts(self, description: CategoryDescription) -> list[OverlongPrompt]:
        """Prompts of ``description`` longer than the text context, with token counts."""
        prompts = build_prompts(description)
        return find_overlong_prompts([*prompts.normal, *prompts.anomalous], self.bundle.tokenizer)

    def text_features(self, description: CategoryDescription) -> Tensor:
        """(Dj, 2) text features [normal, anomalous]; a pure function of model + description."""
        return description_text_features(
            self.bundle,
            description,
            subtract_empty_template=self.config.subtract_empty_template,
            strict_prompt_length=self.config.strict_prompt_length,
        )
