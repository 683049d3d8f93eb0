"""Every route of every service keeps the scope it had under the path-prefix rules.

``EXPECTED`` is the table those rules (``SCOPE_RULES`` in each ``api/main.py``, a path
matching no rule needing admin) gave each route. The test walks each app's OpenAPI, so a
route added without a row here fails, and asks every route with a key of each scope: only
"refused (403) or not" counts, since a request past the key check may fail for its own
reasons (no body, unknown id).
"""

from __future__ import annotations

import re
from collections.abc import Iterator
from pathlib import Path

import pytest
from fastapi.testclient import TestClient

from tests.unit.shared.service_apps import (
    SCOPES,
    SERVICE_APPS,
    common_with_keys,
    one_key_per_scope,
)

JOBS = {
    ("GET", "/v1/jobs"): "train",
    ("GET", "/v1/jobs/{job_id}"): "train",
    ("POST", "/v1/jobs/{job_id}/cancel"): "train",
}
EXPECTED: dict[str, dict[tuple[str, str], str | None]] = {  # None: open to every caller
    "anomaly_map": {
        ("GET", "/v1/categories"): "inspect",
        ("GET", "/v1/categories/{name}"): "inspect",
        ("PUT", "/v1/categories/{name}"): "admin",
        ("DELETE", "/v1/categories/{name}"): "admin",
        ("POST", "/v1/categories:import"): "admin",
        ("POST", "/v1/anomaly-maps"): "inspect",
        ("POST", "/v1/anomaly-map-jobs"): "train",
        ("POST", "/v1/evaluations"): "train",
        ("POST", "/v1/tocoad-fits"): "train",
        **JOBS,
    },
    "pretrain": {
        ("POST", "/v1/pretrain-jobs"): "train",
        ("GET", "/v1/pretrain-jobs/{job_id}"): "train",
        ("POST", "/v1/pseudo-label-jobs"): "train",
        ("GET", "/v1/pseudo-label-jobs/{job_id}"): "train",
        **JOBS,
    },
    "finetune": {
        ("POST", "/v1/datasets"): "train",
        ("GET", "/v1/datasets"): "train",
        ("GET", "/v1/datasets/{name}"): "train",
        ("GET", "/v1/galleries/datasets/{name}/{version}/{split}"): "train",
        ("GET", "/v1/galleries/pools"): "train",
        ("GET", "/v1/galleries/prefix"): "train",
        ("GET", "/v1/galleries/evaluations/{name}/{version}"): "train",
        ("GET", "/v1/galleries/thumbnails/{key}"): "train",
        ("GET", "/v1/galleries/maps/{key}"): "train",
        ("POST", "/v1/agdp-jobs"): "train",
        ("POST", "/v1/finetune-jobs"): "train",
        ("POST", "/v1/evaluations"): "train",
        ("POST", "/v1/quantize-jobs"): "admin",  # no prefix rule covered it
        ("GET", "/v1/detector-families"): "inspect",  # the family table, no data
        ("GET", "/v1/models"): "train",
        ("GET", "/v1/models/{name}"): "train",
        ("GET", "/v1/models/{name}/versions/{version}"): "train",
        ("POST", "/v1/models/{name}/versions/{version}/promote"): "admin",
        ("GET", "/v1/models/{name}/versions/{version}/evaluation"): "train",
        ("GET", "/v1/evaluations/compare"): "train",
        ("GET", "/v1/review-exports/predictions"): "train",
        ("GET", "/v1/review-exports/pseudo-labels"): "train",
        ("POST", "/v1/review-exports"): "train",
        ("GET", "/v1/review-exports/{job_id}/zip"): "train",
        **JOBS,
    },
    "inference": {
        ("POST", "/detect"): "inspect",
        ("POST", "/v1/detect"): "inspect",
        ("GET", "/v1/models"): "admin",
        ("GET", "/v1/sinks"): "admin",
        ("POST", "/v1/models/reload"): "admin",
    },
    "pipeline": {
        ("POST", "/v1/pipelines"): "train",
        ("GET", "/v1/pipelines"): "train",
        ("GET", "/v1/pipelines/{pipeline_id}"): "train",
        ("POST", "/v1/pipelines/{pipeline_id}/cancel"): "train",
        ("POST", "/v1/pipelines/{pipeline_id}/resume"): "train",
        ("GET", "/v1/pipelines/{pipeline_id}/report"): "train",
        ("GET", "/v1/presets"): None,
        ("PUT", "/v1/uploads/{key}"): "train",
        ("GET", "/v1/objects"): "train",
        ("GET", "/v1/objects/{key}"): "train",
    },
}
# Routes outside the schema: probes are open, the docs and the schema need admin.
HIDDEN = {
    ("GET", "/healthz"): None,
    ("GET", "/readyz"): None,
    ("GET", "/metrics"): None,
    ("GET", "/openapi.json"): "admin",
    ("GET", "/docs"): "admin",
    ("GET", "/redoc"): "admin",
    ("GET", "/docs/oauth2-redirect"): "admin",
}
_PARAM = re.compile(r"\{[^}]+\}")
Keyed = tuple[TestClient, dict[str, str]]


