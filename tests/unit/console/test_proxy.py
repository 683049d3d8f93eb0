"""The console's same-origin proxy: what it forwards, what it refuses, upstream failures."""

from __future__ import annotations

from collections.abc import AsyncIterator

import httpx
import pytest
from fastapi.testclient import TestClient

from services.console import proxy
from tests.unit.console.conftest import Upstream

UPSTREAMS = {"anomaly_map": "http://maps:1", "inference": "http://inference:4"}


def test_a_call_reaches_the_service_with_method_path_query_body_and_key(
    client: TestClient, upstream: Upstream
) -> None:
    # given an upstream that answers with a score header
    upstream.handler = lambda request: httpx.Response(
        201,
        content=b"\x93NUMPY",
        headers={"content-type": "application/x-npy", "x-image-score": "0.7"},
    )
    # when
    answer = client.post(
        "/api/anomaly_map/v1/anomaly-maps?category=steel&tile=256&tile=512",
        content=b"PNGDATA",
        headers={
            "content-type": "image/png",
            "x-api-key": "agssp_secret",
            "cookie": "session=1",
            "accept": "application/x-npy",
        },
    )
    # then
    (sent,) = upstream.seen
    assert sent.method == "POST"
    assert (
        str(sent.url)
        == "http://maps.internal:9001/v1/anomaly-maps?category=steel&tile=256&tile=512"
    )
    assert sent.content == b"PNGDATA"
    assert sent.headers["x-api-key"] == "agssp_secret"
    assert sent.headers["accept"] == "application/x-npy"
    assert "cookie" not in sent.headers
    assert answer.status_code == 201
    assert answer.content == b"\x93NUMPY"
    assert answer.headers["x-image-score"] == "0.7"


def test_a_stored_page_stays_a_download_on_the_consoles_origin(
    client: TestClient, upstream: Upstream
) -> None:
    # given an API serving an uploaded .html as an attachment (and forgetting nosniff)
    upstream.handler = lambda request: httpx.Response(
        200,
        content=b"<script>alert(1)</script>",
        headers={
            "content-type": "text/html",
            "content-disposition": 'attachment; filename="x.html"',
            "content-security-policy": "sandbox",
        },
    )
    # when the browser fetches it through the proxy
    answer = client.get("/api/anomaly_map/v1/objects/uploads/x.html")
    # then the disposition and policy survive, and the console adds nosniff itself
    assert answer.headers["content-disposition"] == 'attachment; filename="x.html"'
    assert answer.headers["content-security-policy"] == "sandbox"
    assert answer.headers["x-content-type-options"] == "nosniff"


def test_large_bodies_stream_through_both_ways(client: TestClient, upstream: Upstream) -> None:
    # given an upstream answering with a body made of many chunks
    size, chunk = 24 * 2**20, bytes(range(256)) * 4096

    async def chunks() -> AsyncIterator[bytes]:
        for _ in range(size // len(chunk)):
            yield chunk

    upstream.handler = lambda request: httpx.Response(
        200, content=chunks(), headers={"content-type": "application/octet-stream"}
    )
    # when a client uploads a large body and downloads one
    body = b"z" * (8 * 2**20)
    answer = client.put("/api/anomaly_map/v1/objects/x.bin", content=body)
    # then the upload went upstream as a stream (chunked, no buffered length) and whole,
    # and the download came back whole
    (sent,) = upstream.seen
    assert sent.headers.get("transfer-encoding") == "chunked"
    assert sent.content == body
    assert answer.status_code == 200
    assert len(answer.content) == size
    assert answer.content[:1024] == chunk[:1024]


def test_upstream_errors_come_back_as_they_are(client: TestClient, upstream: Upstream) -> None:
    # given
    upstream.handler = lambda request: httpx.Response(
        422, json={"detail": "too long", "code": "prompt_too_long"}
    )
    # when
    answer = client.put("/api/anomaly_map/v1/categories/tile", json={"map": "x"})
    # then
    assert answer.status_code == 422
    assert answer.json()["code"] == "prompt_too_long"


def test_a_trailing_slash_in_the_base_url_is_not_doubled(
    client: TestClient, upstream: Upstream
) -> None:
    # when
    client.get("/api/finetune/v1/models", headers={"authorization": "Bearer k"})
    # then
    (sent,) = upstream.seen
    assert str(sent.url) == "http://finetune.internal:9003/v1/models"
    assert sent.headers["authorization"] == "Bearer k"


@pytest.mark.parametrize(
    ("path", "status", "code"),
    [
        ("/api/minio/v1/x", 404, "unknown_service"),
        ("/api/anomaly_map/docs", 422, "bad_proxy_path"),
        ("/api/anomaly_map/metrics", 422, "bad_proxy_path"),
        ("/api/anomaly_map/v1/..%2F..%2Fadmin", 422, "bad_proxy_path"),
        ("/api/anomaly_map/v1//jobs", 422, "bad_proxy_path"),
    ],
)
def test_only_api_routes_of_known_services_are_reachable(
    client: TestClient, upstream: Upstream, path: str, status: int, code: str
) -> None:
    # when
    answer = client.get(path)
    # then
    assert answer.status_code == status
    assert answer.json()["code"] == code
    assert upstream.seen == []


@pytest.mark.parametrize(
    ("path", "ok"),
    [
        ("v1/jobs", True),
        ("v1/models/steel-det/versions/v1/promote", True),
        ("detect", True),
        ("readyz", True),
        ("v1/../../etc", False),
        ("v1/a b", False),
        ("openapi.json", False),
    ],
)
def test_target_url_accepts_api_paths_only(path: str, ok: bool) -> None:
    # when / then
    if ok:
        assert proxy.target_url(UPSTREAMS, "inference", path) == f"http://inference:4/{path}"
    else:
        with pytest.raises(proxy.InvalidInputError):
            proxy.target_url(UPSTREAMS, "inference", path)


def test_an_unreachable_service_is_a_502_naming_it(client: TestClient, upstream: Upstream) -> None:
    # given
    def refuse(request: httpx.Request) -> httpx.Response:
        raise httpx.ConnectError("connection refused", request=request)

    upstream.handler = refuse
    # when
    answer = client.get("/api/anomaly_map/v1/categories")
    # then
    assert answer.status_code == 502
    assert answer.json()["code"] == "upstream_unavailable"
    assert "the anomaly_map API is not reachable" in answer.json()["detail"]


def test_a_slow_service_is_a_504(client: TestClient, upstream: Upstream) -> None:
    # given
    def stall(request: httpx.Request) -> httpx.Response:
        raise httpx.ReadTimeout("timed out", request=request)

    upstream.handler = stall
    # when
    answer = client.get("/api/anomaly_map/v1/jobs")
    # then
    assert answer.status_code == 504
    assert answer.json()["code"] == "upstream_timeout"
    assert "the anomaly_map API did not answer in time" in answer.json()["detail"]
    # and the console keeps serving
    assert client.get("/healthz").status_code == 200
