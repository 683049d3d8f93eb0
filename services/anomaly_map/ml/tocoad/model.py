"""Trained ToCoAD bundle: F + memory bank (+ D); scoring and (de)serialisation (§7).

Maps come from ``cfg.source``: the memory bank (tocoad-spec §7, the paper), D's segmentation
probability (Stage I's own output, as DRAEM scores), or both fused (§7.7).
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from pydantic import ValidationError
from torch import Tensor

from services.anomaly_map.params.tocoad import TocoadConfig
from shared.errors import InvalidInputError
from shared.ml.device import resolve_device

from .backbone import ResNetFeatures, create_backbone
from .bank import anomaly_maps, greedy_coreset, nearest_distances, patch_embeddings
from .common import cpu_state
from .data import (
    Box,
    content_box,
    cut_tiles,
    normalise,
    resize_images,
    stitch_tiles,
    to_unit_tensor,
    uncrop_maps,
)
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
            discriminator: D, kept when ``cfg.needs_discriminator`` (segmentation, fused).
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

    def _as_batch(self, images: Tensor | Sequence[np.ndarray]) -> tuple[Tensor, list[Box] | None]:
        size = self.image_size
        if not isinstance(images, Tensor):
            arrays = resize_images(images, size, self.cfg.aspect)
            boxes = [content_box(i.shape[0], i.shape[1], size, self.cfg.aspect) for i in images]
            return normalise(to_unit_tensor(arrays, self.device)), boxes
        if images.ndim != 4 or tuple(images.shape[1:]) != (3, size, size):
            raise InvalidInputError(
                f"image tensor has shape {tuple(images.shape)}; expected (B, 3, {size}, {size}) "
                "normalised as by data.preprocess, or pass a list of HxWx3 uint8 arrays"
            )
        return images.to(self.device, torch.float32), None

    @torch.no_grad()
    def score(self, images: Tensor | Sequence[np.ndarray]) -> tuple[np.ndarray, np.ndarray]:
        """Anomaly maps and image scores.

        Args:
            images: (B, 3, S, S) float tensor normalised as by ``data.preprocess``, or a list of
                HxWx3 uint8 RGB arrays of any size (resized to S x S here).

        Returns:
            maps: (B, S, S) float32 in the squashed layout (padded inputs are cropped back):
                bank: NN distance per patch, up-sampled and Gaussian-smoothed; segmentation:
                D's anomaly probability; fused: 0.5 x min-max bank + 0.5 x D.
            image_scores: (B,) float32: bank, the maximum raw patch distance; segmentation
                and fused, the maximum of the map after a local mean (DRAEM's image score).
        """
        if not isinstance(images, Tensor) and self.cfg.aspect == "tile":
            return self._score_tiled(images)
        x, boxes = self._as_batch(images)
        maps, scores = [], []
        for chunk in torch.split(x, self.cfg.bank.batch_size):
            chunk_maps, chunk_scores = self._score_chunk(chunk)
            maps.append(chunk_maps)
            scores.append(chunk_scores)
        out = np.concatenate(maps)
        if boxes is not None and self.cfg.aspect == "pad":
            out = uncrop_maps(out, boxes)
        return out.astype(np.float32, copy=False), np.concatenate(scores).astype(np.float32)

    def _score_tiled(self, images: Sequence[np.ndarray]) -> tuple[np.ndarray, np.ndarray]:
        size = self.image_size
        cuts = [cut_tiles(_checked(image, i), size) for i, image in enumerate(images)]
        if not cuts:
            raise InvalidInputError("no images given")
        tiles = np.concatenate([tiles for tiles, _ in cuts])
        x = normalise(to_unit_tensor(tiles, self.device))
        parts = [self._score_chunk(chunk) for chunk in torch.split(x, self.cfg.bank.batch_size)]
        maps = np.concatenate([m for m, _ in parts])
        scores = np.concatenate([s for _, s in parts])
        return stitch_tiles(maps, scores, [layout for _, layout in cuts], size)

    def _score_chunk(self, chunk: Tensor) -> tuple[np.ndarray, np.ndarray]:
        source = self.cfg.source
        if source == "segmentation":
            prob = self._d_probability(chunk)
            return prob.cpu().numpy(), _local_max(prob)
        bank_maps, bank_scores = self._bank_maps(chunk)
        if source == "bank":
            return bank_maps, bank_scores
        # tocoad-spec §7.7: 0.5 x min-max-normalised bank map + 0.5 x D's probability.
        lo = bank_maps.min(axis=(1, 2), keepdims=True)
        hi = bank_maps.max(axis=(1, 2), keepdims=True)
        scaled = (bank_maps - lo) / np.maximum(hi - lo, 1e-12)
        fused = torch.from_numpy(0.5 * scaled) + 0.5 * self._d_probability(chunk).cpu()
        return fused.numpy().astype(np.float32), _local_max(fused)

    def _bank_maps(self, chunk: Tensor) -> tuple[np.ndarray, np.ndarray]:
        cfg = self.cfg.bank
        emb = _embed(self.backbone, chunk, self.cfg)
        batch, height, width, dim = emb.shape
        dist = nearest_distances(emb.reshape(-1, dim), self.bank, cfg.k)
        dist = dist.reshape(batch, height, width)
        chunk_maps = anomaly_maps(dist, self.image_size, cfg.smoothing_sigma)
        return chunk_maps, dist.flatten(1).amax(1).cpu().numpy()

    def _d_probability(self, chunk: Tensor) -> Tensor:
        if self.discriminator is None:
            raise InvalidInputError(
                f"map_source {self.cfg.source!r} needs D, but this model was stored without it"
            )
        feats = self.backbone(chunk, self.discriminator.input_layers)
        logits: Tensor = self.discriminator(feats, self.image_size)
        return logits.softmax(1)[:, 1]

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


def _checked(image: np.ndarray, index: int) -> np.ndarray:
    if image.dtype != np.uint8 or image.ndim != 3 or image.shape[2] != 3:
        raise InvalidInputError(
            f"image {index} is {image.shape} {image.dtype}; expected HxWx3 uint8 RGB"
        )
    return image


def _local_max(prob: Tensor) -> np.ndarray:
    """Image score of a probability map: max of its local mean (DRAEM averages 21 px at 256)."""
    side = prob.shape[-1]
    kernel = max(3, (side // 12) | 1)
    pooled = F.avg_pool2d(prob[:, None].float(), kernel, stride=1, padding=kernel // 2)
    return pooled.flatten(1).amax(1).cpu().numpy()


def _prefixed(tensors: Mapping[str, Tensor], prefix: str) -> dict[str, Tensor]:
    return {k[len(prefix) :]: v for k, v in tensors.items() if k.startswith(prefix)}
