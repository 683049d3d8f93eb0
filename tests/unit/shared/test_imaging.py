"""Image intake (decode_image) refuses every bad upload and normalises every good one."""

from __future__ import annotations

import io
import struct
import zlib

import cv2
import numpy as np
import pytest
from PIL import ExifTags, Image, ImageFile

from shared.errors import InvalidInputError, PayloadTooLargeError, UnsupportedMediaError
from shared.imaging.intake import DecodedImage, ImageLimits, decode_image
from shared.imaging.render import (
    encode_png,
    heatmap_overlay,
    normalise_for_display,
    render_heatmap_overlay,
)

LIMITS = ImageLimits()


def _encode(img: Image.Image, fmt: str, **params: object) -> bytes:
    buffer = io.BytesIO()
    img.save(buffer, fmt, **params)
    return buffer.getvalue()


def _noise(height: int = 32, width: int = 48) -> np.ndarray:
    return np.random.default_rng(0).integers(0, 256, (height, width, 3), dtype=np.uint8)


def _png_declaring(width: int, height: int) -> bytes:
    """A valid 1x1 PNG whose IHDR (with a recomputed CRC) claims another size."""
    data = bytearray(_encode(Image.new("L", (1, 1)), "PNG"))
    data[16:24] = struct.pack(">II", width, height)
    data[29:33] = struct.pack(">I", zlib.crc32(bytes(data[12:29])))
    return bytes(data)


def _refusal(data: bytes, limits: ImageLimits = LIMITS) -> InvalidInputError:
    with pytest.raises(InvalidInputError) as excinfo:
        decode_image(data, limits)
    return excinfo.value


@pytest.fixture
def load_calls(monkeypatch: pytest.MonkeyPatch) -> list[object]:
    """Records every ImageFile.load call, i.e. every attempt to decode pixels."""
    calls: list[object] = []
    original = ImageFile.ImageFile.load

    def spy(self: ImageFile.ImageFile) -> object:
        calls.append(self)
        return original(self)

    monkeypatch.setattr(ImageFile.ImageFile, "load", spy)
    return calls


# --- refusals -------------------------------------------------------------------------------


def test_empty_body_is_refused() -> None:
    # given / when
    error = _refusal(b"")
    # then
    assert (type(error), error.code, error.http_status) == (InvalidInputError, "empty_image", 422)


def test_random_bytes_are_an_unsupported_format() -> None:
    # given
    data = np.random.default_rng(1).integers(0, 256, 4096, dtype=np.uint8).tobytes()
    # when
    error = _refusal(data)
    # then
    assert (type(error), error.code) == (UnsupportedMediaError, "unsupported_image_format")


@pytest.mark.parametrize(("fmt", "keep"), [("JPEG", 0.5), ("PNG", 0.5)])
def test_truncated_image_is_corrupt(fmt: str, keep: float) -> None:
    # given
    data = _encode(Image.fromarray(_noise()), fmt)
    # when
    error = _refusal(data[: int(len(data) * keep)])
    # then
    assert (type(error), error.code, error.http_status) == (InvalidInputError, "corrupt_image", 422)


def test_damaged_header_of_an_accepted_format_is_corrupt() -> None:
    # given: a PNG signature followed by garbage
    data = b"\x89PNG\r\n\x1a\n" + b"\x00" * 64
    # when
    error = _refusal(data)
    # then
    assert (type(error), error.code) == (InvalidInputError, "corrupt_image")


def test_zero_size_image_is_refused() -> None:
    # given: Pillow itself refuses a 0x0 header, which the signature marks as a damaged PNG
    data = _png_declaring(0, 0)
    # when
    error = _refusal(data)
    # then
    assert (type(error), error.code, error.http_status) == (InvalidInputError, "corrupt_image", 422)


@pytest.mark.parametrize("fmt", ["GIF", "WEBP"])
def test_format_outside_the_allow_list_is_refused(fmt: str) -> None:
    # given
    data = _encode(Image.fromarray(_noise()), fmt)
    # when
    error = _refusal(data)
    # then
    assert (type(error), error.code, error.http_status) == (
        UnsupportedMediaError,
        "unsupported_image_format",
        415,
    )


def test_fits_file_never_reaches_pillows_fits_plugin() -> None:
    # given: a minimal FITS primary header (the CVE-2026-40192 format)
    cards = [
        "SIMPLE  =                    T",
        "BITPIX  =                    8",
        "NAXIS   =   0",
        "END",
    ]
    data = "".join(card.ljust(80) for card in cards).ljust(2880).encode("ascii")
    # when
    error = _refusal(data)
    # then
    assert (type(error), error.code) == (UnsupportedMediaError, "unsupported_image_format")


