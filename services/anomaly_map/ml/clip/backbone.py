"""Build a stock open_clip CLIP model from local weights only, and describe its geometry.

Nothing here downloads: weights come from a checkpoint path or the local model folder.
"""

from __future__ import annotations

import logging
import pickle
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal, cast

import open_clip
import torch
from open_clip.constants import OPENAI_DATASET_MEAN, OPENAI_DATASET_STD
from open_clip.pretrained import get_pretrained_cfg, list_pretrained_tags_by_model
from open_clip.tokenizer import SimpleTokenizer
from safetensors import SafetensorError
from torch import nn

from services.anomaly_map.ml.clip.prompts import Tokenizer
from shared.errors import InvalidInputError, NotFoundError, UnavailableError
from shared.ml.device import resolve_device

logger = logging.getLogger(__name__)

Precision = Literal["fp32", "fp16", "bf16"]

# First match wins; anything else with a weights suffix is taken in name order.
_PREFERRED_WEIGHTS = (
    "open_clip_model.safetensors",
    "open_clip_pytorch_model.bin",
    "open_clip_pytorch_model.safetensors",
)
_WEIGHT_SUFFIXES = (".safetensors", ".bin", ".pt", ".pth")
_DTYPES: dict[str, torch.dtype] = {
    "fp32": torch.float32,
    "fp16": torch.float16,
    "bf16": torch.bfloat16,
}


class ModelWeightsMissingError(UnavailableError):
    """The CLIP weights for a model are not on this machine."""

    code = "model_weights_missing"


@dataclass(frozen=True)
class ClipBundle:
    """A loaded CLIP model with everything the anomaly-map code needs to know about it.

    Attributes:
        model_name: open_clip architecture name, e.g. ``ViT-B-16-plus-240``.
        model: the stock open_clip ``CLIP`` module, in eval mode, gradients off.
        tokenizer: plain CLIP BPE tokenizer (context ``context_length``, normally 77).
        image_size: side S of the square model input.
        patch_size: side of one ViT patch in pixels.
        grid_size: G = S // patch_size; patch tokens per image are G*G.
        num_layers: number of residual blocks of the vision tower.
        embed_dim: joint image-text dimension Dj.
        mean: per-channel normalisation mean (RGB).
        std: per-channel normalisation std (RGB).
        device: where the model lives.
        dtype: dtype of the vision tower's weights (fp32, or fp16/bf16 on CUDA).
        weights: the checkpoint that was loaded; None for random initialisation.
    """

    model_name: str
    model: nn.Module
    tokenizer: Tokenizer
    image_size: int
    patch_size: int
    grid_size: int
    num_layers: int
    embed_dim: int
    mean: tuple[float, float, float]
    std: tuple[float, float, float]
    device: torch.device
    dtype: torch.dtype
    weights: Path | None

    @property
    def visual(self) -> nn.Module:
        """The vision tower (a stock open_clip ``VisionTransformer``)."""
        return cast(nn.Module, self.model.visual)

    @property
    def context_length(self) -> int:
        """Token context length of the text tower."""
        return self.tokenizer.context_length


def model_config(model_name: str) -> dict[str, Any]:
    """Return open_clip's architecture config for ``model_name`` (no weights involved).

    Raises:
        NotFoundError: open_clip knows no such architecture.
    """
    config = open_clip.get_model_config(model_name)
    if config is None:
        raise NotFoundError(
            f"unknown open_clip architecture {model_name!r}; "
            f"known ViT models include ViT-B-16-plus-240, ViT-L-14-336, ViT-H-14-378-quickgelu"
        )
    return cast(dict[str, Any], config)


def _vision_geometry(model_name: str, image_size: int | None) -> tuple[int, int, int]:
    vision = model_config(model_name)["vision_cfg"]
    if "timm_model_name" in vision or not isinstance(vision.get("layers"), int):
        raise InvalidInputError(f"{model_name!r} is not a plain open_clip ViT; KeAD needs one")
    size = image_size if image_size is not None else vision["image_size"]
    patch = vision["patch_size"]
    if not isinstance(size, int) or not isinstance(patch, int):
        raise InvalidInputError(f"{model_name!r}: only square image and patch sizes are supported")
    return size, patch, int(vision["layers"])


def grid_size_for(model_name: str, image_size: int | None = None) -> int:
    """Patch-grid side G of a ViT CLIP, from open_clip's architecture config alone.

    Args:
        model_name: open_clip architecture name.
        image_size: input side S when it differs from the architecture's own.

    Returns:
        G = S // patch, e.g. 15 for ViT-B-16-plus-240, 24 for ViT-L-14-336, 27 for
        ViT-H-14-378-quickgelu.
    """
    size, patch, _ = _vision_geometry(model_name, image_size)
    return size // patch


def weights_folder(model_name: str, model_dir: Path) -> Path:
    """Folder where ``agssp models fetch-clip <model>`` puts the weights of ``model_name``."""
    return model_dir / "open_clip" / model_name


def find_weights(model_name: str, model_dir: Path) -> Path | None:
    """Return the weights file for ``model_name`` under ``model_dir``, or None when absent."""
    folder = weights_folder(model_name, model_dir)
    if not folder.is_dir():
        return None
    for name in _PREFERRED_WEIGHTS:
        if (folder / name).is_file():
            return folder / name
    candidates = sorted(p for p in folder.iterdir() if p.suffix in _WEIGHT_SUFFIXES and p.is_file())
    return candidates[0] if candidates else None


