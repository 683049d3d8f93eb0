"""Every bad-image case of the intake gets a clear 4xx over real HTTP through uvicorn, and the
server keeps serving afterwards (chunked uploads included)."""

from __future__ import annotations

import io
import struct
import threading
import time
import zlib
from collections.abc import Iterator
from pathlib import Path

import httpx
import numpy as np
import pytest
import uvicorn
from fastapi import FastAPI, Request
from PIL import Image

from shared.config import CommonSettings, HttpSettings, PathSettings, StorageSettings
from shared.http.app import create_service_app
from shared.http.body import read_limited
from shared.imaging.intake import ImageLimits, decode_image
from tests.servers import free_port

pytestmark = pytest.mark.timeout(120)
MAX_BODY = 2 * 2**20


def _encode(img: Image.Image, fmt: str) -> bytes:
    buffer = io.BytesIO()
    img.save(buffer, fmt)
    return buffer.getvalue()


def _png_declaring(width: int, height: int) -> bytes:
    data = bytearray(_encode(Image.new("L", (1, 1)), "PNG"))
    data[16:24] = struct.pack(">II", width, height)
    data[29:33] = struct.pack(">I", zlib.crc32(bytes(data[12:29])))
    return bytes(data)


def _app(tmp: Path) -> FastAPI:
    settings = CommonSettings(
        paths=PathSettings(home=tmp),
        storage=StorageSettings(backend="file"),
        http=HttpSettings(max_body_mb=MAX_BODY / 2**20),
    )
    app = create_service_app(service="intake-probe", settings=settings, lifespan=None)
    limits = ImageLimits(max_bytes=MAX_BODY, max_pixels=4_000_000)

    @app.post("/v1/probe")
    async def probe(request: Request) -> dict[str, object]:
        decoded = decode_image(await read_limited(request.stream(), MAX_BODY), limits)
        return {"shape": list(decoded.array.shape), "format": decoded.format}

    return app


@pytest.fixture(scope="module")
def base_url(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    port = free_port()
    server = uvicorn.Server(
        uvicorn.Config(
            _app(tmp_path_factory.mktemp("home")), host="127.0.0.1", port=port, log_level="warning"
        )
    )
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    deadline = time.monotonic() + 30
    while not server.started and time.monotonic() < deadline:
        time.sleep(0.05)
    yield f"http://127.0.0.1:{port}"
    server.should_exit = True
    thread.join(timeout=10)


GOOD = _encode(Image.fromarray(np.full((20, 30, 3), 128, np.uint8)), "PNG")
JPEG = _encode(Image.fromarray(np.full((20, 30, 3), 90, np.uint8)), "JPEG")
CASES = {
    "empty": (b"", 422, "empty_image"),
    "random_bytes": (bytes(range(256)) * 4, 415, "unsupported_image_format"),
    "truncated_jpeg": (JPEG[: len(JPEG) // 2], 422, "corrupt_image"),
    "truncated_png": (GOOD[: len(GOOD) // 2], 422, "corrupt_image"),
    "gif": (_encode(Image.new("P", (8, 8)), "GIF"), 415, "unsupported_image_format"),
    "webp": (_encode(Image.new("RGB", (8, 8)), "WEBP"), 415, "unsupported_image_format"),
    "pixel_bomb_header": (_png_declaring(50_000, 50_000), 413, "image_too_many_pixels"),
    "over_byte_cap": (b"\x89PNG" + b"0" * (MAX_BODY + 10), 413, "payload_too_large"),
}


@pytest.mark.parametrize("case", sorted(CASES))
def test_bad_image_gets_4xx_with_code_and_server_keeps_serving(base_url: str, case: str) -> None:
    # given
    body, status, code = CASES[case]
    # when
    bad = httpx.post(f"{base_url}/v1/probe", content=body, timeout=20)
    good = httpx.post(f"{base_url}/v1/probe", content=GOOD, timeout=20)
    # then
    assert (bad.status_code, bad.json()["code"]) == (status, code)
    assert bad.json()["request_id"]
    assert good.status_code == 200
    assert good.json() == {"shape": [20, 30, 3], "format": "PNG"}


def test_chunked_upload_over_the_cap_is_413(base_url: str) -> None:
    # given a body without Content-Length, sent in chunks
    def chunks() -> Iterator[bytes]:
        for _ in range(40):
            yield b"\x00" * 65536  # 2.5 MiB in all

    # when
    response = httpx.post(f"{base_url}/v1/probe", content=chunks(), timeout=20)
    # then
    assert response.status_code == 413
    assert httpx.get(f"{base_url}/healthz", timeout=5).status_code == 200
