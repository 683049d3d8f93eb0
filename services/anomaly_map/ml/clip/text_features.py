"""Class text features from a category description (agssp-spec §1.5).

A pure function of model and description, so callers may cache the result by
(model name, weights, ``CategoryDescription.fingerprint()``).
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from typing import Any, cast

import torch
import torch.nn.functional as F
from torch import Tensor

from services.anomaly_map.ml.clip.backbone import ClipBundle
from services.anomaly_map.ml.clip.prompts import (
    CategoryDescription,
    build_prompts,
    check_prompt_lengths,
)

logger = logging.getLogger(__name__)


@torch.inference_mode()
def encode_prompt_set(bundle: ClipBundle, prompts: Sequence[str], batch_size: int = 256) -> Tensor:
    """Mean of the L2-normalised prompt embeddings, re-normalised.

    Args:
        bundle: loaded CLIP model.
        prompts: N prompts (duplicates count twice, as in the reference ensemble).
        batch_size: prompts per text-tower call.

    Returns:
        (Dj,) unit-norm float32 embedding.
    """
    embeddings = []
    for start in range(0, len(prompts), batch_size):
        tokens = bundle.tokenizer(list(prompts[start : start + batch_size])).to(bundle.device)
        encoded = cast(Tensor, cast(Any, bundle.model).encode_text(tokens)).float()
        embeddings.append(F.normalize(encoded, dim=-1))
    return F.normalize(torch.cat(embeddings).mean(dim=0), dim=0)


def description_text_features(
    bundle: ClipBundle,
    description: CategoryDescription,
    *,
    subtract_empty_template: bool = True,
    strict_prompt_length: bool = True,
) -> Tensor:
    """Class text features [normal, anomalous] of one category.

    Args:
        bundle: loaded CLIP model.
        description: parsed category description.
        subtract_empty_template: subtract the empty-template embedding from both class
            embeddings (code, agssp-spec §6.1.3); False follows the paper.
        strict_prompt_length: raise on prompts longer than the context; otherwise they are
            cut by the tokenizer and a warning lists them.

    Returns:
        (Dj, 2) float32, unit-norm columns.

    Raises:
        InvalidInputError: a prompt is too long and ``strict_prompt_length`` is set.
    """
    prompts = build_prompts(description)
    overlong = check_prompt_lengths(
        [*prompts.normal, *prompts.anomalous], bundle.tokenizer, strict=strict_prompt_length
    )
    if overlong:
        logger.warning(
            "category %s: %d prompt(s) cut to the %d-token context (longest %d tokens)",
            description.name,
            len(overlong),
            bundle.context_length,
            max(o.num_tokens for o in overlong),
        )
    normal = encode_prompt_set(bundle, prompts.normal)
    anomalous = encode_prompt_set(bundle, prompts.anomalous)
    if subtract_empty_template:
        empty = encode_prompt_set(bundle, prompts.empty)
        normal, anomalous = normal - empty, anomalous - empty
    return F.normalize(torch.stack([normal, anomalous], dim=1), dim=0)
