"""Trained ToCoAD bundle: F + memory bank (+ optional D); scoring and (de)serialisation (§7)."""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from typing import Any

import numpy as np
import torch
from pydantic import ValidationError
from torch import Tensor

from shared.errors import InvalidInputError
from shared.ml.device import resolve_device

from .backbone import ResNetFeatures, create_backbone
from .bank import anomaly_maps, greedy_coreset, nearest_distances, patch_embeddings
from .common import cpu_state
from .config import TocoadConfig
from .data import normalise, preprocess, to_unit_tensor
from .discriminator import Discriminator

MODEL_FORMAT = "tocoad-model/1"


def _embed(backbone: ResNetFeatures, x: Tensor, cfg: TocoadConfig) -> Tensor:
    feats = backbone(x, cfg.bank.layers)
    return patch_embeddings(feats, cfg.bank.layers, cfg.bank.patch_size, cfg.bank.embed_dim)


@torch.no_grad()
def build_memory_bank(
    backbone: ResNetFeatures,
    normals: np.ndarray,
    cfg: TocoadConfig,
    device: torch.device,
    on_batch: Callable[[float], None] | None = None,
) -> Tensor:
    """Patch embeddings of every training normal, coreset-subsampled.

    Args:
        backbone: F (put in eval mode here).
        normals: (N, S, S, 3) uint8.
        cfg: run configuration (``bank`` section, ``seed``).
        device: where F lives.
        on_batch: called with the fraction of images embedded so far.

    Returns:
        (M, E) float32 bank with M = max(1, round(coreset_ratio * N * h * w)).
    """
    backbone.eval()
    chunks = []
    step = cfg.bank.batch_size
    for start in range(0, len(normals), step):
        x = normalise(to_unit_tensor(normals[start : start + step], device))
        emb = _embed(backbone, x, cfg)
        chunks.append(emb.reshape(-1, emb.shape[-1]))
        if on_batch is not None:
            on_batch(min(1.0, (start + step) / len(normals)))
    patches = torch.cat(chunks)
    keep = max(1, round(cfg.bank.coreset_ratio * len(patches)))
    index = greedy_coreset(
        patches, keep, proj_dim=cfg.bank.proj_dim, n_starts=cfg.bank.n_starts, seed=cfg.seed
    )
    return patches[index].contiguous()


