"""2-D gradient (Perlin) noise and the thresholded, rotated Perlin mask of tocoad-spec §3."""

from __future__ import annotations

import cv2
import numpy as np


def _fade(t: np.ndarray) -> np.ndarray:
    # tocoad-spec §3: quintic fade 6t^5 - 15t^4 + 10t^3 (zero 1st and 2nd derivative at lattice)
    return np.asarray(t * t * t * (t * (t * 6.0 - 15.0) + 10.0))


def perlin_noise(
    shape: tuple[int, int], res: tuple[int, int], rng: np.random.Generator
) -> np.ndarray:
    """Gradient noise with ``res`` lattice cells per axis.

    Args:
        shape: (H, W) of the output.
        res: cells along (H, W); each must be >= 1.
        rng: source of the random lattice gradients.

    Returns:
        (H, W) float32 noise, roughly in [-1, 1].
    """
    height, width = shape
    cells_y, cells_x = res
    angles = rng.uniform(0.0, 2.0 * np.pi, size=(cells_y + 1, cells_x + 1))
    grad_y, grad_x = np.sin(angles), np.cos(angles)
    pos_y = np.arange(height) * (cells_y / height)
    pos_x = np.arange(width) * (cells_x / width)
    iy, ix = pos_y.astype(np.int64), pos_x.astype(np.int64)
    fy, fx = (pos_y - iy)[:, None], (pos_x - ix)[None, :]

    def corner(dy: int, dx: int) -> np.ndarray:
        gy = grad_y[(iy + dy)[:, None], (ix + dx)[None, :]]
        gx = grad_x[(iy + dy)[:, None], (ix + dx)[None, :]]
        return np.asarray(gy * (fy - dy) + gx * (fx - dx))

    wy, wx = _fade(fy), _fade(fx)
    n00, n01, n10, n11 = corner(0, 0), corner(0, 1), corner(1, 0), corner(1, 1)
    top = n00 + wx * (n01 - n00)
    bottom = n10 + wx * (n11 - n10)
    # sqrt(2) rescales the theoretical range of 2-D gradient noise (+-sqrt(0.5)) to about +-1.
    return np.asarray(np.sqrt(2.0) * (top + wy * (bottom - top)), dtype=np.float32)


def rotate(image: np.ndarray, angle_deg: float, border: int = cv2.BORDER_CONSTANT) -> np.ndarray:
    """Rotate about the centre, keeping the size (zeros fill the corners by default)."""
    height, width = image.shape[:2]
    matrix = cv2.getRotationMatrix2D((width / 2.0, height / 2.0), angle_deg, 1.0)
    return np.asarray(cv2.warpAffine(image, matrix, (width, height), borderMode=border))


def perlin_mask(
    size: int,
    rng: np.random.Generator,
    scale_exp: tuple[int, int] = (0, 6),
    threshold: float = 0.5,
) -> np.ndarray:
    """Binary Perlin anomaly mask (DRAEM recipe, tocoad-spec §3 step 2).

    Args:
        size: S; the mask is S x S.
        rng: random source.
        scale_exp: lattice resolution 2**a per axis with a uniform in [lo, hi), drawn per axis.
        threshold: noise level above which a pixel is anomalous.

    Returns:
        (S, S) float32 mask with values in {0, 1}.
    """
    exp_y, exp_x = rng.integers(scale_exp[0], scale_exp[1], size=2)
    noise = perlin_noise((size, size), (2 ** int(exp_y), 2 ** int(exp_x)), rng)
    noise = rotate(noise, float(rng.uniform(-90.0, 90.0)))
    return (noise > threshold).astype(np.float32)
