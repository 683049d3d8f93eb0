"""Load the CLIP encoder once and build the KeAD and WinCLIP scorers on it.

Also registers extra open_clip model configs (tiny test models) and gives a tokenizer that
works without weights, so categories can be checked while the weights are missing.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

import open_clip
import torch
from open_clip.tokenizer import SimpleTokenizer

from services.anomaly_map.config import AnomalyMapSettings
from services.anomaly_map.ml.clip_backbone import ClipBundle, load_clip, model_config
from services.anomaly_map.ml.kead import KeadModel
from services.anomaly_map.ml.outputs import AnomalyScorer
from services.anomaly_map.ml.prompts import Tokenizer
from services.anomaly_map.ml.winclip import WinClipModel
from shared.errors import InvalidInputError

log = logging.getLogger(__name__)

ClipMode = Literal["kead", "winclip"]
_registered: set[Path] = set()


def register_model_configs(path: Path | None) -> None:
    """Register every open_clip JSON config under ``path`` (a folder or one file), once."""
    if path is None:
        return
    resolved = path.expanduser().resolve()
    if resolved in _registered:
        return
    if not resolved.exists():
        raise InvalidInputError(
            f"ANOMALY_MAP_EXTRA_MODEL_CONFIG_DIR {resolved} does not exist",
            code="model_config_missing",
        )
    open_clip.add_model_config(resolved)
    _registered.add(resolved)


def text_tokenizer(settings: AnomalyMapSettings) -> Tokenizer:
    """The plain CLIP BPE tokenizer with the model's context (agssp-spec §1.1); no weights."""
    register_model_configs(settings.extra_model_config_dir)
    context = int(model_config(settings.clip_model)["text_cfg"].get("context_length", 77))
    tokenizer: Tokenizer = SimpleTokenizer(context_length=context)
    return tokenizer


@dataclass(frozen=True)
class ScorerSet:
    """One loaded encoder and the scorers sharing it.

    Attributes:
        bundle: the CLIP model and its geometry.
        kead: KeAD scorer (agssp-spec §1).
        winclip: WinCLIP scorer on the same encoder.
        model_id: names model and weights; keys caches and stored memory banks.
    """

    bundle: ClipBundle
    kead: KeadModel
    winclip: WinClipModel
    model_id: str

    def get(self, mode: ClipMode) -> AnomalyScorer:
        return self.kead if mode == "kead" else self.winclip


def _weights_tag(bundle: ClipBundle, seed: int) -> str:
    if bundle.weights is None:
        return f"random{seed}"
    stat = bundle.weights.stat()
    return f"{bundle.weights.stem}-{stat.st_size}"


def _sanitise(text: str) -> str:
    return "".join(c if c.isalnum() or c in "._-" else "_" for c in text)


def load_scorers(settings: AnomalyMapSettings) -> ScorerSet:
    """Build the encoder from local weights (or seeded random weights when allowed).

    Raises:
        ModelWeightsMissingError: no weights and random weights are not allowed.
    """
    register_model_configs(settings.extra_model_config_dir)
    # Same seed in the API and every worker, so banks built in one serve the others.
    torch.manual_seed(settings.random_weights_seed)
    bundle = load_clip(
        settings.clip_model,
        checkpoint=settings.checkpoint,
        model_dir=settings.common.paths.resolved_model_dir(),
        device=settings.device,
        precision=settings.precision,
        allow_random_weights=settings.allow_random_weights,
    )
    tag = _weights_tag(bundle, settings.random_weights_seed)
    model_id = _sanitise(f"{bundle.model_name}-{tag}")
    log.info("CLIP %s loaded on %s (grid %d)", model_id, bundle.device, bundle.grid_size)
    return ScorerSet(bundle, KeadModel(bundle), WinClipModel(bundle), model_id)