@pytest.fixture(params=sorted(SERVICE_APPS))
def keyed(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[tuple[str, Keyed]]:
    keys, entries = one_key_per_scope()
    app = SERVICE_APPS[request.param](tmp_path, common_with_keys(tmp_path, entries))
    with TestClient(app) as client:
        yield request.param, (client, keys)


def _operations(client: TestClient) -> dict[tuple[str, str], dict[str, object]]:
    admin_schema = client.app.openapi()  # type: ignore[attr-defined]
    return {
        (method.upper(), path): operation
        for path, item in admin_schema["paths"].items()
        for method, operation in item.items()
    }


def _allowed(client: TestClient, keys: dict[str, str], method: str, path: str) -> set[str]:
    url = _PARAM.sub("x", path)
    return {
        scope
        for scope, key in keys.items()
        if client.request(method, url, headers={"x-api-key": key}).status_code != 403
    }


def _expected_allowed(scope: str | None) -> set[str]:
    """Open: every key; otherwise the scope's own key and admin (admin grants every scope)."""
    return set(SCOPES) if scope is None else {scope, "admin"}


def test_the_openapi_lists_exactly_the_routes_of_the_table(keyed: tuple[str, Keyed]) -> None:
    service, (client, _) = keyed
    assert set(_operations(client)) == set(EXPECTED[service])


def test_every_route_keeps_its_scope(keyed: tuple[str, Keyed]) -> None:
    # given
    service, (client, keys) = keyed
    for (method, path), scope in EXPECTED[service].items():
        # when
        allowed = _allowed(client, keys, method, path)
        without_key = client.request(method, _PARAM.sub("x", path)).status_code
        # then
        assert allowed == _expected_allowed(scope), (service, method, path)
        assert (without_key == 401) == (scope is not None), (service, method, path)


def test_the_openapi_names_each_routes_scope(keyed: tuple[str, Keyed]) -> None:
    service, (client, _) = keyed
    for route, operation in _operations(client).items():
        scope = EXPECTED[service][route]
        named = [{"ApiKey": [scope]}] if scope is not None else None
        assert operation.get("security") == named, route


def test_head_needs_what_get_needs(keyed: tuple[str, Keyed]) -> None:
    service, (client, keys) = keyed
    for (method, path), scope in EXPECTED[service].items():
        if method == "GET":
            assert _allowed(client, keys, "HEAD", path) == _expected_allowed(scope), path


def test_probes_are_open_and_docs_need_admin(keyed: tuple[str, Keyed]) -> None:
    _, (client, keys) = keyed
    for (method, path), scope in HIDDEN.items():
        without_key = client.request(method, path).status_code
        assert _allowed(client, keys, method, path) == _expected_allowed(scope), path
        assert (without_key == 401) == (scope is not None), path
