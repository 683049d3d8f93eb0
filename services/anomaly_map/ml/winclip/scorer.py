"""WinCLIP mode on the same stock open_clip encoder, with the same output type as KeAD.

Sliding windows are token subsets (CLS + the window's patch tokens) re-run through
ln_pre -> blocks -> ln_post -> proj. Tokens are embedded once per call and passed on
explicitly: no forward hook is registered (field-notes §A2, §G).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from pydantic import BaseModel, ConfigDict, Field, field_validator
from torch import Tensor

from services.anomaly_map.ml.clip.backbone import ClipBundle
from services.anomaly_map.ml.clip.encoder import check_supported, embed_tokens, encode_tokens
from services.anomaly_map.ml.clip.outputs import KeadOutput, MemoryBank
from services.anomaly_map.ml.clip.preprocess import Resampler
from services.anomaly_map.ml.clip.scorer import ClipScorerBase, bank_references
from services.anomaly_map.ml.clip.scoring import (
    anomaly_probability,
    few_shot_distance,
    harmonic_mean,
)
from shared.errors import InvalidInputError


class WinClipConfig(BaseModel):
    """WinCLIP hyper-parameters (WinCLIP paper; anomalib's defaults for scales and temperature)."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    scales: tuple[int, ...] = Field((2, 3), description="window sides in patches")
    window_stride: int = Field(1, ge=1, description="window step in patches")
    temperature: float = Field(0.07, gt=0)
    # WinCLIP's own ensemble has no empty-template subtraction; True reuses KeAD's.
    subtract_empty_template: bool = False
    few_shot_distance_scale: float = Field(0.5, gt=0)
    k_shot: int | None = Field(None, ge=0, description="0 = zero-shot; None = all given")
    window_batch_size: int = Field(4096, ge=1, description="window sequences per forward")
    strict_prompt_length: bool = True
    resampler: Resampler = Field("pil", description="pil (official code) or torchvision")

    @field_validator("scales")
    @classmethod
    def _positive(cls, value: tuple[int, ...]) -> tuple[int, ...]:
        if not value or min(value) < 1:
            raise ValueError("scales must be a non-empty tuple of positive window sides")
        return value


@dataclass(frozen=True)
class WinClipFeatures:
    """Joint-space embeddings of a batch.

    Attributes:
        image: full-image CLS embeddings, (B, Dj).
        patches: final-layer patch embeddings, (B, G*G, Dj).
        windows: per scale, window CLS embeddings (B, n_windows, Dj).
    """

    image: Tensor
    patches: Tensor
    windows: tuple[Tensor, ...]


def window_indices(grid: int, size: int, stride: int = 1) -> Tensor:
    """Row-major patch indices of every size x size window on a grid x grid patch grid.

    Returns:
        (n_windows, size*size) int64, windows ordered row-major by their top-left patch.
    """
    if size > grid:
        raise InvalidInputError(f"window side {size} exceeds the {grid}x{grid} patch grid")
    starts = torch.arange(0, grid - size + 1, stride)
    offsets = (torch.arange(size)[:, None] * grid + torch.arange(size)[None, :]).flatten()
    tops = (starts[:, None] * grid + starts[None, :]).flatten()
    return tops[:, None] + offsets[None, :]


def coverage_matrix(windows: Tensor, num_patches: int) -> Tensor:
    """(n_windows, P) 0/1 matrix: which patches each window covers."""
    cover = torch.zeros(windows.shape[0], num_patches)
    return cover.scatter_(1, windows, 1.0)


def harmonic_aggregate(window_scores: Tensor, coverage: Tensor) -> Tensor:
    """Per patch, the harmonic mean of the scores of the windows covering it.

    Args:
        window_scores: (B, n_windows) scores in [0, 1].
        coverage: (n_windows, P) from ``coverage_matrix``.

    Returns:
        (B, P); patches covered by no window get 0.
    """
    reciprocal = (1.0 / window_scores.clamp_min(1e-12)) @ coverage
    count = coverage.sum(dim=0)
    return torch.where(count > 0, count / reciprocal, torch.zeros_like(reciprocal))


class WinClipModel(ClipScorerBase):
    """WinCLIP(+) scorer; a drop-in alternative to ``KeadModel`` (same methods and output).

    Args:
        bundle: CLIP model from ``load_clip``.
        config: hyper-parameters.
    """

    config: WinClipConfig

    def __init__(self, bundle: ClipBundle, config: WinClipConfig | None = None) -> None:
        self.bundle = bundle
        self.config = config or WinClipConfig()
        check_supported(bundle.visual)
        g = bundle.grid_size
        self._windows = [
            window_indices(g, s, self.config.window_stride) for s in self.config.scales
        ]
        self._coverage = [coverage_matrix(w, g * g).to(bundle.device) for w in self._windows]

    @torch.inference_mode()
    def encode(self, images: Tensor) -> WinClipFeatures:
        """Image, patch and window embeddings of (B, 3, S, S) images."""
        s = self.image_size
        if images.ndim != 4 or tuple(images.shape[1:]) != (3, s, s):
            raise InvalidInputError(f"expected images (B, 3, {s}, {s}), got {tuple(images.shape)}")
        visual = self.bundle.visual
        tokens = embed_tokens(visual, images.to(self.bundle.device))
        full = encode_tokens(visual, tokens).float()
        windows = tuple(self._window_embeddings(tokens, w) for w in self._windows)
        return WinClipFeatures(image=full[:, 0], patches=full[:, 1:], windows=windows)

    def _window_embeddings(self, tokens: Tensor, windows: Tensor) -> Tensor:
        b, _, width = tokens.shape
        n_windows, n = windows.shape
        patches = tokens[:, 1:][:, windows.to(tokens.device)]  # (B, n_windows, n, width)
        cls = tokens[:, :1, None].expand(b, n_windows, 1, width)
        sequences = torch.cat([cls, patches], dim=2).reshape(b * n_windows, 1 + n, width)
        pooled = [
            encode_tokens(self.bundle.visual, chunk)[:, 0]
            for chunk in torch.split(sequences, self.config.window_batch_size)
        ]
        return torch.cat(pooled).float().view(b, n_windows, -1)

    @torch.inference_mode()
    def build_memory_bank(self, ref_images: Tensor) -> MemoryBank:
        """Bank of patch and per-scale window embeddings of (K, 3, S, S) normal references."""
        refs = bank_references(ref_images, self.config.k_shot)
        feats = self.encode(refs)
        levels = (feats.patches, *feats.windows)
        normed = tuple(F.normalize(level.flatten(0, 1), dim=-1) for level in levels)
        return MemoryBank(method="winclip", levels=normed, num_images=refs.shape[0])

    @torch.inference_mode()
    def score(self, images: Tensor, text: Tensor, bank: MemoryBank | None = None) -> KeadOutput:
        """WinCLIP maps and image scores.

        Zero-shot: harmonic mean over the image score and the per-scale window maps.
        Few-shot (WinCLIP+): mean of patch and window association maps, averaged 50/50 with
        the zero-shot map; image score = (s0 + max few-shot map) / 2.

        Args:
            images: (B, 3, S, S) preprocessed images.
            text: (Dj, 2) from ``text_features``.
            bank: bank from ``build_memory_bank``; None (or k_shot 0) = zero-shot.

        Returns:
            Maps of shape (B, G, G) and scores of shape (B,).
        """
        g, tau = self.grid_size, self.config.temperature
        feats = self.encode(images)
        text = text.to(self.bundle.device)
        s0 = anomaly_probability(feats.image, text, tau)
        maps = [s0[:, None].expand(-1, g * g)]
        for windows, coverage in zip(feats.windows, self._coverage, strict=True):
            maps.append(harmonic_aggregate(anomaly_probability(windows, text, tau), coverage))
        zero_map = harmonic_mean(torch.stack(maps)).view(-1, g, g)
        if bank is None or self.config.k_shot == 0:
            return KeadOutput(zero_map, zero_map, None, s0, s0)
        few_map = self._few_shot_map(feats, self._checked_bank(bank))
        fused = (zero_map + few_map) / 2
        score = (s0 + few_map.flatten(1).amax(dim=1)) / 2
        return KeadOutput(fused, zero_map, few_map, score, s0)

    def _few_shot_map(self, feats: WinClipFeatures, bank: MemoryBank) -> Tensor:
        g, scale = self.grid_size, self.config.few_shot_distance_scale
        b = feats.image.shape[0]
        patch_level, *window_levels = bank.levels
        maps = [
            few_shot_distance(feats.patches.flatten(0, 1), patch_level, scale=scale).view(b, -1)
        ]
        for windows, memory, coverage in zip(
            feats.windows, window_levels, self._coverage, strict=True
        ):
            distance = few_shot_distance(windows.flatten(0, 1), memory, scale=scale)
            maps.append(harmonic_aggregate(distance.view(b, -1), coverage))
        return torch.stack(maps).mean(dim=0).view(-1, g, g)

    def _checked_bank(self, bank: MemoryBank) -> MemoryBank:
        if bank.method != "winclip" or len(bank.levels) != 1 + len(self._windows):
            raise InvalidInputError(
                f"memory bank ({bank.method}, {len(bank.levels)} levels) does not match this "
                f"WinCLIP model (1 + {len(self._windows)} scales); rebuild it"
            )
        bank = bank.to(self.bundle.device)
        return bank if self.config.k_shot is None else bank.first(self.config.k_shot)
