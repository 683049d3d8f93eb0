"""Bounded decoding (issue 15, finding 4): per-service pixel cap, in-flight pixel budget
answering 503 + Retry-After, the configured limit named in every 413."""

from __future__ import annotations

import io
import threading
from pathlib import Path

import pytest
from fastapi import FastAPI, Request
from fastapi.testclient import TestClient
from PIL import Image

from shared.config import CommonSettings, HttpSettings, PathSettings, StorageSettings
from shared.errors import PayloadTooLargeError, UnavailableError
from shared.http.app import create_service_app
from shared.http.state import http_state
from shared.imaging import budget as pixel_budget
from shared.imaging.budget import DecodeBounds, PixelBudget
from shared.imaging.intake import ImageLimits, decode_image


def _png(width: int, height: int) -> bytes:
    out = io.BytesIO()
    Image.new("L", (width, height)).save(out, format="PNG", optimize=True)
    return out.getvalue()


def _app(tmp_path: Path, service: str, **http: object) -> FastAPI:
    settings = CommonSettings(
        paths=PathSettings(home=tmp_path),
        storage=StorageSettings(backend="file"),
        http=HttpSettings(**http),  # type: ignore[arg-type]
    )
    app = create_service_app(service=service, settings=settings, lifespan=None)

    @app.post("/v1/decode")
    async def decode(request: Request) -> dict[str, int]:
        image = decode_image(await request.body(), ImageLimits(max_pixels=60_000_000))
        return {"width": image.width}

    return app


def test_a_small_file_with_49_mpx_is_refused_by_the_detector_cap(tmp_path: Path) -> None:
    # given finding 4's file: 7000x7000 px in a few KB, under the global 60 Mpx cap
    data = _png(7000, 7000)
    assert len(data) < 100_000
    client = TestClient(_app(tmp_path, "inference"))
    # when it is sent to the inference API, then its own cap refuses it, named
    response = client.post("/v1/decode", content=data)
    assert response.status_code == 413
    assert "16000000" in response.json()["detail"]


def test_a_service_without_its_own_cap_keeps_the_global_one(tmp_path: Path) -> None:
    client = TestClient(_app(tmp_path, "finetune"))
    assert client.post("/v1/decode", content=_png(5000, 4000)).status_code == 200


def test_the_global_cap_bounds_a_looser_service_entry() -> None:
    http = HttpSettings(max_image_pixels=1000, service_max_image_pixels={"x": 10**9})
    assert http.image_pixel_cap("x") == 1000


def test_a_full_budget_answers_503_with_retry_after(tmp_path: Path) -> None:
    # given an app whose budget is held by other decodes
    app = _app(tmp_path, "inference", decode_budget_pixels=20_000_000)
    client = TestClient(app)
    budget: PixelBudget = http_state(app).pixel_budget
    with budget.reserve(15_000_000):
        # when one more image does not fit
        response = client.post("/v1/decode", content=_png(3000, 3000))
    # then 503 + Retry-After, and after the burst the same image passes
    assert response.status_code == 503
    assert response.json()["code"] == "decode_budget_full"
    assert response.headers["retry-after"] == "1"
    assert client.post("/v1/decode", content=_png(3000, 3000)).status_code == 200
    assert budget.in_flight == 0


def test_the_budget_is_released_after_a_failed_decode() -> None:
    budget = PixelBudget(DecodeBounds(max_pixels=100, budget_pixels=100))
    with pytest.raises(RuntimeError), budget.reserve(60):
        raise RuntimeError("decoder crashed")
    assert budget.in_flight == 0
    with budget.reserve(100):
        assert budget.in_flight == 100


def test_concurrent_reservations_never_exceed_the_budget() -> None:
    budget = PixelBudget(DecodeBounds(max_pixels=10, budget_pixels=30))
    peak, refused, lock = [0], [0], threading.Lock()
    gate = threading.Barrier(8)

    def work() -> None:
        gate.wait()
        try:
            with budget.reserve(10):
                with lock:
                    peak[0] = max(peak[0], budget.in_flight)
                gate_hold.wait(timeout=5)
        except UnavailableError:
            with lock:
                refused[0] += 1

    gate_hold = threading.Event()
    threads = [threading.Thread(target=work) for _ in range(8)]
    for t in threads:
        t.start()
    threading.Timer(0.5, gate_hold.set).start()
    for t in threads:
        t.join(timeout=10)
    assert peak[0] <= 30
    assert refused[0] == 5


def test_decoding_outside_a_request_is_bounded_only_by_its_limits() -> None:
    assert pixel_budget.current() is None
    assert decode_image(_png(5000, 4000), ImageLimits(max_pixels=60_000_000)).width == 5000


def test_above_pillows_own_limit_the_413_names_the_configured_limit(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    # given Pillow's bomb limit below the image (as for > 179 Mpx with the defaults)
    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", 1_000_000)
    limits = ImageLimits(max_pixels=500_000)
    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", 100_000)
    with pytest.raises(PayloadTooLargeError) as caught:
        decode_image(_png(1000, 1000), limits)
    # then the message names our limit, not Pillow's
    assert "500000" in caught.value.message
    assert "100000" not in caught.value.message.replace("500000", "")


def test_memory_is_returned_when_the_last_decode_of_a_big_burst_ends(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    trims: list[int] = []
    monkeypatch.setattr(pixel_budget, "release_free_memory", lambda: trims.append(1) or True)
    budget = PixelBudget(DecodeBounds(max_pixels=10_000_000, budget_pixels=20_000_000))
    with budget.reserve(100):
        pass
    assert trims == []  # a small burst is not worth a trim
    with budget.reserve(3_000_000), budget.reserve(3_000_000):
        pass
    assert trims == [1]  # one trim, when the last decode of the burst ended
