"""Local copies of store objects for training: downloaded once, read every epoch.

``prefetch`` copies a job's images and maps into a per-job cache folder (threads; a file that
exists is complete because every write is atomic, so a resumed job skips it) and checks each
file up front. On a local-folder store the "copy" is a hard link (``get_file_for_reading``):
nothing in the cache is ever written in place. ``CachedPairSource`` is the ``PairSource`` AGBP
trains on; it reads only local files, so DataLoader worker processes never share a network
client.
"""

from __future__ import annotations

import functools
import io
import math
from collections.abc import Callable, Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import numpy as np
from numpy.typing import NDArray
from PIL import Image

from services.pretrain.stores.maps import Pair
from shared.errors import InvalidInputError, JobCanceledError
from shared.imaging.intake import ImageLimits, decode_object
from shared.storage.base import ObjectStore, validate_key

HEADER_PROBE_BYTES = 64 * 1024
_NPY_MAGIC = b"\x93NUMPY"
_NPY_MAX_HEADER = 10_000  # numpy's own limit on a header it parses
PREFETCH_BATCH = 256
_EXIF_ORIENTATION = 0x0112
_ROTATED = frozenset({5, 6, 7, 8})  # orientations that swap width and height


def load_map(data: bytes, key: str) -> NDArray[np.float32]:
    """A (G, G) float32 map, C-ordered and writable, from ``.npy`` bytes (no pickles).

    Raises:
        InvalidInputError: not a finite, non-empty 2-D float array (code 'bad_map').
    """
    amap = _fast_npy(data)
    if amap is None:  # another .npy version, or not a .npy at all: numpy decides
        try:
            amap = np.load(io.BytesIO(data), allow_pickle=False)
        except (ValueError, OSError, EOFError) as exc:
            raise InvalidInputError(
                f"map {key} is not a .npy array: {exc}", code="bad_map"
            ) from exc
    if (
        not isinstance(amap, np.ndarray)
        or amap.ndim != 2
        or amap.size == 0
        or not np.issubdtype(amap.dtype, np.floating)
        or not np.isfinite(amap).all()
    ):
        shape = getattr(amap, "shape", None)
        raise InvalidInputError(
            f"map {key} must be a finite 2-D float array, got {shape} {getattr(amap, 'dtype', '')}",
            code="bad_map",
        )
    return np.array(amap, dtype=np.float32, order="C")  # a copy: frombuffer's is read-only


def _fast_npy(data: bytes) -> NDArray[Any] | None:
    """The array of a version 1 or 2 ``.npy`` (a read-only view of ``data``), else None.

    Every map of a job has the same header, and ``np.load`` spends most of its time parsing
    it (``ast.literal_eval``), so numpy's parse is cached by the header's bytes. Anything
    else (object dtypes, which are pickles; long headers; a body of the wrong length) gives
    None, and ``np.load`` decides on it as before.
    """
    if data[:6] != _NPY_MAGIC or data[6:7] not in (b"\x01", b"\x02"):
        return None
    width = 2 if data[6] == 1 else 4
    start = 8 + width
    length = int.from_bytes(data[8:start], "little")
    if length > _NPY_MAX_HEADER:  # numpy refuses these itself; never keep one in the cache
        return None
    end = start + length
    parsed = _npy_header(data[6], data[:end])
    if parsed is None:
        return None
    shape, fortran, dtype = parsed
    count = math.prod(shape)
    if dtype.hasobject or len(data) - end != count * dtype.itemsize:
        return None
    flat = np.frombuffer(data, dtype=dtype, count=count, offset=end)
    return flat.reshape(shape[::-1]).T if fortran else flat.reshape(shape)


@functools.lru_cache(maxsize=64)
def _npy_header(major: int, head: bytes) -> tuple[tuple[int, ...], bool, np.dtype[Any]] | None:
    """numpy's own parse of a ``.npy`` header (magic string to the end of the header)."""
    stream = io.BytesIO(head)
    read = (
        np.lib.format.read_array_header_1_0 if major == 1 else np.lib.format.read_array_header_2_0
    )
    try:
        np.lib.format.read_magic(stream)
        shape, fortran, dtype = read(stream)
    except (ValueError, OSError, EOFError):
        return None
    return tuple(int(n) for n in shape), bool(fortran), np.dtype(dtype)


def image_size_from_header(data: bytes, limits: ImageLimits) -> tuple[int, int] | None:
    """(width, height) of the upright image from its header; None when unreadable.

    ``decode_image`` applies the EXIF orientation, so maps computed from decoded images
    describe the upright image and boxes must be sized the same way. A PNG's orientation is
    read from its chunk list (``png_orientation``): Pillow's ``getexif`` decodes the whole
    image to look for an eXIf chunk after the pixels, about 0.8 ms a file of 256 x 256.
    """
    try:
        with Image.open(io.BytesIO(data), formats=limits.allowed_formats) as img:
            width, height = img.size
            if img.format == "PNG":
                orientation = png_orientation(data)
            else:
                orientation = img.getexif().get(_EXIF_ORIENTATION, 1)
    except Exception:  # any parse failure of a (possibly cut) header means "not readable"
        return None
    if orientation is None:  # cut before the PNG's end: the caller reads the whole file
        return None
    return (height, width) if orientation in _ROTATED else (width, height)


_PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"


def png_orientation(data: bytes) -> int | None:
    """The EXIF orientation of a PNG from its chunks, pixels not decoded: that of its eXIf
    chunk (before or after the image data), 1 when it reaches IEND without one, None when
    ``data`` ends first (a header probe of a larger file)."""
    offset = len(_PNG_SIGNATURE)
    while offset + 8 <= len(data):
        length = int.from_bytes(data[offset : offset + 4], "big")
        kind = data[offset + 4 : offset + 8]
        end = offset + 12 + length  # length, type, data, CRC
        if kind == b"IEND":
            return 1
        if kind == b"eXIf":
            if end > len(data):
                return None
            exif = Image.Exif()
            exif.load(data[offset + 8 : offset + 8 + length])
            return int(exif.get(_EXIF_ORIENTATION, 1))
        offset = end
    return None


def read_image_size(store: ObjectStore, key: str, limits: ImageLimits) -> tuple[int, int]:
    """Image size from the first bytes of the object; the whole object only if needed.

    Raises:
        InvalidInputError: not an image of an allowed format (code 'bad_image').
    """
    chunks = store.iter_chunks(key, chunk_size=HEADER_PROBE_BYTES)
    try:
        head = next(chunks, b"")
        size = image_size_from_header(head, limits)
        if size is None:  # the header is longer than the probe (e.g. a large EXIF block)
            size = image_size_from_header(head + b"".join(chunks), limits)
    finally:
        _close(chunks)
    if size is None:
        raise InvalidInputError(
            f"{key} is not a readable image ({', '.join(limits.allowed_formats)})",
            code="bad_image",
        )
    return size


def _close(chunks: Iterator[bytes]) -> None:
    close = getattr(chunks, "close", None)  # generators release their connection on close
    if close is not None:
        close()


class CachedPairSource:
    """``PairSource`` over local copies: image (H, W, 3) uint8 RGB, map (G, G), label."""

    def __init__(self, pairs: Sequence[Pair], root: Path, limits: ImageLimits) -> None:
        self.pairs = list(pairs)
        self.root = root
        self.limits = limits

    def path(self, key: str) -> Path:
        """Local copy of ``key`` (keys never hold '..', so it stays inside ``root``)."""
        return self.root / validate_key(key)

    def __len__(self) -> int:
        return len(self.pairs)

    def __getitem__(self, index: int) -> tuple[NDArray[np.uint8], NDArray[np.float32], int]:
        pair = self.pairs[index]
        data = self.path(pair.image_key).read_bytes()
        image = decode_object(data, self.limits, pair.image_key).array
        amap = load_map(self.path(pair.map_key).read_bytes(), pair.map_key)
        return image, amap, pair.label


def prefetch(
    store: ObjectStore,
    source: CachedPairSource,
    *,
    threads: int,
    on_progress: Callable[[int, int], None],
    should_stop: Callable[[], bool],
) -> None:
    """Download every missing file of ``source`` and check all of them.

    Args:
        store: where the keys live.
        source: its ``root`` receives the copies.
        threads: concurrent downloads.
        on_progress: ``(files done, total)`` after each batch.
        should_stop: checked between batches.

    Raises:
        JobCanceledError: ``should_stop`` said so.
        InvalidInputError: some files are not usable (code 'bad_data'), all listed by count
            with the first few named.
    """
    work = [(p.image_key, True) for p in source.pairs] + [(p.map_key, False) for p in source.pairs]
    problems: list[str] = []

    def fetch(item: tuple[str, bool]) -> str | None:
        key, is_image = item
        path = source.path(key)
        try:
            if not path.is_file():
                store.get_file_for_reading(key, path)  # a hard link on a local store
            _check_file(path, key, is_image, source.limits)
        except InvalidInputError as exc:
            return exc.message
        return None

    with ThreadPoolExecutor(max_workers=max(threads, 1)) as pool:
        for start in range(0, len(work), PREFETCH_BATCH):
            if should_stop():
                raise JobCanceledError("canceled while caching the training data")
            batch = work[start : start + PREFETCH_BATCH]
            problems.extend(p for p in pool.map(fetch, batch) if p)
            on_progress(start + len(batch), len(work))
    if problems:
        shown = "; ".join(problems[:5])
        raise InvalidInputError(f"{len(problems)} unusable files, e.g. {shown}", code="bad_data")


def _check_file(path: Path, key: str, is_image: bool, limits: ImageLimits) -> None:
    if not is_image:
        load_map(path.read_bytes(), key)
        return
    if path.stat().st_size > limits.max_bytes:
        raise InvalidInputError(f"{key} is larger than {limits.max_bytes} bytes")
    with path.open("rb") as handle:
        size = image_size_from_header(handle.read(HEADER_PROBE_BYTES), limits)
    if size is None:
        size = image_size_from_header(path.read_bytes(), limits)
    if size is None:
        raise InvalidInputError(f"{key} is not a readable image")
    if size[0] * size[1] > limits.max_pixels:
        raise InvalidInputError(f"{key} has {size[0]}x{size[1]} pixels, over the cap")
