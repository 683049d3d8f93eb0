"""Procedural anomaly textures and the 3-of-10 texture augmenter (tocoad-spec §3).

Replaces DTD, which cannot be downloaded here: seeded colour noise, gratings, grids, cells,
noise fields and strokes, each re-augmented on every draw.
"""

from __future__ import annotations

from collections.abc import Callable

import cv2
import numpy as np

from .perlin import perlin_noise, rotate

Rng = np.random.Generator


def _to_uint8(image: np.ndarray) -> np.ndarray:
    return np.asarray(np.clip(np.rint(image), 0, 255), dtype=np.uint8)


def _palette(field: np.ndarray, rng: Rng) -> np.ndarray:
    """Map a scalar field in [0, 1] to colours through 2-4 random anchor colours."""
    n_colours = int(rng.integers(2, 5))
    anchors = np.linspace(0.0, 1.0, n_colours)
    colours = rng.uniform(0, 255, size=(n_colours, 3))
    channels = [np.interp(field, anchors, colours[:, c]) for c in range(3)]
    return _to_uint8(np.stack(channels, axis=-1))


def _coords(size: int) -> tuple[np.ndarray, np.ndarray]:
    ys, xs = np.mgrid[0:size, 0:size].astype(np.float64)
    return ys, xs


def _perlin_colour(size: int, rng: Rng) -> np.ndarray:
    field = np.zeros((size, size), np.float64)
    base = int(rng.integers(0, 4))
    for octave in range(int(rng.integers(1, 4))):
        cells = min(2 ** (base + octave), size)
        field += perlin_noise((size, size), (cells, cells), rng) / 2.0**octave
    field = (field - field.min()) / (np.ptp(field) + 1e-8)
    return _palette(field, rng)


def _grating(size: int, rng: Rng) -> np.ndarray:
    ys, xs = _coords(size)
    theta, freq = rng.uniform(0, np.pi), rng.uniform(2, 24)
    wave = np.sin(
        2 * np.pi * freq * (xs * np.cos(theta) + ys * np.sin(theta)) / size
        + rng.uniform(0, 2 * np.pi)
    )
    field = (wave > 0).astype(np.float64) if rng.random() < 0.5 else 0.5 + 0.5 * wave
    return _palette(field, rng)


