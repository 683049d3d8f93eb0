"""The reliability and security campaign of issue 15, bounded to minutes, in the test suite.

A production-like set-up: real redis-server, moto's S3 server over HTTP, three scoped API
keys (admin, train, camera), all four APIs (anomaly maps on a tiny random-init CLIP,
inference on a published random-init YOLOv8n) and one worker on every queue. Then:

* schemathesis against each service's ``/openapi.json`` with the admin and the camera key:
  0 server errors and 0 schema violations (response schema, status code, content type);
* the malformed-image and JSON-bomb set: every case answered 4xx with a ``code``, the
  service still serving;
* jobs lost: every job the campaign submitted ends in a terminal state or is being worked
  on; none is PENDING and forgotten.

Counts (requests, 5xx, schema failures, jobs lost) are written to ``$AGSSP_CAMPAIGN_REPORT``
when set, and printed.
"""

from __future__ import annotations

import io
import json
import os
import shutil
import subprocess
import sys
import zlib
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
import pytest

from shared.http.auth import create_key
from shared.jobs.store import JobStore
from shared.schemas.jobs import JobState
from shared.storage.artifacts import ArtifactStore
from shared.storage.factory import create_store
from tests.integration.suite import (
    ROOT,
    Proc,
    SuiteEnv,
    start_worker,
    suite_env,
    wait_for,
)
from tests.servers import ServerHandle, free_port

pytestmark = pytest.mark.timeout(420)
SERVICES = ("anomaly_map", "pretrain", "finetune", "inference")
CHECKS = "not_a_server_error,response_schema_conformance,status_code_conformance,"
CHECKS += "content_type_conformance"
MAX_EXAMPLES = os.environ.get("AGSSP_CAMPAIGN_EXAMPLES", "10")
MODEL = "campaign-detector"


@dataclass
class Campaign:
    """The running suite and the counts gathered by the tests."""

    urls: dict[str, str]
    keys: dict[str, str]
    senv: SuiteEnv
    procs: list[Proc]
    counts: dict[str, int] = field(
        default_factory=lambda: {"requests": 0, "5xx": 0, "schema_failures": 0, "jobs_lost": 0}
    )
    failures: list[str] = field(default_factory=list)


def _schemathesis() -> str:
    found = shutil.which("st", path=str(Path(sys.executable).parent)) or shutil.which("st")
    if found is None:
        pytest.skip("schemathesis is not installed (pip install schemathesis)")
    return found


def _publish_detector(senv: SuiteEnv, out: Path) -> None:
    pytest.importorskip("onnx", reason="the campaign exports a detector to ONNX")
    from ultralytics.models.yolo.model import YOLO

    model: Any = YOLO("yolov8n.yaml")
    model.model.pt_path = str(out / "detector.pt")
    onnx = Path(model.export(format="onnx", imgsz=160, dynamic=True, simplify=False))
    artifacts = ArtifactStore(create_store(senv.settings))
    classes = json.dumps([f"class{i}" for i in range(80)]).encode()
    artifacts.publish(MODEL, {"model.onnx": onnx, "classes.json": classes}, version="v1")
    artifacts.promote(MODEL, "v1", "production")


def _env(tmp: Path, redis: ServerHandle, s3: ServerHandle) -> tuple[SuiteEnv, dict[str, str]]:
    senv = suite_env(tmp, redis_url=f"redis://127.0.0.1:{redis.port}/0", s3_url=s3.url)
    keys, entries = {}, []
    for name, scope in (("admin", "admin"), ("train", "train"), ("camera", "inspect")):
        keys[name], entry = create_key(f"campaign-{name}", [scope])
        entries.append(entry)
    senv.env.update(
        {
            "AUTH_API_KEYS": json.dumps(entries),
            "ANOMALY_MAP_CLIP_MODEL": "tiny-vit",
            "ANOMALY_MAP_ALLOW_RANDOM_WEIGHTS": "true",
            "ANOMALY_MAP_DEVICE": "cpu",
            "ANOMALY_MAP_EXTRA_MODEL_CONFIG_DIR": str(ROOT / "tests" / "fixtures"),
            "ANOMALY_MAP_MAX_BATCH_SIZE": "2",
            "INFERENCE_MODEL_NAME": MODEL,
            "INFERENCE_INTRA_OP_THREADS": "1",
            "HTTP_MAX_BODY_MB": "4",
            "OMP_NUM_THREADS": "1",
            "MKL_NUM_THREADS": "1",
            "TRAINING_THREADS": "1",
        }
    )
    return senv, keys


