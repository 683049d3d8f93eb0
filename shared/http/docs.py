"""``/docs`` (Swagger UI) and ``/redoc`` from files installed with the suite, never a CDN.

FastAPI's built-in pages load their scripts, styles, favicon and (ReDoc) Google Fonts from
public hosts, so in an air-gapped plant they render blank. Here both pages point at
``/docs-assets/…``, served from the ``docs`` extra (the ``fastapi-offline`` wheel ships
Swagger UI 5 and ReDoc 2 builds; ``swagger-ui-bundle`` is not used because its Swagger UI 4
cannot read the OpenAPI 3.1 that FastAPI writes). Without the extra, both routes answer a
small local page that says what to install and links the raw ``/openapi.json``.

The pages also carry a Content-Security-Policy that allows only this origin (plus ``data:``
images and ``blob:`` workers), so the browser itself refuses anything the bundles would load
from outside: ReDoc 2 always shows a Redocly logo from a public host, which then stays hidden.
"""

from __future__ import annotations

import importlib.resources
import importlib.util
from pathlib import Path

from fastapi import FastAPI, Request
from fastapi.openapi.docs import (
    get_redoc_html,
    get_swagger_ui_html,
    get_swagger_ui_oauth2_redirect_html,
)
from fastapi.responses import HTMLResponse
from fastapi.staticfiles import StaticFiles

from shared.http.scopes import ADMIN_ONLY, Access, require_scope

ASSETS_PREFIX = "/docs-assets"
ASSET_PACKAGE = "fastapi_offline"
SWAGGER_JS = "swagger-ui-bundle.js"
SWAGGER_CSS = "swagger-ui.css"
REDOC_JS = "redoc.standalone.js"
FAVICON = "favicon.png"
# The schema route and the asset mount are no FastAPI routes: their access is declared here.
DOCS_ACCESS: dict[str, Access] = {"/openapi.json": ADMIN_ONLY, ASSETS_PREFIX: ADMIN_ONLY}
ADMIN = [require_scope("admin")]
# 'unsafe-inline': both pages start their bundle from an inline <script> and style inline.
DOCS_CSP = (
    "default-src 'self'; script-src 'self' 'unsafe-inline'; style-src 'self' 'unsafe-inline'; "
    "img-src 'self' data:; font-src 'self' data:; worker-src 'self' blob:; "
    "connect-src 'self'; object-src 'none'; base-uri 'self'; frame-ancestors 'self'"
)


def asset_dir() -> Path | None:
    """The folder holding the Swagger UI and ReDoc builds, or None without the docs extra."""
    if importlib.util.find_spec(ASSET_PACKAGE) is None:
        return None
    folder = Path(str(importlib.resources.files(ASSET_PACKAGE) / "static"))
    needed = (SWAGGER_JS, SWAGGER_CSS, REDOC_JS)
    return folder if all((folder / name).is_file() for name in needed) else None


def _missing_page(title: str, openapi_url: str) -> HTMLResponse:
    body = (
        f"<!doctype html><html><head><meta charset='utf-8'><title>{title}</title></head>"
        "<body style='font-family:sans-serif'><h1>API docs not installed</h1>"
        "<p>Install the suite's <code>docs</code> extra (<code>pip install -e .[docs]</code>)"
        " to get the local Swagger UI and ReDoc pages.</p>"
        f"<p>The raw schema is at <a href='{openapi_url}'>{openapi_url}</a>.</p></body></html>"
    )
    return HTMLResponse(body)


def _local_only(response: HTMLResponse) -> HTMLResponse:
    response.headers["Content-Security-Policy"] = DOCS_CSP
    return response


def install_offline_docs(app: FastAPI) -> None:
    """Add ``/docs``, ``/docs/oauth2-redirect`` and ``/redoc`` served from local files.

    Build the app with ``docs_url=None, redoc_url=None`` first, so FastAPI's CDN pages are
    not registered.
    """
    folder = asset_dir()
    if folder is not None:
        app.mount(ASSETS_PREFIX, StaticFiles(directory=folder), name="docs-assets")
    title = app.title

    def _urls(request: Request) -> tuple[str, str]:
        root = request.scope.get("root_path", "").rstrip("/")
        return f"{root}{app.openapi_url}", f"{root}{ASSETS_PREFIX}"

    @app.get("/docs", include_in_schema=False, dependencies=ADMIN)
    def swagger_ui(request: Request) -> HTMLResponse:
        openapi_url, assets = _urls(request)
        if folder is None:
            return _local_only(_missing_page(f"{title} - docs", openapi_url))
        page = get_swagger_ui_html(
            openapi_url=openapi_url,
            title=f"{title} - Swagger UI",
            swagger_js_url=f"{assets}/{SWAGGER_JS}",
            swagger_css_url=f"{assets}/{SWAGGER_CSS}",
            swagger_favicon_url=f"{assets}/{FAVICON}",
            oauth2_redirect_url="/docs/oauth2-redirect",
        )
        return _local_only(page)

    @app.get("/docs/oauth2-redirect", include_in_schema=False, dependencies=ADMIN)
    def swagger_redirect() -> HTMLResponse:
        return _local_only(get_swagger_ui_oauth2_redirect_html())

    @app.get("/redoc", include_in_schema=False, dependencies=ADMIN)
    def redoc(request: Request) -> HTMLResponse:
        openapi_url, assets = _urls(request)
        if folder is None:
            return _local_only(_missing_page(f"{title} - ReDoc", openapi_url))
        page = get_redoc_html(
            openapi_url=openapi_url,
            title=f"{title} - ReDoc",
            redoc_js_url=f"{assets}/{REDOC_JS}",
            redoc_favicon_url=f"{assets}/{FAVICON}",
            with_google_fonts=False,
        )
        return _local_only(page)
