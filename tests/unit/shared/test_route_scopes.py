"""Deny by default: a route that declares no scope answers 403 to every key, admin included.

Also the declarations themselves: router-level and route-level scopes add up, ``open_route``
needs no key, OPTIONS needs the least any method of the path needs, unknown paths need admin.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest
from fastapi import APIRouter, FastAPI
from fastapi.testclient import TestClient

from shared.http.auth import create_key
from shared.http.scopes import CallerDep, open_route, require_scope
from tests.unit.shared.service_apps import SERVICE_APPS, common_with_keys

EVERY_SCOPE = ["inspect", "train", "admin"]


@pytest.fixture
def keys() -> dict[str, tuple[str, str]]:
    return {
        "all": create_key("all-scopes", EVERY_SCOPE),
        "admin": create_key("boss", ["admin"]),
        "train": create_key("trainer", ["train"]),
    }


def _headers(keys: dict[str, tuple[str, str]], name: str) -> dict[str, str]:
    return {"X-API-Key": keys[name][0]}


def _add_undeclared_routes(app: FastAPI) -> None:
    @app.get("/v1/brand-new")
    def brand_new() -> dict[str, str]:
        return {"ok": "yes"}

    router = APIRouter(prefix="/v1/new-router")

    @router.post("/things")
    def new_thing() -> dict[str, str]:
        return {"ok": "yes"}

    app.include_router(router)


@pytest.mark.parametrize("service", sorted(SERVICE_APPS))
def test_a_new_route_without_a_scope_is_refused_to_every_key(
    service: str, tmp_path: Path, keys: dict[str, tuple[str, str]]
) -> None:
    # given a service app with two routes added without any declaration
    entries = [entry for _, entry in keys.values()]
    app = SERVICE_APPS[service](tmp_path, common_with_keys(tmp_path, entries))
    _add_undeclared_routes(app)
    with TestClient(app) as client:
        for method, path in (("GET", "/v1/brand-new"), ("POST", "/v1/new-router/things")):
            # when
            answers = {name: client.request(method, path, headers=_headers(keys, name))
                       for name in ("all", "admin")}  # fmt: skip
            anonymous = client.request(method, path)
            # then
            for answer in answers.values():
                assert answer.status_code == 403, (service, path, answer.text)
                assert answer.json()["code"] == "scope_not_declared"
                assert set(answer.json()) == {"detail", "code", "request_id"}
            assert anonymous.status_code == 401
            assert anonymous.headers["www-authenticate"] == "Bearer"


def _demo_app(tmp_path: Path, keys: dict[str, tuple[str, str]]) -> FastAPI:
    from shared.http.app import create_service_app

    entries = [entry for _, entry in keys.values()]
    app = create_service_app(
        service="demo", settings=common_with_keys(tmp_path, entries), lifespan=None
    )
    router = APIRouter(prefix="/v1/stock", dependencies=[require_scope("train")])

    @router.get("")
    def stock(caller: CallerDep) -> dict[str, str | None]:
        return {"caller": caller.name if caller else None}

    @router.delete("", dependencies=[require_scope("admin")])
    def wipe() -> dict[str, str]:
        return {"wiped": "yes"}

    @app.get("/v1/open-page", dependencies=[open_route()])
    def page(caller: CallerDep) -> dict[str, str | None]:
        return {"caller": caller.name if caller else None}

    app.include_router(router)
    return app


@pytest.fixture
def demo(tmp_path: Path, keys: dict[str, tuple[str, str]]) -> Iterator[TestClient]:
    with TestClient(_demo_app(tmp_path, keys)) as client:
        yield client


def test_router_and_route_scopes_add_up(demo: TestClient, keys: dict[str, tuple[str, str]]) -> None:
    assert demo.get("/v1/stock", headers=_headers(keys, "train")).json() == {"caller": "trainer"}
    assert demo.delete("/v1/stock", headers=_headers(keys, "train")).status_code == 403
    assert demo.delete("/v1/stock", headers=_headers(keys, "admin")).status_code == 200


def test_an_open_route_needs_no_key_but_names_a_known_one(
    demo: TestClient, keys: dict[str, tuple[str, str]]
) -> None:
    assert demo.get("/v1/open-page").json() == {"caller": None}
    assert demo.get("/v1/open-page", headers=_headers(keys, "train")).json() == {
        "caller": "trainer"
    }


def test_options_needs_the_least_scope_of_the_path_and_unknown_paths_need_admin(
    demo: TestClient, keys: dict[str, tuple[str, str]]
) -> None:
    assert demo.options("/v1/stock", headers=_headers(keys, "train")).status_code == 405
    assert demo.options("/v1/stock").status_code == 401
    assert demo.get("/v1/nowhere", headers=_headers(keys, "train")).status_code == 403
    assert demo.get("/v1/nowhere", headers=_headers(keys, "admin")).status_code == 404


def test_the_openapi_shows_the_declared_scopes(demo: TestClient) -> None:
    schema = demo.app.openapi()  # type: ignore[attr-defined]
    assert schema["paths"]["/v1/stock"]["get"]["security"] == [{"ApiKey": ["train"]}]
    assert schema["paths"]["/v1/stock"]["delete"]["security"] == [{"ApiKey": ["train", "admin"]}]
    assert schema["components"]["securitySchemes"]["ApiKey"]["in"] == "header"


def test_an_unknown_scope_cannot_be_declared() -> None:
    with pytest.raises(ValueError, match="unknown scope"):
        require_scope("superuser")