def test_opted_in_webp_is_accepted() -> None:
    # given
    limits = ImageLimits(allowed_formats=("PNG", "WEBP"))
    data = _encode(Image.fromarray(_noise()), "WEBP", lossless=True)
    # when
    decoded = decode_image(data, limits)
    # then
    assert np.array_equal(decoded.array, _noise())


def test_more_bytes_than_the_cap_are_refused() -> None:
    # given
    data = _encode(Image.fromarray(_noise()), "PNG")
    # when
    error = _refusal(data, ImageLimits(max_bytes=len(data) - 1))
    # then
    assert (type(error), error.code, error.http_status) == (
        PayloadTooLargeError,
        "image_too_large",
        413,
    )


def test_pixel_cap_refuses_from_the_header_before_decoding(load_calls: list[object]) -> None:
    # given: 6000x6000 declared, only one pixel of data, cap 1 MP
    data = _png_declaring(6000, 6000)
    # when
    error = _refusal(data, ImageLimits(max_pixels=1_000_000))
    # then
    assert (type(error), error.code, load_calls) == (
        PayloadTooLargeError,
        "image_too_many_pixels",
        [],
    )


def test_header_claiming_50000x50000_is_refused_before_decoding(load_calls: list[object]) -> None:
    # given: far beyond Pillow's own decompression-bomb error threshold
    data = _png_declaring(50_000, 50_000)
    # when
    error = _refusal(data)
    # then
    assert (type(error), error.code, load_calls) == (
        PayloadTooLargeError,
        "image_too_many_pixels",
        [],
    )


@pytest.mark.filterwarnings("error::PIL.Image.DecompressionBombWarning")
def test_pillow_bomb_warning_raised_as_error_maps_to_the_pixel_code() -> None:
    # given: 100 MP is in Pillow's warning band, escalated to an error by the filter above
    data = _png_declaring(10_000, 10_000)
    # when
    error = _refusal(data)
    # then
    assert (type(error), error.code) == (PayloadTooLargeError, "image_too_many_pixels")


def test_load_truncated_images_switched_on_is_refused(monkeypatch: pytest.MonkeyPatch) -> None:
    # given
    monkeypatch.setattr(ImageFile, "LOAD_TRUNCATED_IMAGES", True)
    data = _encode(Image.fromarray(_noise()), "PNG")
    # when / then
    with pytest.raises(RuntimeError, match="LOAD_TRUNCATED_IMAGES"):
        decode_image(data, LIMITS)


@pytest.mark.parametrize(
    "kwargs",
    [{"max_pixels": 10**9}, {"allowed_formats": ("PNG", "FITS")}, {"allowed_formats": ()}],
)
def test_unsafe_limits_are_refused_at_construction(kwargs: dict[str, object]) -> None:
    # given / when / then
    with pytest.raises(ValueError, match=r"max_pixels|allowed_formats"):
        ImageLimits(**kwargs)  # type: ignore[arg-type]


# --- accepted images ------------------------------------------------------------------------


def test_rgb_png_decodes_to_an_exact_owned_contiguous_array() -> None:
    # given
    pixels = _noise()
    # when
    decoded = decode_image(_encode(Image.fromarray(pixels), "PNG"), LIMITS)
    # then
    assert np.array_equal(decoded.array, pixels)
    assert decoded.array.flags.c_contiguous
    assert decoded.array.flags.writeable
    assert (decoded.width, decoded.height, decoded.format, decoded.bit_depth) == (48, 32, "PNG", 8)


@pytest.mark.parametrize(
    "mode", ["1", "L", "LA", "P", "PA", "RGB", "RGBA", "CMYK", "I", "F", "I;16", "I;16B"]
)
def test_every_mode_normalises_to_rgb_uint8(mode: str) -> None:
    # given
    data = _encode(Image.new(mode, (5, 3)), "TIFF")
    # when
    decoded = decode_image(data, LIMITS)
    # then
    assert (decoded.array.shape, decoded.array.dtype.str, decoded.original_mode) == (
        (3, 5, 3),
        "|u1",
        mode,
    )
    assert decoded.array.flags.c_contiguous


