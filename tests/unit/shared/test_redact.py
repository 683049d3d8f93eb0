"""Error bodies and job records name the object, never the store's address, its bucket or a
server's absolute paths; the logs keep the full message."""

from __future__ import annotations

import logging
from pathlib import Path

import pytest
from fastapi import FastAPI
from fastapi.testclient import TestClient

from shared.errors import InvalidInputError, UnavailableError
from shared.http.errors import install_error_handlers
from shared.jobs.context import JobContext
from shared.jobs.runner import RunnerOptions, run_job
from shared.jobs.store import JobStore
from shared.redact import public_text
from shared.schemas.jobs import JobState
from shared.storage.filesystem import FileObjectStore

pytestmark = pytest.mark.unit
LEAKY = (
    "init weights /srv/agssp/models/yolov8n.pt are outside AGSSP_MODEL_DIR=/srv/agssp/models; "
    "get uploads/a.png at S3 endpoint http://10.0.3.7:9000 (bucket 'plant-7'): no such object"
)


@pytest.mark.parametrize(
    ("text", "public"),
    [
        ("object 'uploads/a.png' not found", "object 'uploads/a.png' not found"),
        ("no file /root/models/clip.pt", "no file …/clip.pt"),
        ("at http://minio:9000/agssp failed", "at <address> failed"),
        ("stat x (bucket 'agssp'): gone", "stat x: gone"),
        ("POST /v1/detect needs an image", "POST /v1/detect needs an image"),
        ("ratio 3/4 of images", "ratio 3/4 of images"),
    ],
)
def test_public_text_keeps_keys_and_routes_and_drops_addresses(text: str, public: str) -> None:
    assert public_text(text) == public


def test_a_4xx_body_names_the_object_not_the_server(caplog: pytest.LogCaptureFixture) -> None:
    # given a route whose error message carries paths, an endpoint and a bucket
    app = FastAPI()
    install_error_handlers(app)

    @app.get("/boom")
    def boom() -> None:
        raise InvalidInputError(LEAKY, code="init_weights_outside_model_dir")

    # when
    with caplog.at_level(logging.INFO), TestClient(app) as client:
        body = client.get("/boom").json()
    # then
    detail = body["detail"]
    assert body["code"] == "init_weights_outside_model_dir"
    for secret in ("/srv/agssp", "10.0.3.7", "9000", "plant-7"):
        assert secret not in detail
    assert "…/yolov8n.pt" in detail
    assert "uploads/a.png" in detail
    assert "10.0.3.7" in caplog.text  # the operator still sees where


def test_a_failed_jobs_record_is_as_quiet_as_an_http_body(tmp_path: Path) -> None:
    # given a job that fails with a leaky storage message
    jobs = JobStore(FileObjectStore(tmp_path / "store"))
    job_id = jobs.create(kind="selftest", task_name="t", queue="default", params={}).id

    def handler(ctx: JobContext) -> list[str]:
        raise UnavailableError(LEAKY, code="storage_access_denied")

    # when
    opts = RunnerOptions(worker="w1", lease_ttl_s=30, heartbeat_s=5, max_attempts=3)
    record = run_job(job_id, jobs, handler, opts)
    # then
    assert record.state == JobState.FAILED
    assert record.error is not None
    assert "10.0.3.7" not in record.error
    assert "/srv/agssp" not in record.error
    assert "uploads/a.png" in record.error
