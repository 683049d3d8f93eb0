"""KeAD anomaly maps: V-V CLIP features scored against description prompts and a memory bank.

Implements agssp-spec §1.2-1.8; every code-vs-paper deviation of §6.1 is a config option
whose default follows the reference code.
"""

from __future__ import annotations

import torch
from pydantic import BaseModel, ConfigDict, Field, field_validator
from torch import Tensor

from services.anomaly_map.ml.clip.backbone import ClipBundle
from services.anomaly_map.ml.clip.encoder import (
    EncodedImages,
    LevelMode,
    check_supported,
    default_feature_layers,
    default_vv_start,
    encode_dual_stream,
    map_levels,
)
from services.anomaly_map.ml.clip.outputs import KeadOutput, MemoryBank
from services.anomaly_map.ml.clip.preprocess import Resampler
from services.anomaly_map.ml.clip.scorer import ClipScorerBase, bank_references
from services.anomaly_map.ml.clip.scoring import (
    FewShotReduction,
    FusionMode,
    ImageScoreMode,
    anomaly_probability,
    combine_image_score,
    few_shot_distance,
    fuse_maps,
)
from shared.errors import InvalidInputError


class KeadConfig(BaseModel):
    """KeAD hyper-parameters; defaults reproduce the reference code (agssp-spec §1, §6.1)."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    feature_layers: tuple[int, ...] | None = Field(
        None, description="1-based blocks collected as map levels; None = four evenly spaced"
    )
    vv_start_block: int | None = Field(
        None, ge=1, description="first V-V block; None = the block after the first level"
    )
    vv_residual: bool = Field(True, description="'vv_res' (code); False = plain 'vv' stream")
    temperature: float = Field(0.07, gt=0, description="fixed, not the model's logit scale")
    subtract_empty_template: bool = Field(True, description="code; False = paper (§6.1.3)")
    few_shot_distance_scale: float = Field(0.5, gt=0)
    few_shot_reduction: FewShotReduction = Field(
        "nearest", description="'nearest' (code) or 'farthest' (paper wording, §6.1.1)"
    )
    fusion: FusionMode = Field("sum", description="M = M0 + Mf (code) or their mean")
    image_score: ImageScoreMode = Field(
        "average_fused_max", description="(s0 + max M) / 2 (code) or s0 + max Mf (paper)"
    )
    # Our choice (agssp-spec §6.1.6): the reference never slices the bank to k images; we do.
    # None keeps every reference image given, which is what the reference always does.
    k_shot: int | None = Field(
        None, ge=0, description="reference images used; 0 = zero-shot; None = all given"
    )
    strict_prompt_length: bool = Field(
        True, description="reject prompts over the context instead of cutting them"
    )
    # agssp-spec §6.2: the official code adds the V-V residual in place and stores the same
    # tensor for every level, so the levels after the first all hold the final V-V stream
    # (M0 = (p3 + 3 p12) / 4 for ViT-B). Where paper and code differ, the default follows
    # the code (§6.4); "distinct" computes the per-level streams the paper describes.
    level_mode: LevelMode = Field(
        "official", description="official: V-V levels alias the final one (code); distinct"
    )
    resampler: Resampler = Field("pil", description="pil (official code) or torchvision")

    @field_validator("feature_layers")
    @classmethod
    def _increasing(cls, value: tuple[int, ...] | None) -> tuple[int, ...] | None:
        if value is not None and (not value or min(value) < 1 or list(value) != sorted(set(value))):
            raise ValueError("feature_layers must be strictly increasing 1-based block indices")
        return value


class KeadModel(ClipScorerBase):
    """KeAD scorer on a loaded CLIP bundle; stateless apart from the model weights.

    Args:
        bundle: CLIP model from ``load_clip``.
        config: hyper-parameters; defaults follow the reference code.
    """

    config: KeadConfig

    def __init__(self, bundle: ClipBundle, config: KeadConfig | None = None) -> None:
        self.bundle = bundle
        self.config = config or KeadConfig()
        layers = self.config.feature_layers or default_feature_layers(bundle.num_layers)
        if max(layers) > bundle.num_layers:
            raise InvalidInputError(
                f"feature_layers {layers} exceed the {bundle.num_layers} blocks "
                f"of {bundle.model_name}"
            )
        self.feature_layers = layers
        self.vv_start = self.config.vv_start_block or default_vv_start(layers)
        check_supported(bundle.visual)

    @torch.inference_mode()
    def encode(self, images: Tensor) -> EncodedImages:
        """Main-stream CLS (B, Dj) and V-V levels (B, G*G, Dj) of (B, 3, S, S) images."""
        self._check_images(images)
        return encode_dual_stream(
            self.bundle.visual,
            images.to(self.bundle.device),
            feature_layers=self.feature_layers,
            vv_start=self.vv_start,
            vv_residual=self.config.vv_residual,
            level_mode=self.config.level_mode,
        )

    @torch.inference_mode()
    def build_memory_bank(self, ref_images: Tensor) -> MemoryBank:
        """Few-shot bank from normal reference images (agssp-spec §1.7).

        Args:
            ref_images: (K, 3, S, S) preprocessed references; only the first ``k_shot`` are
                used when ``k_shot`` is set.

        Returns:
            Bank with one (K * G*G, Dj) unit-norm matrix per feature level.
        """
        refs = bank_references(ref_images, self.config.k_shot)
        encoded = self.encode(refs)
        levels = map_levels(
            encoded.levels, lambda level: torch.nn.functional.normalize(level.flatten(0, 1), dim=-1)
        )
        return MemoryBank(method="kead", levels=levels, num_images=refs.shape[0])

    @torch.inference_mode()
    def score(self, images: Tensor, text: Tensor, bank: MemoryBank | None = None) -> KeadOutput:
        """Anomaly maps and image scores (agssp-spec §1.6-1.8).

        Args:
            images: (B, 3, S, S) preprocessed images of one category.
            text: (Dj, 2) features from ``text_features``.
            bank: few-shot memory bank of the same category; None (or k_shot 0) = zero-shot.

        Returns:
            Maps of shape (B, G, G) and scores of shape (B,).
        """
        cfg, g = self.config, self.grid_size
        encoded = self.encode(images)
        text = text.to(self.bundle.device)
        s0 = anomaly_probability(encoded.cls, text, cfg.temperature)
        probabilities = map_levels(
            encoded.levels, lambda z: anomaly_probability(z, text, cfg.temperature)
        )
        zero = torch.stack(probabilities)
        zero_map = zero.mean(dim=0).view(-1, g, g)
        if bank is None or cfg.k_shot == 0:
            return KeadOutput(zero_map, zero_map, None, s0, s0)
        few_map = self._few_shot_map(encoded, self._checked_bank(bank))
        fused = fuse_maps(zero_map, few_map, cfg.fusion)
        score = combine_image_score(s0, fused, few_map, cfg.image_score)
        return KeadOutput(fused, zero_map, few_map, score, s0)

    def _few_shot_map(self, encoded: EncodedImages, bank: MemoryBank) -> Tensor:
        cfg, g = self.config, self.grid_size
        pairs = list(zip(encoded.levels, bank.levels, strict=True))
        per_level: list[Tensor] = []
        for i, (level, memory) in enumerate(pairs):
            # Official mode: levels of one stream scored against equal bank levels are one
            # computation (agssp-spec §6.2); a stored bank's levels are equal, not identical.
            same = next((j for j in range(i) if _same_pair(pairs[j], (level, memory))), None)
            if same is not None:
                per_level.append(per_level[same])
                continue
            distance = few_shot_distance(
                level.flatten(0, 1),
                memory,
                scale=cfg.few_shot_distance_scale,
                reduction=cfg.few_shot_reduction,
            )
            per_level.append(distance.view(-1, g, g))
        return torch.stack(per_level).mean(dim=0)

    def _checked_bank(self, bank: MemoryBank) -> MemoryBank:
        if bank.method != "kead" or len(bank.levels) != len(self.feature_layers):
            raise InvalidInputError(
                f"memory bank ({bank.method}, {len(bank.levels)} levels) does not match this "
                f"KeAD model ({len(self.feature_layers)} levels); rebuild it"
            )
        if any(level.shape[-1] != self.bundle.embed_dim for level in bank.levels):
            raise InvalidInputError("memory bank embedding size differs from the model's")
        bank = bank.to(self.bundle.device)
        # k honoured at scoring time too, so a bank stored with more images still obeys k.
        return bank if self.config.k_shot is None else bank.first(self.config.k_shot)

    def _check_images(self, images: Tensor) -> None:
        s = self.image_size
        if images.ndim != 4 or tuple(images.shape[1:]) != (3, s, s):
            raise InvalidInputError(f"expected images (B, 3, {s}, {s}), got {tuple(images.shape)}")


def _same_pair(a: tuple[Tensor, Tensor], b: tuple[Tensor, Tensor]) -> bool:
    """Whether two (test level, bank level) pairs give the same few-shot distances."""
    return a[0] is b[0] and (a[1] is b[1] or torch.equal(a[1], b[1]))