@pytest.fixture(scope="module")
def campaign(
    tmp_path_factory: pytest.TempPathFactory, redis_server: ServerHandle, s3_server: ServerHandle
) -> Iterator[Campaign]:
    _schemathesis()
    tmp = tmp_path_factory.mktemp("campaign")
    senv, keys = _env(tmp, redis_server, s3_server)
    _publish_detector(senv, tmp)
    procs: list[Proc] = []
    urls: dict[str, str] = {}
    try:
        procs.append(start_worker(senv, tmp, ["maps", "pretrain", "finetune", "default"], "cw"))
        started = [_start_api(senv, tmp, service) for service in SERVICES]  # all at once
        for service, (proc, url) in zip(SERVICES, started, strict=True):
            procs.append(proc)
            urls[service] = url
            wait_for(lambda url=url: _healthy(url), 180, lambda p=proc: f"no API:\n{p.tail()}")
        result = Campaign(urls, keys, senv, procs)
        yield result
    finally:
        for proc in procs:
            proc.stop()
    _report(result)


def _start_api(senv: SuiteEnv, tmp: Path, service: str) -> tuple[Proc, str]:
    port = free_port()
    argv = [sys.executable, "-m", "agssp.main", "serve", service, "--port", str(port)]
    return Proc(argv, senv.env, tmp / f"api-{service}.log"), f"http://127.0.0.1:{port}"


def _healthy(url: str) -> bool:
    try:
        return httpx.get(f"{url}/healthz", timeout=2).status_code == 200
    except httpx.HTTPError:
        return False


def _report(result: Campaign) -> None:
    text = json.dumps({"counts": result.counts, "failures": result.failures[:50]}, indent=1)
    print(f"\ncampaign: {text}")
    target = os.environ.get("AGSSP_CAMPAIGN_REPORT")
    if target:
        Path(target).write_text(text)


def _run_schemathesis(url: str, key: str, admin: str, report: Path) -> dict[str, Any]:
    # The schema is read with the admin key (it is not open); the run uses ``key``.
    schema = report.with_name("openapi.json")
    answer = httpx.get(f"{url}/openapi.json", headers={"X-API-Key": admin}, timeout=30)
    answer.raise_for_status()
    schema.write_bytes(answer.content)
    argv = [
        _schemathesis(),
        "run",
        str(schema),
        "--url",
        url,
        "--checks",
        CHECKS,
        "--max-examples",
        MAX_EXAMPLES,
        "--phases",
        "examples,coverage,fuzzing",
        "--header",
        f"X-API-Key: {key}",
        "--report-json-path",
        str(report),
        "--seed",
        "15",
        "--no-shrink",
        "--request-timeout",
        "60",
        "--suppress-health-check",
        "all",
    ]
    done = subprocess.run(argv, capture_output=True, text=True, timeout=300, check=False)
    if not report.is_file():
        raise AssertionError(f"schemathesis wrote no report:\n{done.stdout[-4000:]}")
    data: dict[str, Any] = json.loads(report.read_text())
    data["_stdout"] = done.stdout
    return data


def _describe(failure: Any) -> str:
    return json.dumps(failure, default=str)[:600]


@pytest.mark.parametrize("key", ["admin", "camera"])
@pytest.mark.parametrize("service", SERVICES)
def test_schemathesis_finds_no_server_error_and_no_schema_violation(
    campaign: Campaign, service: str, key: str, tmp_path: Path
) -> None:
    # given a service of the running suite and a key, when schemathesis runs against it
    url, keys = campaign.urls[service], campaign.keys
    data = _run_schemathesis(url, keys[key], keys["admin"], tmp_path / "r.json")
    failures = list(data.get("failures", []))
    errors = list(data.get("errors", []))
    campaign.counts["requests"] += int(data["test_cases"]["generated"])
    for failure in failures:  # grouped by kind; ``count`` = operations that failed so
        kind = "5xx" if "ServerError" in str(failure.get("type")) else "schema_failures"
        campaign.counts[kind] += int(failure.get("count", 1))
    campaign.failures += [f"{service}/{key}: {_describe(f)}" for f in failures]
    # then nothing failed
    assert not errors, f"schemathesis errors: {errors[:3]}"
    assert failures == [], "\n".join(_describe(f) for f in failures[:10]) + data["_stdout"][-3000:]


def _png_declaring(width: int, height: int) -> bytes:
    def chunk(kind: bytes, body: bytes) -> bytes:
        crc = zlib.crc32(kind + body).to_bytes(4, "big")
        return len(body).to_bytes(4, "big") + kind + body + crc

    header = width.to_bytes(4, "big") + height.to_bytes(4, "big") + b"\x08\x02\x00\x00\x00"
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header) + chunk(b"IEND", b"")


def _small_png_of(width: int, height: int) -> bytes:
    from PIL import Image

    out = io.BytesIO()
    Image.new("L", (width, height)).save(out, format="PNG", optimize=True)
    return out.getvalue()