class TocoadModel:
    """Feature extractor F and memory bank; scores images into anomaly maps."""

    def __init__(
        self,
        cfg: TocoadConfig,
        backbone: ResNetFeatures,
        bank: Tensor,
        discriminator: Discriminator | None = None,
        device: torch.device | None = None,
    ) -> None:
        """Bundle the trained parts on one device.

        Args:
            cfg: the configuration the model was trained with.
            backbone: F after Stage II.
            bank: (M, E) memory bank.
            discriminator: D, kept only for the ``use_d_map`` diagnostic.
            device: where to run; None uses the backbone's device.
        """
        self.cfg = cfg
        self.device = device or next(backbone.parameters()).device
        self.backbone = backbone.to(self.device).eval()
        self.bank = bank.to(self.device, torch.float32)
        self.discriminator = (
            discriminator.to(self.device).eval() if discriminator is not None else None
        )

    @property
    def image_size(self) -> int:
        """S: every image is resized to S x S before scoring."""
        return self.cfg.image_size

    def _as_batch(self, images: Tensor | Sequence[np.ndarray]) -> Tensor:
        if not isinstance(images, Tensor):
            return preprocess(images, self.image_size, self.device)
        size = self.image_size
        if images.ndim != 4 or tuple(images.shape[1:]) != (3, size, size):
            raise InvalidInputError(
                f"image tensor has shape {tuple(images.shape)}; expected (B, 3, {size}, {size}) "
                "normalised as by data.preprocess, or pass a list of HxWx3 uint8 arrays"
            )
        return images.to(self.device, torch.float32)

    @torch.no_grad()
    def score(self, images: Tensor | Sequence[np.ndarray]) -> tuple[np.ndarray, np.ndarray]:
        """Anomaly maps and image scores.

        Args:
            images: (B, 3, S, S) float tensor normalised as by ``data.preprocess``, or a list of
                HxWx3 uint8 RGB arrays of any size (resized to S x S here).

        Returns:
            maps: (B, S, S) float32, NN distance per patch, up-sampled and Gaussian-smoothed.
            image_scores: (B,) float32, the maximum raw patch distance per image.
        """
        x = self._as_batch(images)
        cfg = self.cfg.bank
        maps, scores = [], []
        for chunk in torch.split(x, cfg.batch_size):
            emb = _embed(self.backbone, chunk, self.cfg)
            batch, height, width, dim = emb.shape
            dist = nearest_distances(emb.reshape(-1, dim), self.bank, cfg.k)
            dist = dist.reshape(batch, height, width)
            chunk_maps = anomaly_maps(dist, self.image_size, cfg.smoothing_sigma)
            if self.discriminator is not None:
                chunk_maps = self._fuse_d_map(chunk, chunk_maps)
            maps.append(chunk_maps)
            scores.append(dist.flatten(1).amax(1).cpu().numpy())
        return np.concatenate(maps), np.concatenate(scores).astype(np.float32)

    def _fuse_d_map(self, x: Tensor, maps: np.ndarray) -> np.ndarray:
        # tocoad-spec §7.7 diagnostic: 0.5 x min-max-normalised bank map + 0.5 x D's probability.
        assert self.discriminator is not None
        feats = self.backbone(x, self.discriminator.input_layers)
        prob = self.discriminator(feats, self.image_size).softmax(1)[:, 1].cpu().numpy()
        lo = maps.min(axis=(1, 2), keepdims=True)
        hi = maps.max(axis=(1, 2), keepdims=True)
        scaled = (maps - lo) / np.maximum(hi - lo, 1e-12)
        return np.asarray(0.5 * scaled + 0.5 * prob, dtype=np.float32)

    def to_state(self) -> dict[str, Any]:
        """Serialisable bundle: ``{"format", "config": JSON dict, "tensors": {name: CPU tensor}}``.

        ``tensors`` is flat (``backbone.*``, ``bank``, optionally ``discriminator.*``), so it can
        be written with safetensors or ``torch.save`` beside the JSON config.
        """
        tensors = {f"backbone.{k}": v for k, v in cpu_state(self.backbone).items()}
        tensors["bank"] = self.bank.detach().cpu().clone()
        if self.discriminator is not None:
            tensors |= {f"discriminator.{k}": v for k, v in cpu_state(self.discriminator).items()}
        return {
            "format": MODEL_FORMAT,
            "config": self.cfg.model_dump(mode="json"),
            "tensors": tensors,
        }

    @classmethod
    def from_state(
        cls, state: Mapping[str, Any], device: torch.device | str = "auto"
    ) -> TocoadModel:
        """Rebuild a model from ``to_state()`` output.

        Raises:
            InvalidInputError: on an unknown format, an invalid config or mismatching tensors.
        """
        if state.get("format") != MODEL_FORMAT:
            raise InvalidInputError(
                f"model state format {state.get('format')!r} is not {MODEL_FORMAT!r}"
            )
        try:
            cfg = TocoadConfig.model_validate(state["config"])
        except ValidationError as exc:
            raise InvalidInputError(f"model state holds an invalid TocoadConfig: {exc}") from exc
        tensors: Mapping[str, Tensor] = state["tensors"]
        backbone = create_backbone(cfg.backbone)
        disc = None
        if any(k.startswith("discriminator.") for k in tensors):
            disc = Discriminator(backbone.channels, backbone.is_bottleneck, cfg.use_f2_skip)
        try:
            backbone.load_state_dict(_prefixed(tensors, "backbone."))
            if disc is not None:
                disc.load_state_dict(_prefixed(tensors, "discriminator."))
        except RuntimeError as exc:
            raise InvalidInputError(
                f"model tensors do not match the config's networks: {exc}"
            ) from exc
        target = device if isinstance(device, torch.device) else resolve_device(device)
        return cls(cfg, backbone, tensors["bank"], disc, target)


def _prefixed(tensors: Mapping[str, Tensor], prefix: str) -> dict[str, Tensor]:
    return {k[len(prefix) :]: v for k, v in tensors.items() if k.startswith(prefix)}