def _missing_weights(model_name: str, model_dir: Path, checkpoint: Path | None) -> Exception:
    folder = weights_folder(model_name, model_dir)
    where = (
        f"checkpoint {checkpoint} does not exist" if checkpoint else f"nothing found in {folder}"
    )
    return ModelWeightsMissingError(
        f"CLIP weights for {model_name!r} are missing ({where}). Expected "
        f"open_clip_pytorch_model.bin, open_clip_model.safetensors or a *.pt file in {folder}. "
        f"Fetch them with `agssp models fetch-clip {model_name}`."
    )


def default_quick_gelu(model_name: str) -> bool:
    """Whether ``load_clip`` forces QuickGELU on ``model_name`` when not told otherwise.

    True when every registered weight tag of the architecture was trained with QuickGELU
    but the architecture config does not set it (ViT-L-14-336, OpenAI weights).
    """
    # agssp-spec §6.2: the reference builds the OpenAI ViT-L with exact GELU although its
    # weights were trained with QuickGELU; we do not copy that (quick_gelu=False reproduces it).
    if model_config(model_name).get("quick_gelu", False):
        return False  # the architecture sets it already
    tags = list_pretrained_tags_by_model(model_name)
    return bool(tags) and all(get_pretrained_cfg(model_name, t).get("quick_gelu") for t in tags)


def _resolve_weights(
    model_name: str, checkpoint: Path | None, model_dir: Path, allow_random_weights: bool
) -> Path | None:
    if checkpoint is not None:
        if not checkpoint.is_file():
            raise _missing_weights(model_name, model_dir, checkpoint)
        return checkpoint
    found = find_weights(model_name, model_dir)
    if found is None and not allow_random_weights:
        raise _missing_weights(model_name, model_dir, None)
    if found is None:
        logger.warning("no CLIP weights for %s: random initialisation (tests only)", model_name)
    return found


_LOAD_ERRORS = (
    RuntimeError,
    OSError,
    KeyError,
    ValueError,
    pickle.UnpicklingError,
    SafetensorError,
)


def _create_model(
    model_name: str,
    weights: Path | None,
    device: torch.device,
    precision: Precision,
    image_size: int | None,
    quick_gelu: bool,
) -> nn.Module:
    try:
        # A file path (or None) as `pretrained`: open_clip never goes to the network here.
        model = open_clip.create_model(
            model_name,
            pretrained=str(weights) if weights is not None else None,
            precision=precision,
            device=device,
            force_quick_gelu=quick_gelu,
            force_image_size=image_size,
        )
    except _LOAD_ERRORS as exc:
        raise UnavailableError(
            f"CLIP weights {weights} do not load into {model_name!r}: {exc}",
            code="model_weights_invalid",
        ) from exc
    return cast(nn.Module, model.eval().requires_grad_(False))


def load_clip(
    model_name: str,
    *,
    checkpoint: Path | None = None,
    model_dir: Path,
    device: torch.device | str = "auto",
    precision: Precision = "fp32",
    image_size: int | None = None,
    quick_gelu: bool | None = None,
    allow_random_weights: bool = False,
) -> ClipBundle:
    """Build a stock open_clip ViT CLIP from local weights.

    Args:
        model_name: open_clip architecture name (also the weights sub-folder name).
        checkpoint: explicit weights file; otherwise ``<model_dir>/open_clip/<model_name>/``
            is searched for open_clip_model.safetensors, open_clip_pytorch_model.bin, *.pt.
        model_dir: root of the local model cache.
        device: 'auto', 'cpu', 'cuda', ... or a torch device.
        precision: 'fp32'; 'fp16' / 'bf16' (open_clip's mixed precision) need CUDA.
        image_size: force another input side (positional embeddings are interpolated).
        quick_gelu: None picks QuickGELU when every registered weight tag of the
            architecture was trained with it (OpenAI ViT-L); True/False force it.
        allow_random_weights: when no weights are found, build a randomly initialised
            model instead of failing (for tests with tiny configs).

    Raises:
        ModelWeightsMissingError: no weights and ``allow_random_weights`` is False.
        UnavailableError: the weights file exists but does not load into the model.
        InvalidInputError: unsupported architecture or precision/device combination.
    """
    torch_device = resolve_device(device) if isinstance(device, str) else device
    if precision != "fp32" and torch_device.type != "cuda":
        raise InvalidInputError(f"precision {precision!r} needs a CUDA device, got {torch_device}")
    size, patch, layers = _vision_geometry(model_name, image_size)
    text_cfg = model_config(model_name)["text_cfg"]
    if "hf_tokenizer_name" in text_cfg:
        raise InvalidInputError(f"{model_name!r} needs a Hugging Face tokenizer; not supported")
    weights = _resolve_weights(model_name, checkpoint, model_dir, allow_random_weights)
    force_quick_gelu = default_quick_gelu(model_name) if quick_gelu is None else quick_gelu
    model = _create_model(
        model_name, weights, torch_device, precision, image_size, force_quick_gelu
    )
    return ClipBundle(
        model_name=model_name,
        model=model,
        # agssp-spec §1.1: always the plain CLIP BPE tokenizer that ships with open_clip.
        tokenizer=SimpleTokenizer(context_length=int(text_cfg.get("context_length", 77))),
        image_size=size,
        patch_size=patch,
        grid_size=size // patch,
        num_layers=layers,
        embed_dim=int(model_config(model_name)["embed_dim"]),
        # agssp-spec §1.2: OpenAI CLIP mean/std (the weight tags of all three target models
        # register exactly these values).
        mean=cast(tuple[float, float, float], tuple(OPENAI_DATASET_MEAN)),
        std=cast(tuple[float, float, float], tuple(OPENAI_DATASET_STD)),
        device=torch_device,
        dtype=_DTYPES[precision],
        weights=weights,
    )