BAD_IMAGES: dict[str, bytes] = {
    "empty": b"",
    "text": b"hello, not an image",
    "truncated_png": _png_declaring(64, 64)[:30],
    "header_only_png": _png_declaring(64, 64),
    "pixel_bomb_header": _png_declaring(50_000, 50_000),
    "jpeg_magic_only": b"\xff\xd8\xff" + b"\x00" * 64,
    "gif_magic_only": b"GIF89a" + b"\x00" * 32,
}

JSON_BOMBS: dict[str, bytes] = {
    "deep_arrays": b"[" * 1000 + b"]" * 1000,
    "deep_objects": b'{"a":' * 1000 + b"1" + b"}" * 1000,
    "many_keys": json.dumps({f"k{i}": i for i in range(50_000)}).encode(),
    "huge_string": json.dumps({"spec": "x" * 3_000_000}).encode(),
    "not_json": b"{'single': quotes}",
    "nan_config": b'{"sources": [], "config": {"lr": NaN}}',
}

JSON_ROUTES = {
    "anomaly_map": ("PUT", "/v1/categories/bomb", "admin"),
    "pretrain": ("POST", "/v1/pretrain-jobs", "train"),
    "finetune": ("POST", "/v1/evaluations", "train"),
}


def _assert_4xx_and_serving(response: httpx.Response, url: str, case: str) -> None:
    assert 400 <= response.status_code < 500, (case, response.status_code, response.text[:300])
    assert response.json().get("code"), (case, response.text[:300])
    assert len(response.content) < 20_000, (case, len(response.content))
    assert httpx.get(f"{url}/healthz", timeout=10).status_code == 200


@pytest.mark.parametrize("case", sorted(BAD_IMAGES))
def test_malformed_images_get_a_4xx_with_a_code(campaign: Campaign, case: str) -> None:
    for service, path in (("inference", "/detect"), ("anomaly_map", "/v1/anomaly-maps")):
        url = campaign.urls[service]
        response = httpx.post(
            f"{url}{path}",
            content=BAD_IMAGES[case],
            headers={"content-type": "image/png", "X-API-Key": campaign.keys["camera"]},
            timeout=60,
        )
        campaign.counts["requests"] += 1
        campaign.counts["5xx"] += response.status_code >= 500
        _assert_4xx_and_serving(response, url, f"{service}:{case}")


def test_a_small_file_declaring_49_mpx_is_refused_by_the_detector(campaign: Campaign) -> None:
    url = campaign.urls["inference"]
    response = httpx.post(
        f"{url}/detect",
        content=_small_png_of(7000, 7000),
        headers={"content-type": "image/png", "X-API-Key": campaign.keys["camera"]},
        timeout=60,
    )
    campaign.counts["requests"] += 1
    assert response.status_code == 413
    assert "16000000" in response.json()["detail"]


@pytest.mark.parametrize("case", sorted(JSON_BOMBS))
@pytest.mark.parametrize("service", sorted(JSON_ROUTES))
def test_json_bombs_get_a_short_4xx_and_the_service_keeps_serving(
    campaign: Campaign, service: str, case: str
) -> None:
    method, path, key = JSON_ROUTES[service]
    url = campaign.urls[service]
    response = httpx.request(
        method,
        f"{url}{path}",
        content=JSON_BOMBS[case],
        headers={"content-type": "application/json", "X-API-Key": campaign.keys[key]},
        timeout=60,
    )
    campaign.counts["requests"] += 1
    campaign.counts["5xx"] += response.status_code >= 500
    _assert_4xx_and_serving(response, url, f"{service}:{case}")


def test_the_deep_spec_field_of_a_multipart_category_is_a_4xx(campaign: Campaign) -> None:
    url = campaign.urls["anomaly_map"]
    response = httpx.put(
        f"{url}/v1/categories/bomb",
        data={"spec": "[" * 1000 + "]" * 1000},
        headers={"X-API-Key": campaign.keys["admin"]},
        timeout=60,
    )
    campaign.counts["requests"] += 1
    campaign.counts["5xx"] += response.status_code >= 500
    _assert_4xx_and_serving(response, url, "multipart spec")


def test_no_job_the_campaign_submitted_is_lost(campaign: Campaign) -> None:
    # given every job record the campaign's requests created
    jobs = JobStore(create_store(campaign.senv.settings))

    def lost() -> list[str]:
        return [r.id for r in jobs.list(limit=10_000) if r.state == JobState.PENDING]

    # when the worker has had time to claim them, then none is left PENDING
    try:
        wait_for(lambda: not lost(), 120, "PENDING jobs left", interval_s=2)
    finally:
        campaign.counts["jobs_lost"] = len(lost())
    assert campaign.counts["jobs_lost"] == 0
