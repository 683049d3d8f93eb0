"""The inference API under uvicorn on moto S3: serving, hot swaps under load, stage polling,
bad input over a real socket, and the bench client."""

from __future__ import annotations

import io
import threading
import time
from dataclasses import dataclass

import httpx
import numpy as np
import pytest
from PIL import Image
from typer.testing import CliRunner

from benchmarks.loadgen import bench_app, run_load
from tests.integration.inference.support import Exports, Publish, Serve
from tests.integration.suite import wait_for

pytestmark = pytest.mark.timeout(240)

THREADS, PER_THREAD = 8, 25
SWAP_AFTER = 40  # answers before v2 is promoted and a reload forced


def _jpeg(width: int = 320, height: int = 240) -> bytes:
    rng = np.random.default_rng(0)
    out = io.BytesIO()
    Image.fromarray(rng.integers(0, 256, (height, width, 3), dtype=np.uint8)).save(out, "JPEG")
    return out.getvalue()


PICTURE = _jpeg()


def _detect(client: httpx.Client, url: str) -> httpx.Response:
    return client.post(f"{url}/detect", content=PICTURE, headers={"content-type": "image/jpeg"})


@dataclass(frozen=True)
class Answer:
    started: float
    status: int
    version: str | None


def _load(url: str, answers: list[Answer], lock: threading.Lock) -> None:
    with httpx.Client(timeout=60) as client:
        for _ in range(PER_THREAD):
            started = time.monotonic()
            response = _detect(client, url)
            version = response.json()["model"]["version"] if response.status_code == 200 else None
            answer = Answer(started, response.status_code, version)
            with lock:
                answers.append(answer)


def test_a_promoted_version_is_swapped_in_under_load_without_failed_requests(
    serve: Serve, publish: Publish, exports: Exports
) -> None:
    # given v1 in production, served, and 8 clients sending 25 requests each
    publish("v1", exports.v1)
    proc, url = serve(max_batch_size="4")
    answers: list[Answer] = []
    lock = threading.Lock()
    clients = [threading.Thread(target=_load, args=(url, answers, lock)) for _ in range(THREADS)]
    for client in clients:
        client.start()

    # when v2 is promoted part-way through and a reload is forced
    wait_for(lambda: len(answers) >= SWAP_AFTER, 120, f"no load reached the API:\n{proc.tail()}")
    publish("v2", exports.v2)
    reload = httpx.post(f"{url}/v1/models/reload", timeout=60)
    swapped_at = time.monotonic()
    for client in clients:
        client.join(180)

    # then no request failed, both versions answered, and everything sent later got v2
    assert reload.json()["followed"]["version"] == "v2"
    assert len(answers) == THREADS * PER_THREAD
    assert {a.status for a in answers} == {200}
    assert {a.version for a in answers} == {"v1", "v2"}
    later = [a.version for a in answers if a.started > swapped_at]
    assert later
    assert set(later) == {"v2"}


def test_the_poller_follows_the_stage_without_a_reload(
    serve: Serve, publish: Publish, exports: Exports
) -> None:
    # given a server polling every half second
    publish("v1", exports.v1)
    proc, url = serve(poll_interval_s="0.5")
    with httpx.Client(timeout=30) as client:
        assert _detect(client, url).json()["model"]["version"] == "v1"

        # when v2 is promoted
        publish("v2", exports.v2)

        # then the answers switch to v2 on their own
        wait_for(
            lambda: _detect(client, url).json()["model"]["version"] == "v2",
            60,
            f"the poller never swapped:\n{proc.tail()}",
        )


def test_bad_input_over_a_real_socket_gets_4xx_and_the_server_keeps_serving(
    serve: Serve, publish: Publish, exports: Exports
) -> None:
    # given a 1 MiB image cap
    publish("v1", exports.v1)
    _, url = serve(max_image_mb="1")
    huge = iter([b"\xff\xd8\xff" + b"\0" * (1 << 20)] * 3)  # chunked: no Content-Length

    with httpx.Client(timeout=30) as client:
        # when
        too_big = client.post(
            f"{url}/v1/detect", content=huge, headers={"content-type": "image/jpeg"}
        )
        corrupt = client.post(
            f"{url}/v1/detect",
            content=b"\xff\xd8\xff garbage",
            headers={"content-type": "image/jpeg"},
        )
        unknown = client.post(
            f"{url}/v1/detect",
            params={"version": "v9"},
            content=PICTURE,
            headers={"content-type": "image/jpeg"},
        )
        fine = _detect(client, url)

    # then
    assert (too_big.status_code, too_big.json()["code"]) == (413, "payload_too_large")
    assert (corrupt.status_code, corrupt.json()["code"]) == (422, "corrupt_image")
    assert (unknown.status_code, unknown.json()["code"]) == (404, "model_version_not_found")
    assert fine.status_code == 200


def test_the_bench_client_measures_a_live_server(
    serve: Serve, publish: Publish, exports: Exports
) -> None:
    # given
    publish("v1", exports.v1)
    _, url = serve()

    # when
    report = run_load(
        f"{url}/v1/detect", PICTURE, "image/jpeg", concurrency=4, max_requests=20, duration_s=60
    )
    printed = CliRunner().invoke(
        bench_app, ["detect", "--url", url, "--synthetic", "320x240", "--requests", "8"]
    )

    # then
    assert (report.requests, report.ok, report.errors) == (20, 20, {})
    assert report.throughput_rps > 0
    assert report.latency_ms["p50"] <= report.latency_ms["p99"]
    assert printed.exit_code == 0, printed.output
    assert "8 ok" in printed.output
    assert "errors       none" in printed.output
