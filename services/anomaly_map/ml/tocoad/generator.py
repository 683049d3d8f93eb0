"""Synthetic anomaly generator G: Perlin-mask texture blending and CutPaste (tocoad-spec §3),
pasted labelled defects and native labelled images (``defects``).

Invariant (unit-tested): pixels outside the returned mask equal the input image (for pasted
defects: pixels outside the feathered exemplar). A native sample replaces the input image by a
labelled image, whose target is its own labelled defects.
"""

from __future__ import annotations

from collections.abc import Sequence

import cv2
import numpy as np

from services.anomaly_map.params.tocoad import GeneratorConfig
from shared.errors import InvalidInputError

from .defects import DefectExemplar, NativeSample, augment, augment_native, paste
from .perlin import perlin_mask, rotate
from .textures import augment_texture, procedural_textures

Rng = np.random.Generator


def _normal(image: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    return image.copy(), np.zeros(image.shape[:2], np.float32)


class AnomalyGenerator:
    """Turns normal images into (synthetic image, mask) pairs."""

    def __init__(
        self,
        cfg: GeneratorConfig,
        image_size: int,
        normals: np.ndarray,
        textures: Sequence[np.ndarray] | None = None,
        seed: int = 0,
        defects: Sequence[DefectExemplar] = (),
        natives: Sequence[NativeSample] = (),
    ) -> None:
        """Prepare the texture sources.

        Args:
            cfg: generator settings.
            image_size: S; every image passed in must be (S, S, 3) uint8.
            normals: (N, S, S, 3) uint8 training normals, the self-sourced texture pool.
            textures: optional external texture images (any size, uint8 RGB), e.g. DTD loaded by
                the service layer; replaces the procedural + self-source mix.
            seed: seeds the procedural texture bank only (draws use the rng passed per call).
            defects: labelled defect exemplars at the model's scale; a ``cfg.p_labelled``
                share of the synthetic anomalies pastes one of them instead.
            natives: labelled images at the model's scale with their targets; a
                ``cfg.p_native`` share of the samples is one of them (``native``).
        """
        self.cfg = cfg
        self.size = image_size
        self.normals = normals
        self.defects = list(defects)
        self.natives = list(natives)
        if textures:
            self.external = [self._fit(t) for t in textures]
            self.procedural: list[np.ndarray] = []
        else:
            self.external = []
            self.procedural = procedural_textures(
                image_size, cfg.n_procedural_textures, np.random.default_rng(seed)
            )

    def _fit(self, texture: np.ndarray) -> np.ndarray:
        if texture.dtype != np.uint8 or texture.ndim != 3 or texture.shape[2] != 3:
            raise InvalidInputError(
                f"texture images must be HxWx3 uint8, got {texture.shape} {texture.dtype}"
            )
        return np.asarray(cv2.resize(texture, (self.size, self.size)))

    def _self_source(self, rng: Rng) -> np.ndarray:
        # tocoad-spec §3 b): another normal image, random crop + flip + rot90 (then augmented).
        source = self.normals[int(rng.integers(len(self.normals)))]
        side = int(self.size * rng.uniform(0.5, 1.0))
        top, left = rng.integers(0, self.size - side + 1, size=2)
        crop = source[top : top + side, left : left + side]
        if rng.random() < 0.5:
            crop = crop[:, ::-1]
        crop = np.rot90(crop, int(rng.integers(4)))
        return np.asarray(cv2.resize(np.ascontiguousarray(crop), (self.size, self.size)))

    def _texture(self, rng: Rng) -> np.ndarray:
        if self.external:
            base = self.external[int(rng.integers(len(self.external)))]
        elif rng.random() < self.cfg.p_self_source:
            base = self._self_source(rng)
        else:
            base = self.procedural[int(rng.integers(len(self.procedural)))]
        return augment_texture(base, rng)

    def perlin(self, image: np.ndarray, rng: Rng) -> tuple[np.ndarray, np.ndarray]:
        """DRAEM-style anomaly: foreign texture blended inside a Perlin mask.

        Args:
            image: (S, S, 3) uint8 normal image.
            rng: random source.

        Returns:
            (S, S, 3) uint8 image and (S, S) float32 mask in {0, 1}.
        """
        cfg = self.cfg
        if rng.random() < cfg.rotate_prob:
            image = rotate(image, float(rng.uniform(-90, 90)), border=cv2.BORDER_REFLECT_101)
        if rng.random() < cfg.p_keep_normal:
            return _normal(image)
        mask = perlin_mask(self.size, rng, cfg.perlin_scale_exp, cfg.perlin_threshold)
        if not mask.any():
            return _normal(image)
        beta = rng.uniform(*cfg.beta_range)
        # tocoad-spec §3 step 4: (1 - beta) * texture + beta * image inside M only.
        blended = (1.0 - beta) * self._texture(rng).astype(np.float32) + beta * image
        blended_u8 = np.clip(np.rint(blended), 0, 255).astype(np.uint8)
        return np.where(mask[..., None] > 0, blended_u8, image), mask

    def cutpaste(self, image: np.ndarray, rng: Rng) -> tuple[np.ndarray, np.ndarray]:
        """CutPaste anomaly: a colour-jittered rectangle of the image pasted elsewhere.

        Args:
            image: (S, S, 3) uint8 normal image.
            rng: random source.

        Returns:
            (S, S, 3) uint8 image and (S, S) float32 mask (the pasted rectangle).
        """
        if rng.random() < self.cfg.p_keep_normal:
            return _normal(image)
        size = self.size
        # CutPaste's patch prior: area 2-15 % of the image, aspect ratio 0.3-3.3 (log-uniform).
        area = rng.uniform(0.02, 0.15) * size * size
        aspect = float(np.exp(rng.uniform(np.log(0.3), np.log(3.3))))
        height = int(np.clip(round(np.sqrt(area / aspect)), 1, size - 1))
        width = int(np.clip(round(np.sqrt(area * aspect)), 1, size - 1))
        sy, dy = rng.integers(0, size - height + 1, size=2)
        sx, dx = rng.integers(0, size - width + 1, size=2)
        source = image[sy : sy + height, sx : sx + width].astype(np.float64)
        patch = source * rng.uniform(0.9, 1.1, size=3) + rng.uniform(-12.0, 12.0, size=3)
        out = image.copy()
        out[dy : dy + height, dx : dx + width] = np.clip(np.rint(patch), 0, 255).astype(np.uint8)
        mask = np.zeros((size, size), np.float32)
        mask[dy : dy + height, dx : dx + width] = 1.0
        return out, mask

    def labelled(self, image: np.ndarray, rng: Rng) -> tuple[np.ndarray, np.ndarray]:
        """A labelled defect pasted onto the image (see ``defects.paste``).

        Args:
            image: (S, S, 3) uint8 normal image.
            rng: random source.

        Returns:
            (S, S, 3) uint8 image and (S, S) float32 mask in {0, 1}.
        """
        if rng.random() < self.cfg.p_keep_normal:
            return _normal(image)
        exemplar = self.defects[int(rng.integers(len(self.defects)))]
        return paste(image, augment(exemplar, self.size, rng), rng)

    def native(self, rng: Rng) -> tuple[np.ndarray, np.ndarray]:
        """A labelled image in its own context, flipped and turned, with its defects' target.

        Returns:
            (S, S, 3) uint8 image and (S, S) float32 mask in {0, 1}.
        """
        return augment_native(self.natives[int(rng.integers(len(self.natives)))], rng)

    def __call__(self, image: np.ndarray, rng: Rng) -> tuple[np.ndarray, np.ndarray]:
        """One sample: a native labelled image (``p_native`` of the draws, when there are
        some), else a labelled defect pasted (``p_labelled`` of the rest, when there are
        exemplars), else the configured generator (see ``perlin``). With ``p_native`` 0 no
        random number is drawn for it, so seeded runs repeat those without natives."""
        if self.natives and self.cfg.p_native > 0 and rng.random() < self.cfg.p_native:
            return self.native(rng)
        if self.defects and rng.random() < self.cfg.p_labelled:
            return self.labelled(image, rng)
        if self.cfg.kind == "cutpaste":
            return self.cutpaste(image, rng)
        return self.perlin(image, rng)

    def batch(self, images: np.ndarray, rng: Rng) -> tuple[np.ndarray, np.ndarray]:
        """Synthetic batch: (B, S, S, 3) uint8 -> ((B, S, S, 3) uint8, (B, S, S) float32)."""
        pairs = [self(image, rng) for image in images]
        return np.stack([p[0] for p in pairs]), np.stack([p[1] for p in pairs])
