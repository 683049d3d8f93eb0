"""Untrusted image bytes -> checked, decoded, normalised uint8 array.

Every service turns request bytes into pixels only through :func:`decode_image`.
"""

from __future__ import annotations

import io
import sys
from collections.abc import Callable
from contextlib import AbstractContextManager, nullcontext
from dataclasses import dataclass, replace
from typing import TYPE_CHECKING, Literal, NoReturn, Protocol

import numpy as np
import numpy.typing as npt
from PIL import ExifTags, Image, ImageFile, ImageOps, UnidentifiedImageError

from shared.errors import InvalidInputError, PayloadTooLargeError, UnsupportedMediaError, naming
from shared.imaging import budget as pixel_budget

if TYPE_CHECKING:
    from shared.config import CommonSettings

OutputMode = Literal["rgb", "gray"]

DEFAULT_FORMATS: tuple[str, ...] = ("JPEG", "PNG", "BMP", "TIFF")
# Formats a deployment may opt into. Anything else (FITS, PSD, ICO, ...) never reaches a
# Pillow decoder: the header probe only tries the plugins named in ImageLimits.
SAFE_FORMATS = frozenset({*DEFAULT_FORMATS, "WEBP", "GIF"})

_SIGNATURES: dict[str, tuple[bytes, ...]] = {
    "JPEG": (b"\xff\xd8\xff",),
    "PNG": (b"\x89PNG\r\n\x1a\n",),
    "BMP": (b"BM",),
    "TIFF": (b"II*\x00", b"MM\x00*"),
    "GIF": (b"GIF87a", b"GIF89a"),
}
_HIGH_DEPTH_MODES = frozenset({"I;16", "I;16L", "I;16B", "I;16N", "I", "F"})
_GRAY_MODES = frozenset({"1", "L", "LA"})


@dataclass(frozen=True)
class ImageLimits:
    """What one service accepts from callers.

    Attributes:
        max_bytes: Largest encoded image, in bytes.
        max_pixels: Largest width * height, checked from the header before any decoding.
            Must not exceed Pillow's ``Image.MAX_IMAGE_PIXELS`` so that our cap, not
            Pillow's warning, is always the first line of defence.
        allowed_formats: Pillow format names to try; a subset of ``SAFE_FORMATS``.
        output_mode: ``"rgb"`` for (H, W, 3) arrays, ``"gray"`` for (H, W) arrays.
    """

    max_bytes: int = 20 * 1024 * 1024
    max_pixels: int = 40_000_000
    allowed_formats: tuple[str, ...] = DEFAULT_FORMATS
    output_mode: OutputMode = "rgb"

    def __post_init__(self) -> None:
        if self.max_bytes <= 0 or self.max_pixels <= 0:
            raise ValueError("max_bytes and max_pixels must be positive")
        bomb_limit = Image.MAX_IMAGE_PIXELS
        if bomb_limit is not None and self.max_pixels > bomb_limit:
            raise ValueError(f"max_pixels must be <= Pillow's MAX_IMAGE_PIXELS ({bomb_limit})")
        unknown = set(self.allowed_formats) - SAFE_FORMATS
        if not self.allowed_formats or unknown:
            raise ValueError(
                f"allowed_formats must be a non-empty subset of {sorted(SAFE_FORMATS)}"
            )
        if self.output_mode not in ("rgb", "gray"):
            raise ValueError("output_mode must be 'rgb' or 'gray'")


class ServiceImageSettings(Protocol):
    """The settings every service's images are capped by: its own ``max_image_mb`` and the
    suite-wide pixel cap (``AGSSP_HTTP_MAX_IMAGE_PIXELS``)."""

    @property
    def max_image_mb(self) -> float: ...

    @property
    def common(self) -> CommonSettings: ...


def image_limits(settings: ServiceImageSettings) -> ImageLimits:
    """What a service accepts as an image: its byte cap and the suite's pixel cap."""
    return ImageLimits(
        max_bytes=int(settings.max_image_mb * 2**20),
        max_pixels=settings.common.http.max_image_pixels,
    )


@dataclass(frozen=True, eq=False)
class DecodedImage:
    """A decoded, upright, 8-bit image.

    Normalisation: 16-bit samples (I;16*, and 48/64-bit RGB(A) that Pillow reduces itself)
    keep their high byte (``>> 8``); mode I is clipped to 0..65535 and treated the same; mode
    F is read on the 0..255 scale (clipped, rounded, NaN -> 0). Alpha channels are dropped,
    not composited: the colour samples are what the camera saw. Palette, CMYK and bilevel
    images become RGB; gray output uses Pillow's ITU-R 601-2 luma.

    Attributes:
        array: uint8, C-contiguous, (H, W, 3) RGB or (H, W) gray; a fresh array the caller owns.
        width: W, after the EXIF orientation was applied.
        height: H, after the EXIF orientation was applied.
        format: Pillow format name of the source ("JPEG", "PNG", ...).
        original_mode: Pillow mode of the source ("RGB", "I;16", "CMYK", ...).
        bit_depth: Bits per sample of the source: 1, 8, 16, or 32 for modes I and F.
            Sub-byte PNG depths that Pillow expands are reported as 8.
        orientation_applied: Whether an EXIF orientation other than 1 was applied.
    """

    array: npt.NDArray[np.uint8]
    width: int
    height: int
    format: str
    original_mode: str
    bit_depth: int
    orientation_applied: bool


