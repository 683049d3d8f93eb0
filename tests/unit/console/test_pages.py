"""Console pages: every asset from the console itself, a same-origin CSP, settings for scripts."""

from __future__ import annotations

import json
import re
from html.parser import HTMLParser

import pytest
from fastapi.testclient import TestClient

from services.console import pages

SLUGS = [page.slug for page in pages.PAGES]


class _Refs(HTMLParser):
    def __init__(self) -> None:
        super().__init__()
        self.refs: list[str] = []
        self.body: dict[str, str | None] = {}

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        found = dict(attrs)
        self.refs += [v for k, v in found.items() if k in {"src", "href"} and v]
        if tag == "body":
            self.body = found


@pytest.mark.parametrize("slug", SLUGS)
def test_each_page_loads_only_local_assets_and_says_so_in_its_csp(
    client: TestClient, slug: str
) -> None:
    # when
    response = client.get(f"/{slug}")
    parser = _Refs()
    parser.feed(response.text)
    # then
    assert response.status_code == 200
    assert parser.refs, slug
    assert all(ref.startswith(("/", "#", "?")) for ref in parser.refs), parser.refs
    assert not re.search(r"https?://", response.text)
    csp = response.headers["content-security-policy"]
    assert "default-src 'self'" in csp
    assert "script-src 'self'" in csp
    assert "unsafe-inline" not in csp.split("script-src")[1].split(";")[0]


@pytest.mark.parametrize("slug", SLUGS)
def test_every_script_and_stylesheet_a_page_names_is_served(client: TestClient, slug: str) -> None:
    # given
    parser = _Refs()
    parser.feed(client.get(f"/{slug}").text)
    assets = [ref for ref in parser.refs if ref.startswith("/static/")]
    # when / then
    assert any(a.endswith(f"{slug}.js") for a in assets)
    for asset in assets:
        answer = client.get(asset)
        assert answer.status_code == 200, asset
        assert not re.search(r"https?://(?!www\.w3\.org/2000/svg)", answer.text), asset


def test_the_jobs_page_also_runs_the_pipelines_script(client: TestClient) -> None:
    # when
    parser = _Refs()
    parser.feed(client.get("/jobs").text)
    # then: console.js first, then pipelines.js, then jobs.js
    scripts = [ref for ref in parser.refs if ref.endswith(".js")]
    assert scripts == ["/static/console.js", "/static/pipelines.js", "/static/jobs.js"]


def test_pages_hand_their_settings_to_the_scripts(client: TestClient) -> None:
    # when
    parser = _Refs()
    parser.feed(client.get("/inspect").text)
    # then
    config = json.loads(parser.body["data-config"] or "{}")
    assert config["poll_interval_ms"] == 700
    assert config["services"] == ["anomaly_map", "pretrain", "finetune", "inference", "pipeline"]
    assert parser.body["data-page"] == "inspect"


def test_the_root_redirects_to_inspect_and_unknown_pages_are_404(client: TestClient) -> None:
    # when
    root = client.get("/", follow_redirects=False)
    missing = client.get("/nowhere")
    # then
    assert root.status_code == 307
    assert root.headers["location"] == "/inspect"
    assert missing.status_code == 404
    assert missing.json()["code"] == "route_not_found"


def test_the_current_page_is_marked_in_the_navigation() -> None:
    # when
    html = pages.render("models", {})
    # then
    assert '<a href="/models" aria-current="page"' in html
    assert html.count("aria-current") == 1