@pytest.mark.parametrize(("mode", "fmt"), [("I;16", "PNG"), ("I;16B", "TIFF")])
def test_16_bit_gray_keeps_the_high_byte(mode: str, fmt: str) -> None:
    # given
    values = np.array([0, 255, 256, 4660, 65535], dtype=">u2" if mode == "I;16B" else "<u2")
    img = Image.frombytes(mode, (5, 1), values.tobytes())
    # when
    decoded = decode_image(_encode(img, fmt), LIMITS)
    # then
    assert decoded.array[0, :, 0].tolist() == [0, 0, 1, 18, 255]
    assert decoded.bit_depth == 16


def test_48_bit_rgb_png_keeps_the_high_byte_and_reports_16_bits() -> None:
    # given: OpenCV writes BGR, so channel order is reversed
    bgr = np.zeros((2, 2, 3), dtype=np.uint16)
    bgr[..., 2], bgr[..., 1], bgr[..., 0] = 65535, 100 * 256 + 200, 511
    data = cv2.imencode(".png", bgr)[1].tobytes()
    # when
    decoded = decode_image(data, LIMITS)
    # then
    assert (decoded.array[0, 0].tolist(), decoded.bit_depth) == ([255, 100, 1], 16)


def test_32_bit_integer_image_is_clipped_to_16_bits_then_scaled() -> None:
    # given
    img = Image.fromarray(np.array([[-5, 512, 70_000]], dtype=np.int32))
    # when
    decoded = decode_image(_encode(img, "TIFF"), LIMITS)
    # then
    assert (decoded.array[0, :, 0].tolist(), decoded.bit_depth) == ([0, 2, 255], 32)


def test_float_image_is_read_on_the_0_to_255_scale() -> None:
    # given
    img = Image.fromarray(np.array([[-1.0, 127.6, 300.0, np.nan]], dtype=np.float32))
    # when
    decoded = decode_image(_encode(img, "TIFF"), LIMITS)
    # then
    assert decoded.array[0, :, 0].tolist() == [0, 128, 255, 0]


def test_gray_is_replicated_to_three_channels() -> None:
    # given
    gray = _noise()[..., 0]
    # when
    decoded = decode_image(_encode(Image.fromarray(gray), "PNG"), LIMITS)
    # then
    assert all(np.array_equal(decoded.array[..., c], gray) for c in range(3))


def test_alpha_is_dropped_not_composited() -> None:
    # given: fully transparent pixels still carry their colour
    img = Image.new("RGBA", (4, 4), (10, 20, 30, 0))
    # when
    decoded = decode_image(_encode(img, "PNG"), LIMITS)
    # then
    assert decoded.array[0, 0].tolist() == [10, 20, 30]


def test_palette_indices_become_palette_colours() -> None:
    # given
    img = Image.new("P", (2, 1))
    img.putpalette([255, 0, 0, 0, 0, 255])
    img.putpixel((1, 0), 1)
    # when
    decoded = decode_image(_encode(img, "PNG"), LIMITS)
    # then
    assert decoded.array[0].tolist() == [[255, 0, 0], [0, 0, 255]]


def test_bilevel_image_becomes_0_and_255() -> None:
    # given
    img = Image.new("1", (2, 1))
    img.putpixel((1, 0), 1)
    # when
    decoded = decode_image(_encode(img, "PNG"), LIMITS)
    # then
    assert (decoded.array[0, :, 0].tolist(), decoded.bit_depth) == ([0, 255], 1)


def test_cmyk_jpeg_becomes_rgb() -> None:
    # given: pure magenta + yellow ink is red
    img = Image.new("CMYK", (16, 16), (0, 255, 255, 0))
    # when
    decoded = decode_image(_encode(img, "JPEG", quality=95), LIMITS)
    # then
    assert decoded.original_mode == "CMYK"
    assert np.abs(decoded.array[8, 8].astype(int) - [255, 0, 0]).max() <= 8


@pytest.mark.parametrize("fmt", ["BMP", "TIFF"])
def test_bmp_and_tiff_are_accepted(fmt: str) -> None:
    # given
    pixels = _noise()
    # when
    decoded = decode_image(_encode(Image.fromarray(pixels), fmt), LIMITS)
    # then
    assert (decoded.format, np.array_equal(decoded.array, pixels)) == (fmt, True)


def test_multi_frame_tiff_gives_its_first_frame() -> None:
    # given
    first, second = Image.new("RGB", (4, 4), (255, 0, 0)), Image.new("RGB", (4, 4), (0, 255, 0))
    data = _encode(first, "TIFF", save_all=True, append_images=[second])
    # when
    decoded = decode_image(data, LIMITS)
    # then
    assert decoded.array[0, 0].tolist() == [255, 0, 0]