def decode_object(data: bytes, limits: ImageLimits, key: str) -> DecodedImage:
    """``decode_image`` for a stored object or file: a refusal names ``key``."""
    with naming(key):
        return decode_image(data, limits)


def decode_image(data: bytes, limits: ImageLimits) -> DecodedImage:
    """Check and decode one untrusted image.

    Order: byte cap, header probe restricted to ``limits.allowed_formats``, pixel cap from
    the header, full decode (truncated data is an error), EXIF orientation, 8-bit
    normalisation (see :class:`DecodedImage`). Multi-frame files give their first frame only.

    Args:
        data: The encoded image as received.
        limits: The caller's caps, format allow-list and output mode.

    Returns:
        The decoded image with its (H, W, 3) or (H, W) uint8 array and provenance.

    Raises:
        InvalidInputError: ``empty_image`` (no bytes, zero size) or ``corrupt_image``.
        PayloadTooLargeError: ``image_too_large`` (bytes) or ``image_too_many_pixels``.
        UnsupportedMediaError: ``unsupported_image_format`` or ``unsupported_image_mode``.
        RuntimeError: Pillow's ``ImageFile.LOAD_TRUNCATED_IMAGES`` was switched on.
    """
    _require_strict_pillow()
    limits = _process_limits(limits)
    _check_bytes(data, limits)
    budget = pixel_budget.current()
    with _open_header(data, limits) as img:
        _check_pixels(img.size, limits)
        source_format = "JPEG" if img.format == "MPO" else str(img.format)
        original_mode = img.mode
        bit_depth = _bit_depth(img)
        reserved: AbstractContextManager[None] = (
            budget.reserve(img.size[0] * img.size[1]) if budget else nullcontext()
        )
        with reserved:
            _load(img, limits)
            _check_pixels(img.size, limits)
            upright, orientation_applied = _apply_orientation(img)
            array = _to_uint8(upright, limits.output_mode)
            del upright
    return DecodedImage(
        array=array,
        width=int(array.shape[1]),
        height=int(array.shape[0]),
        format=source_format,
        original_mode=original_mode,
        bit_depth=bit_depth,
        orientation_applied=orientation_applied,
    )


def _process_limits(limits: ImageLimits) -> ImageLimits:
    """``limits`` tightened to this process's pixel cap (``shared.imaging.budget``)."""
    budget = pixel_budget.current()
    if budget is None or budget.bounds.max_pixels >= limits.max_pixels:
        return limits
    return replace(limits, max_pixels=budget.bounds.max_pixels)


def _require_strict_pillow() -> None:
    # A process-wide switch some libraries flip; with it on, cut-off uploads decode as
    # grey-padded images and reach the model. Refuse loudly rather than flip it back.
    if ImageFile.LOAD_TRUNCATED_IMAGES:
        raise RuntimeError("PIL.ImageFile.LOAD_TRUNCATED_IMAGES is True; refusing to decode")


def _check_bytes(data: bytes, limits: ImageLimits) -> None:
    if not data:
        raise InvalidInputError("the image is empty (0 bytes)", code="empty_image")
    if len(data) > limits.max_bytes:
        raise PayloadTooLargeError(
            f"the image is {len(data)} bytes; the limit is {limits.max_bytes}",
            code="image_too_large",
        )


def _pillow_open() -> Callable[..., ImageFile.ImageFile]:
    # ultralytics replaces PIL.Image.open on import with a wrapper that, on unidentified
    # input, tries to pip-install a HEIF plugin. Untrusted uploads must only ever reach
    # Pillow's own function, whatever was imported before us.
    opener = Image.open
    if getattr(opener, "__module__", "") != "PIL.Image":
        patches = sys.modules.get("ultralytics.utils.patches")
        opener = getattr(patches, "_image_open", opener)
    return opener  # type: ignore[return-value]


