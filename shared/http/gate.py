"""The key check: one ASGI middleware in front of routing, body limits and the JSON guard.

It finds the route a request will reach and applies what that route declares
(:mod:`shared.http.scopes`), so an unknown caller is refused before any byte of the body is
read or parsed. Failures are raised as ``UnauthorizedError`` / ``ForbiddenError`` and written
by the one error mapper (:func:`shared.http.errors.suite_error_response`).

* A method the path does not offer (``OPTIONS``, a 405) needs the least that any method of
  the path needs; ``HEAD`` needs what ``GET`` needs.
* A path no route serves needs ``admin``: only an admin learns that it does not exist.
* Routes that are not FastAPI routes (``/openapi.json``, mounts) take their access from the
  ``fixed`` table handed in by whoever added them, else they are undeclared.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Mapping, Sequence
from typing import Any

from fastapi.routing import APIRoute, iter_route_contexts
from starlette.requests import Request
from starlette.types import ASGIApp, Receive, Scope, Send

from shared.errors import ForbiddenError, SuiteError, UnauthorizedError
from shared.http.auth import ApiKey, match_key, presented_key
from shared.http.errors import suite_error_response
from shared.http.scopes import ADMIN_ONLY, UNDECLARED, Access, declared_access


def _route_path(scope: Scope) -> str:
    path: str = scope["path"]
    root: str = scope.get("root_path", "")
    return path[len(root) :] if root and path.startswith(root) else path


def _access_of(context: Any, fixed: Mapping[str, Access]) -> Access:
    if isinstance(context.original_route, APIRoute):
        return declared_access(context.dependant)
    return fixed.get(str(context.path), UNDECLARED)


def _matches(
    routes: Sequence[Any], path: str, method: str, fixed: Mapping[str, Access]
) -> Access | None:
    partial: list[Access] = []
    for context in iter_route_contexts(routes):
        regex: re.Pattern[str] | None = getattr(context, "path_regex", None)
        if regex is None or not regex.match(path):
            continue
        methods: Iterable[str] | None = context.methods
        if methods is None or method in methods:
            return _access_of(context, fixed)
        partial.append(_access_of(context, fixed))
    if partial:
        return min(partial, key=Access.rank)
    return None


def required_access(routes: Sequence[Any], scope: Scope, fixed: Mapping[str, Access]) -> Access:
    """The access the request needs, from the route it will reach (see the module docstring)."""
    method = "GET" if scope["method"] == "HEAD" else scope["method"]
    path = _route_path(scope)
    found = _matches(routes, path, method, fixed)
    if found is None and path != "/":  # the router redirects to the other spelling
        other = path[:-1] if path.endswith("/") else path + "/"
        found = _matches(routes, other, method, fixed)
    return ADMIN_ONLY if found is None else found


def authorize(access: Access, key: ApiKey | None) -> None:
    """Raise unless ``key`` may call a route declaring ``access``."""
    if access.open:
        return
    if key is None:
        raise UnauthorizedError("missing or unknown API key")
    if not access.declared:
        raise ForbiddenError(
            "this route declares no scope, so no key may call it", code="scope_not_declared"
        )
    if "admin" in key.scopes:
        return
    for needed in sorted(access.scopes):
        if needed not in key.scopes:
            raise ForbiddenError(f"API key {key.name!r} lacks scope {needed!r}")


def remember(scope: Scope, key: ApiKey) -> None:
    """Name the caller for the routes (see ``shared.http.scopes.caller_of``)."""
    state = scope.setdefault("state", {})
    state["api_key"] = key.name
    state["api_scopes"] = sorted(key.scopes)


class ScopeGate:
    """Check the API key against what the target route declares; auth is off without keys."""

    def __init__(
        self, app: ASGIApp, keys: Sequence[ApiKey], fixed: Mapping[str, Access] | None = None
    ) -> None:
        self.app = app
        self.keys = list(keys)
        self.fixed = dict(fixed or {})

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or not self.keys:
            await self.app(scope, receive, send)
            return
        presented = presented_key(scope)
        key = match_key(self.keys, presented) if presented else None
        access = required_access(scope["app"].routes, scope, self.fixed)
        try:
            authorize(access, key)
        except SuiteError as exc:
            await suite_error_response(Request(scope), exc)(scope, receive, send)
            return
        if key is not None:  # open routes too: /readyz shows details only to a known key
            remember(scope, key)
        await self.app(scope, receive, send)
