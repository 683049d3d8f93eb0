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
        self.scripts: list[dict[str, str | None]] = []

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        found = dict(attrs)
        self.refs += [v for k, v in found.items() if k in {"src", "href"} and v]
        if tag == "body":
            self.body = found
        if tag == "script":
            self.scripts.append(found)


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


@pytest.mark.parametrize("slug", SLUGS)
def test_every_script_is_an_es_module_served_as_javascript(client: TestClient, slug: str) -> None:
    # given
    parser = _Refs()
    parser.feed(client.get(f"/{slug}").text)
    # when
    answers = [client.get(str(script["src"])) for script in parser.scripts]
    # then: module scripts, which the browser runs only with a JavaScript content type
    assert parser.scripts
    assert all(script.get("type") == "module" for script in parser.scripts), parser.scripts
    for answer in answers:
        assert answer.status_code == 200
        assert answer.headers["content-type"].startswith("text/javascript")


_IMPORT = re.compile(r'^(?:import|export)\b[^;]*?\bfrom\s+"([^"]+)"', re.MULTILINE | re.DOTALL)


def test_every_module_imports_only_console_files_that_are_served(client: TestClient) -> None:
    # given
    scripts = sorted(pages.STATIC_DIR.glob("*.js"))
    # when
    imported = {name for path in scripts for name in _IMPORT.findall(path.read_text("utf-8"))}
    # then: relative, with their extension (the browser resolves no bare names), and there
    assert "./console.js" in imported
    for name in imported:
        assert name.startswith("./"), name
        assert name.endswith(".js"), name
        assert client.get(f"/static/{name[2:]}").status_code == 200, name


def test_every_script_is_type_checked() -> None:
    # tsc --checkJs (tsconfig.json) checks every file; `// @ts-check` keeps editors doing so
    scripts = sorted(pages.STATIC_DIR.glob("*.js"))
    assert scripts
    for path in scripts:
        assert path.read_text("utf-8").startswith("// @ts-check\n"), path.name


def test_the_jobs_page_also_runs_the_pipelines_and_gallery_scripts(client: TestClient) -> None:
    # when
    parser = _Refs()
    parser.feed(client.get("/jobs").text)
    # then: console.js first, the gallery (listening before a page offers it sets), then
    # pipelines.js, then jobs.js
    scripts = [ref for ref in parser.refs if ref.endswith(".js")]
    assert scripts == [
        "/static/console.js",
        "/static/gallery.js",
        "/static/pipelines.js",
        "/static/jobs.js",
    ]


@pytest.mark.parametrize(("slug", "pools"), [("datasets", "all"), ("models", ""), ("jobs", "")])
def test_gallery_pages_carry_one_gallery_panel(client: TestClient, slug: str, pools: str) -> None:
    # when
    text = client.get(f"/{slug}").text
    # then the panel is there once, offering every stored pool on the Datasets page only
    assert text.count('id="gallery-panel"') == 1
    assert f'data-pools="{pools}"' in text
    assert "$" not in text.replace("$title", "")


def test_pages_without_a_gallery_have_no_panel(client: TestClient) -> None:
    assert 'id="gallery-panel"' not in client.get("/inspect").text


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