def _grid(size: int, rng: Rng) -> np.ndarray:
    ys, xs = _coords(size)
    cell = int(rng.integers(2, max(3, size // 4)))
    if rng.random() < 0.5:
        field = ((ys // cell + xs // cell) % 2).astype(np.float64)
    else:
        width = int(rng.integers(1, max(2, cell // 2)))
        field = ((ys % cell < width) | (xs % cell < width)).astype(np.float64)
    return _palette(field, rng)


def _cells(size: int, rng: Rng) -> np.ndarray:
    seeds = rng.uniform(0, size, size=(int(rng.integers(8, 64)), 2)).astype(np.float32)
    ys, xs = (c.astype(np.float32) for c in _coords(size))
    sq_dist = (ys[..., None] - seeds[:, 0]) ** 2 + (xs[..., None] - seeds[:, 1]) ** 2
    if rng.random() < 0.5:
        return _to_uint8(rng.uniform(0, 255, size=(len(seeds), 3))[sq_dist.argmin(-1)])
    nearest = np.sqrt(sq_dist.min(-1))
    return _palette(nearest / (nearest.max() + 1e-8), rng)


def _noise_field(size: int, rng: Rng) -> np.ndarray:
    base = rng.uniform(0, 255, size=3)
    if rng.random() < 0.5:
        return _to_uint8(base + rng.normal(0, rng.uniform(10, 60), size=(size, size, 3)))
    image = np.broadcast_to(base, (size, size, 3)).copy()
    salt = rng.random((size, size))
    density = rng.uniform(0.02, 0.2)
    image[salt < density / 2] = 0
    image[salt > 1 - density / 2] = 255
    return _to_uint8(image)


def _strokes(size: int, rng: Rng) -> np.ndarray:
    image = np.ascontiguousarray(
        _noise_field(size, rng) if rng.random() < 0.5 else _grating(size, rng)
    )
    for _ in range(int(rng.integers(3, 16))):
        points = rng.integers(0, size, size=(int(rng.integers(2, 6)), 1, 2)).astype(np.int32)
        colour = tuple(int(c) for c in rng.integers(0, 256, size=3))
        cv2.polylines(image, [points], False, colour, int(rng.integers(1, 5)))
    return image


_PATTERNS: tuple[Callable[[int, Rng], np.ndarray], ...] = (
    _perlin_colour,
    _grating,
    _grid,
    _cells,
    _noise_field,
    _strokes,
)


def procedural_textures(size: int, count: int, rng: Rng) -> list[np.ndarray]:
    """Seeded bank of ``count`` (S, S, 3) uint8 textures, cycling through the six pattern kinds."""
    return [_PATTERNS[i % len(_PATTERNS)](size, rng) for i in range(count)]


# tocoad-spec §3 step 3: the ten augmentations of DRAEM's texture augmenter (our own versions).
def _gamma(img: np.ndarray, rng: Rng) -> np.ndarray:
    return _to_uint8(255.0 * (img / 255.0) ** rng.uniform(0.5, 2.0, size=3))


def _brightness(img: np.ndarray, rng: Rng) -> np.ndarray:
    return _to_uint8(img * rng.uniform(0.8, 1.2) + rng.uniform(-30, 30))


def _sharpen(img: np.ndarray, rng: Rng) -> np.ndarray:
    blurred = cv2.GaussianBlur(img, (0, 0), 1.0).astype(np.float64)
    return _to_uint8(img + rng.uniform(0.5, 2.0) * (img - blurred))


def _hue_saturation(img: np.ndarray, rng: Rng) -> np.ndarray:
    hsv = cv2.cvtColor(img, cv2.COLOR_RGB2HSV).astype(np.int64)
    # OpenCV hue spans 0..179, so a +-50 shift on the 0..255 scale is rescaled.
    hsv[..., 0] = (hsv[..., 0] + int(rng.integers(-50, 51)) * 180 // 256) % 180
    hsv[..., 1] = np.clip(hsv[..., 1] + int(rng.integers(-50, 51)), 0, 255)
    return np.asarray(cv2.cvtColor(hsv.astype(np.uint8), cv2.COLOR_HSV2RGB))


def _solarise(img: np.ndarray, rng: Rng) -> np.ndarray:
    return np.where(img >= rng.uniform(32, 128), 255 - img, img).astype(np.uint8)


def _posterise(img: np.ndarray, rng: Rng) -> np.ndarray:
    keep = int(rng.integers(1, 8))
    return (img & np.uint8((0xFF << (8 - keep)) & 0xFF)).astype(np.uint8)


def _invert(img: np.ndarray, rng: Rng) -> np.ndarray:
    return (255 - img).astype(np.uint8)


def _autocontrast(img: np.ndarray, rng: Rng) -> np.ndarray:
    lo = img.min(axis=(0, 1), keepdims=True).astype(np.float64)
    hi = img.max(axis=(0, 1), keepdims=True).astype(np.float64)
    return _to_uint8((img - lo) * 255.0 / np.maximum(hi - lo, 1.0))


def _equalise(img: np.ndarray, rng: Rng) -> np.ndarray:
    return np.stack([cv2.equalizeHist(np.ascontiguousarray(img[..., c])) for c in range(3)], -1)


def _affine(img: np.ndarray, rng: Rng) -> np.ndarray:
    return rotate(img, float(rng.uniform(-45, 45)), border=cv2.BORDER_REFLECT_101)


_AUGMENTATIONS: tuple[Callable[[np.ndarray, Rng], np.ndarray], ...] = (
    _gamma,
    _brightness,
    _sharpen,
    _hue_saturation,
    _solarise,
    _posterise,
    _invert,
    _autocontrast,
    _equalise,
    _affine,
)


def augment_texture(image: np.ndarray, rng: Rng) -> np.ndarray:
    """Apply 3 distinct randomly chosen ops of the 10 (tocoad-spec §3 step 3).

    Args:
        image: (H, W, 3) uint8 RGB.
        rng: random source.

    Returns:
        (H, W, 3) uint8 augmented copy.
    """
    out = np.ascontiguousarray(image)
    for index in rng.choice(len(_AUGMENTATIONS), size=3, replace=False):
        out = np.ascontiguousarray(_AUGMENTATIONS[int(index)](out, rng))
    return out
