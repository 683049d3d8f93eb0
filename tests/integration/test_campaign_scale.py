"""The campaign's plant-scale cases (issue 24), on the pipeline API served by ``agssp serve``
over real HTTP, with moto's S3 server and redis-server:

* 20 concurrent 60 MB uploads answer only 201 or 503 (with ``Retry-After``), every 201 is
  stored whole, no multipart upload is left open, and the API's peak RSS stays bounded;
* a request whose headers never end, and one whose body stops, are closed by the server;
* an uploaded ``.html`` comes back as a download that may not be sniffed;
* ten simultaneous resumes of a failed pipeline start it once (one 200, nine 409).
"""

from __future__ import annotations

import socket
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import httpx
import pytest

from services.pipeline.params import PipelineRequest
from services.pipeline.stores.pipelines import PipelineRecord, PipelineState, PipelineStore
from services.pipeline.usecases.steps import plan
from shared.jobs.store import new_job_id
from shared.storage.factory import create_store
from tests.integration.suite import Proc, SuiteEnv, start_api, suite_env
from tests.servers import ServerHandle

pytestmark = pytest.mark.timeout(300)
MB = 2**20
UPLOAD_MB, UPLOADS = 60, 20
RSS_BOUND_MB = 700  # before streaming: 2,467 MB after 20 concurrent 60 MB uploads


@dataclass
class Pipeline:
    url: str
    proc: Proc
    senv: SuiteEnv


def _serve(
    tmp: Path, redis_server: ServerHandle, s3_server: ServerHandle, **env: str
) -> Iterator[Pipeline]:
    senv = suite_env(
        tmp, redis_url=f"redis://127.0.0.1:{redis_server.port}/0", s3_url=s3_server.url
    )
    senv.env.update({
        "PIPELINE_DRIVER": "false", "S3_TIMEOUT_S": "30", "HTTP_MAX_BODY_MB": str(UPLOAD_MB + 4),
        **env,
    })  # fmt: skip
    proc, url = start_api(senv, tmp, "pipeline")
    try:
        yield Pipeline(url, proc, senv)
    finally:
        proc.stop()


@pytest.fixture(scope="module")
def pipeline(
    tmp_path_factory: pytest.TempPathFactory, redis_server: ServerHandle, s3_server: ServerHandle
) -> Iterator[Pipeline]:
    """The pipeline API with the default slow-client limits (30 s headers, 60 s body pause)."""
    yield from _serve(tmp_path_factory.mktemp("scale"), redis_server, s3_server)


@pytest.fixture(scope="module")
def impatient(
    tmp_path_factory: pytest.TempPathFactory, redis_server: ServerHandle, s3_server: ServerHandle
) -> Iterator[Pipeline]:
    """The same API with 1 s limits, so the slow-client test waits seconds, not half a minute
    (under the load test, 1 s would cut clients that are merely starved of CPU)."""
    yield from _serve(
        tmp_path_factory.mktemp("impatient"), redis_server, s3_server,
        HTTP_HEADER_TIMEOUT_S="1", HTTP_BODY_IDLE_S="1",
    )  # fmt: skip


def _peak_rss_mb(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) / 1024
    raise AssertionError("no VmHWM in /proc status")


def test_concurrent_large_uploads_get_201_or_503_with_bounded_memory(pipeline: Pipeline) -> None:
    body = bytes(range(256)) * (UPLOAD_MB * MB // 256)

    def send(index: int) -> httpx.Response:
        with httpx.Client(timeout=120) as client:
            return client.put(f"{pipeline.url}/v1/uploads/big/{index}.bin", content=body)

    with ThreadPoolExecutor(UPLOADS) as pool:
        answers = list(pool.map(send, range(UPLOADS)))
    statuses = sorted({a.status_code for a in answers})
    assert set(statuses) <= {201, 503}, [a.text[:200] for a in answers if a.status_code >= 400]
    assert 201 in statuses
    for answer in answers:
        if answer.status_code == 503:
            assert int(answer.headers["retry-after"]) >= 1
    store = create_store(pipeline.senv.settings)
    stored = [a.json()["key"] for a in answers if a.status_code == 201]
    assert all(store.size(key) == len(body) for key in stored)
    client = getattr(store, "client", None)
    if client is not None:  # S3: nothing half-uploaded left behind
        bucket = pipeline.senv.settings.s3.bucket
        assert list(client._list_multipart_uploads(bucket).uploads) == []
    assert _peak_rss_mb(pipeline.proc.popen.pid) < RSS_BOUND_MB


def _closed_within(sock: socket.socket, seconds: float) -> bool:
    sock.settimeout(seconds)
    try:
        while sock.recv(4096):
            pass
        return True
    except (TimeoutError, ConnectionResetError):
        return False


def test_half_sent_requests_are_closed_by_the_server(impatient: Pipeline) -> None:
    host, port = impatient.url.removeprefix("http://").split(":")
    with socket.create_connection((host, int(port))) as headers_only:
        headers_only.sendall(b"PUT /v1/uploads/slow.bin HTTP/1.1\r\nHost: x\r\n")
        with socket.create_connection((host, int(port))) as half_body:
            half_body.sendall(
                b"PUT /v1/uploads/slow.bin HTTP/1.1\r\nHost: x\r\nContent-Length: 1000\r\n\r\nab"
            )
            started = time.monotonic()
            assert _closed_within(headers_only, 10)
            assert _closed_within(half_body, 10)
    assert time.monotonic() - started < 10
    assert httpx.get(f"{impatient.url}/healthz", timeout=10).status_code == 200


def test_an_uploaded_page_comes_back_as_an_attachment(pipeline: Pipeline) -> None:
    page = b"<html><script>document.title='owned'</script></html>"
    put = httpx.put(f"{pipeline.url}/v1/uploads/x/page.html", content=page, timeout=30)
    assert put.status_code == 201
    got = httpx.get(f"{pipeline.url}/v1/objects/uploads/x/page.html", timeout=30)
    assert got.content == page
    assert got.headers["content-disposition"].startswith("attachment")
    assert got.headers["x-content-type-options"] == "nosniff"


def test_ten_concurrent_resumes_give_one_200(pipeline: Pipeline) -> None:
    # given a failed pipeline in the store
    store = create_store(pipeline.senv.settings)
    store.put_bytes("lines/a.png", b"x")
    store.put_bytes("labelled/images/a.png", b"x")
    request = PipelineRequest.model_validate({
        "name": "steel-det", "category": "steel", "unlabelled_prefix": "lines/",
        "labelled": {"prefix": "labelled/", "format": "yolo"},
    })  # fmt: skip
    record = PipelineRecord(id=new_job_id(), request=request, steps=plan(request))
    record.state = PipelineState.FAILED
    PipelineStore(store).save(record)
    # when ten clients resume it at once
    url = f"{pipeline.url}/v1/pipelines/{record.id}/resume"
    with ThreadPoolExecutor(10) as pool:
        codes = sorted(pool.map(lambda _: httpx.post(url, timeout=30).status_code, range(10)))
    # then one started it and nine were told it runs
    assert codes == [200] + [409] * 9