def _open_header(data: bytes, limits: ImageLimits) -> ImageFile.ImageFile:
    # Image.open reads the header only; pixels are decoded later by load().
    try:
        return _pillow_open()(io.BytesIO(data), formats=list(limits.allowed_formats))
    except (Image.DecompressionBombError, Image.DecompressionBombWarning) as exc:
        _raise_bomb(limits, exc)
    except UnidentifiedImageError as exc:
        if any(_claims_format(data, name) for name in limits.allowed_formats):
            raise InvalidInputError(
                "the image header is damaged or declares an empty image", code="corrupt_image"
            ) from exc
        names = ", ".join(limits.allowed_formats)
        raise UnsupportedMediaError(
            f"not an accepted image format (accepted: {names})", code="unsupported_image_format"
        ) from exc
    except MemoryError:
        raise
    except Exception as exc:  # Pillow raises many types on hostile headers.
        raise InvalidInputError("the image header is corrupt", code="corrupt_image") from exc


def _claims_format(data: bytes, name: str) -> bool:
    if name == "WEBP":
        return data[:4] == b"RIFF" and data[8:12] == b"WEBP"
    return data.startswith(_SIGNATURES.get(name, ()))


def _check_pixels(size: tuple[int, int], limits: ImageLimits) -> None:
    width, height = size
    if width <= 0 or height <= 0:
        raise InvalidInputError(f"the image is {width}x{height} pixels", code="empty_image")
    if width * height > limits.max_pixels:
        _raise_too_many_pixels(
            f"the image is {width}x{height} = {width * height} pixels; "
            f"the limit is {limits.max_pixels}",
            None,
        )


def _raise_too_many_pixels(message: str, cause: BaseException | None) -> NoReturn:
    raise PayloadTooLargeError(message, code="image_too_many_pixels") from cause


def _raise_bomb(limits: ImageLimits, exc: BaseException) -> NoReturn:
    # Pillow's own message names its limit (MAX_IMAGE_PIXELS), not the one configured here.
    _raise_too_many_pixels(
        f"the image declares more pixels than Pillow decodes; the limit is {limits.max_pixels}",
        exc,
    )


def _bit_depth(img: ImageFile.ImageFile) -> int:
    if img.mode == "1":
        return 1
    if img.mode.startswith("I;16"):
        return 16
    if img.mode in ("I", "F"):
        return 32
    # 48/64-bit PNG and TIFF open as 8-bit RGB(A); only the decoder's raw mode tells.
    return 16 if ";16" in _raw_mode(img) else 8


def _raw_mode(img: ImageFile.ImageFile) -> str:
    if not img.tile:
        return ""
    args = img.tile[0].args
    if isinstance(args, str):
        return args
    if isinstance(args, tuple) and args and isinstance(args[0], str):
        return args[0]
    return ""


def _load(img: Image.Image, limits: ImageLimits) -> None:
    try:
        img.load()
    except (Image.DecompressionBombError, Image.DecompressionBombWarning) as exc:
        _raise_bomb(limits, exc)
    except MemoryError:
        raise
    except Exception as exc:
        raise InvalidInputError(
            "the image data is truncated or corrupt", code="corrupt_image"
        ) from exc


def _apply_orientation(img: Image.Image) -> tuple[Image.Image, bool]:
    # Malformed EXIF is common in camera files and harmless: treat it as "upright".
    try:
        orientation = img.getexif().get(ExifTags.Base.Orientation, 1)
    except Exception:
        return img, False
    if orientation not in range(2, 9):
        return img, False
    return ImageOps.exif_transpose(img), True


def _to_uint8(img: Image.Image, output_mode: OutputMode) -> npt.NDArray[np.uint8]:
    if img.mode in _HIGH_DEPTH_MODES:
        gray = _high_depth_to_uint8(img)
    elif img.mode in _GRAY_MODES:
        gray = np.array(img.convert("L"), dtype=np.uint8)
    else:
        rgb = _convert(img, "RGB")
        converted = rgb.convert("L") if output_mode == "gray" else rgb
        return np.ascontiguousarray(np.array(converted, dtype=np.uint8))
    if output_mode == "gray":
        return np.ascontiguousarray(gray)
    return np.repeat(gray[:, :, np.newaxis], 3, axis=2)


def _high_depth_to_uint8(img: Image.Image) -> npt.NDArray[np.uint8]:
    values = np.asarray(img)
    if img.mode == "F":
        scaled = np.nan_to_num(values.astype(np.float64), nan=0.0, posinf=255.0, neginf=0.0)
        return np.clip(np.rint(scaled), 0, 255).astype(np.uint8)
    wide = np.clip(values.astype(np.int64), 0, 65535)
    return (wide >> 8).astype(np.uint8)


def _convert(img: Image.Image, mode: str) -> Image.Image:
    try:
        return img.convert(mode)
    except ValueError as exc:
        raise UnsupportedMediaError(
            f"image mode {img.mode} cannot be converted to {mode}", code="unsupported_image_mode"
        ) from exc