def test_exif_orientation_6_rotates_90_degrees_clockwise() -> None:
    # given: 40x20 stored, red block top-left; orientation 6 = rotate 90 CW for display
    img = Image.new("RGB", (40, 20), (0, 0, 255))
    img.paste((255, 0, 0), (0, 0, 10, 10))
    exif = Image.Exif()
    exif[ExifTags.Base.Orientation] = 6
    # when
    decoded = decode_image(_encode(img, "JPEG", quality=95, exif=exif), LIMITS)
    # then: upright is 20 wide, 40 high, and the block is now top-right
    assert (decoded.width, decoded.height, decoded.orientation_applied) == (20, 40, True)
    assert decoded.array[3, 16, 0] > 200
    assert decoded.array[3, 3, 2] > 200


def test_image_without_exif_is_not_reoriented() -> None:
    # given / when
    decoded = decode_image(_encode(Image.fromarray(_noise()), "JPEG"), LIMITS)
    # then
    assert (decoded.width, decoded.height, decoded.orientation_applied) == (48, 32, False)


def test_gray_output_mode_gives_luma_planes() -> None:
    # given
    img = Image.new("RGB", (4, 2), (255, 0, 0))
    # when
    decoded = decode_image(_encode(img, "PNG"), ImageLimits(output_mode="gray"))
    # then: ITU-R 601-2 luma of pure red
    assert (decoded.array.shape, int(decoded.array[0, 0])) == ((2, 4), 76)


# --- rendering ------------------------------------------------------------------------------


def test_encode_png_round_trips_through_decode() -> None:
    # given
    pixels = _noise()
    # when
    decoded: DecodedImage = decode_image(encode_png(pixels), LIMITS)
    # then
    assert np.array_equal(decoded.array, pixels)


def test_encode_png_refuses_float_arrays() -> None:
    # given / when / then
    with pytest.raises(ValueError, match="uint8"):
        encode_png(np.zeros((2, 2, 3), dtype=np.float32))


def test_display_normalisation_is_per_image_min_max() -> None:
    # given
    scores = np.array([[3.0, 5.0], [4.0, np.nan]])
    # when
    normalised = normalise_for_display(scores)
    # then
    assert normalised.tolist() == [[0.0, 1.0], [0.5, 0.0]]


def test_heatmap_is_resized_and_hot_spot_shows_red() -> None:
    # given: a 4x4 map with one hot cell top-left, over a 64x64 black image
    scores = np.zeros((4, 4), dtype=np.float32)
    scores[0, 0] = 7.0
    image = np.zeros((64, 64, 3), dtype=np.uint8)
    # when
    overlay = heatmap_overlay(image, scores, alpha=1.0)
    # then: JET's top is dark red, its bottom dark blue
    assert (overlay.shape, overlay[0, 0].tolist(), overlay[63, 63].tolist()) == (
        (64, 64, 3),
        [128, 0, 0],
        [0, 0, 128],
    )


def test_alpha_zero_leaves_the_image_unchanged() -> None:
    # given
    image = _noise()
    # when
    overlay = heatmap_overlay(image, np.random.default_rng(2).random((7, 5)), alpha=0.0)
    # then
    assert np.array_equal(overlay, image)


def test_rendered_overlay_is_a_png_of_the_image_size() -> None:
    # given
    image = _noise()
    # when
    data = render_heatmap_overlay(image, np.random.default_rng(3).random((8, 8)))
    # then
    decoded = decode_image(data, LIMITS)
    assert (decoded.format, decoded.array.shape) == ("PNG", image.shape)


def test_intake_bypasses_ultralytics_patched_image_open() -> None:
    # given ultralytics imported (it wraps PIL.Image.open with a pip-installing fallback)
    import ultralytics.utils.patches  # noqa: F401

    data = np.random.default_rng(2).integers(0, 256, 4096, dtype=np.uint8).tobytes()
    # when / then the plain refusal still comes from Pillow's own open
    error = _refusal(data)
    assert (type(error), error.code) == (UnsupportedMediaError, "unsupported_image_format")


def test_a_stored_object_that_fails_to_decode_is_named_with_its_code() -> None:
    from shared.errors import InvalidInputError
    from shared.imaging.intake import ImageLimits, decode_object

    limits = ImageLimits(max_bytes=1_000_000, max_pixels=1_000_000)
    with pytest.raises(InvalidInputError) as caught:
        decode_object(b"\x89PNG\r\n\x1a\nbroken", limits, "lines/steel/img_0042.png")
    assert caught.value.message.startswith("lines/steel/img_0042.png: ")
    assert caught.value.code in ("corrupt_image", "unsupported_media_type")
