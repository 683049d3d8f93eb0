"""Console settings, its place in ``agssp up``, and the offline /docs and /redoc pages."""

from __future__ import annotations

import re

import pytest
from fastapi.testclient import TestClient

from agssp import processes
from agssp import services as service_table
from agssp.services import Role
from services.console.config import ConsoleSettings
from shared.config import SettingsError, load_settings
from shared.http import docs


def test_settings_come_from_console_variables(monkeypatch: pytest.MonkeyPatch) -> None:
    # given
    monkeypatch.setenv("CONSOLE_INFERENCE_URL", "http://inference:8000/")
    monkeypatch.setenv("CONSOLE_POLL_INTERVAL_MS", "250")
    # when
    settings = load_settings(ConsoleSettings)
    # then
    assert settings.upstreams()["inference"] == "http://inference:8000"
    assert settings.upstreams()["anomaly_map"] == "http://127.0.0.1:8001"
    assert settings.poll_interval_ms == 250


def test_a_bad_url_stops_start_up_naming_the_variable(monkeypatch: pytest.MonkeyPatch) -> None:
    # given
    monkeypatch.setenv("CONSOLE_FINETUNE_URL", "finetune without a scheme")
    # when / then
    with pytest.raises(SettingsError, match="CONSOLE_FINETUNE_URL"):
        load_settings(ConsoleSettings)


def test_up_points_the_console_at_the_ports_it_chose() -> None:
    # when
    env = processes.console_env("127.0.0.1", {"anomaly_map": 9101, "inference": 9104})
    # then
    assert env == {
        "CONSOLE_ANOMALY_MAP_URL": "http://127.0.0.1:9101",
        "CONSOLE_INFERENCE_URL": "http://127.0.0.1:9104",
    }
    assert service_table.only(Role.CONSOLE).name not in service_table.names(Role.API)


@pytest.mark.parametrize("page", ["/docs", "/redoc"])
def test_docs_pages_use_local_assets_under_a_same_origin_csp(client: TestClient, page: str) -> None:
    # when
    answer = client.get(page)
    # then
    assert answer.status_code == 200
    assert not re.search(r"https?://", answer.text)
    assert "/docs-assets/" in answer.text
    assert "default-src 'self'" in answer.headers["content-security-policy"]
    assert "fonts.googleapis" not in answer.text


def test_the_docs_assets_are_served(client: TestClient) -> None:
    # when / then
    for name in (docs.SWAGGER_JS, docs.SWAGGER_CSS, docs.REDOC_JS, docs.FAVICON):
        assert client.get(f"/docs-assets/{name}").status_code == 200, name
    assert client.get("/openapi.json").json()["info"]["title"] == "AGSSP console"


def test_without_the_docs_extra_the_pages_say_what_to_install(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    # given an environment where the asset package is missing
    from fastapi import FastAPI

    monkeypatch.setattr(docs, "asset_dir", lambda: None)
    app = FastAPI(title="AGSSP test", docs_url=None, redoc_url=None)
    docs.install_offline_docs(app)
    # when
    with TestClient(app) as client:
        pages = [client.get(p) for p in ("/docs", "/redoc")]
        assets = client.get(f"/docs-assets/{docs.SWAGGER_JS}")
    # then: a local page naming the extra, and never a CDN
    for page in pages:
        assert page.status_code == 200
        assert "pip install -e .[docs]" in page.text
        assert "/openapi.json" in page.text
        assert not re.search(r"https?://", page.text)
    assert assets.status_code == 404
