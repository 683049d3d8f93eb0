"""Scopes declared where the routes are: ``require_scope("train")`` or ``open_route()``.

A router or a route lists one of them in ``dependencies=[...]``; the declaration is a FastAPI
security dependency, so the generated OpenAPI names the scope (``security: [{"ApiKey":
["train"]}]``). The key check (:mod:`shared.http.gate`) reads the declarations of the route a
request will reach, before the body is read: a route that declares nothing is refused to
every key (deny by default), so a forgotten scope shows up at the first call.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from typing import Annotated, Any

from fastapi import Depends, Request, Security
from fastapi.dependencies.models import Dependant
from fastapi.openapi.models import APIKey, APIKeyIn
from fastapi.security.base import SecurityBase

from shared.http.auth import SCOPES

SCHEME_NAME = "ApiKey"


@dataclass(frozen=True)
class Caller:
    """The API key a request came with: its name and scopes (``admin`` grants every scope)."""

    name: str
    scopes: frozenset[str]


@dataclass(frozen=True)
class Access:
    """What a route asks of a caller: nothing (``open``), or every scope in ``scopes``.

    Neither open nor scoped means the route declared nothing: nobody may call it.
    """

    scopes: frozenset[str] = frozenset()
    open: bool = False

    @property
    def declared(self) -> bool:
        return self.open or bool(self.scopes)

    def rank(self) -> int:
        """Order for "the least a path asks": open, inspect, train, admin, undeclared."""
        if self.open:
            return -1
        if not self.scopes:
            return len(SCOPES)
        return max(SCOPES.index(s) for s in self.scopes)


OPEN = Access(open=True)
ADMIN_ONLY = Access(frozenset({"admin"}))
UNDECLARED = Access()


def caller_of(request: Request) -> Caller | None:
    """The caller the key check recognised, or None (no key, or auth is off)."""
    state: dict[str, Any] = request.scope.get("state", {})
    name = state.get("api_key")
    if name is None:
        return None
    return Caller(str(name), frozenset(state.get("api_scopes", ())))


class ScopeRequirement(SecurityBase):
    """The security dependency behind ``require_scope``: returns the recognised caller."""

    def __init__(self, scope: str) -> None:
        if scope not in SCOPES:
            raise ValueError(f"unknown scope {scope!r}; accepted: {', '.join(SCOPES)}")
        self.scope = scope
        self.scheme_name = SCHEME_NAME
        self.model = APIKey(
            **{"in": APIKeyIn.header},
            name="X-API-Key",
            description="an API key (AUTH_API_KEYS); also accepted as 'Authorization: Bearer'",
        )

    async def __call__(self, request: Request) -> Caller | None:
        return caller_of(request)


_REQUIREMENTS = {scope: ScopeRequirement(scope) for scope in SCOPES}


def require_scope(scope: str) -> Any:
    """A dependency declaring that callers need ``scope`` (an admin key has every scope)."""
    if scope not in _REQUIREMENTS:
        raise ValueError(f"unknown scope {scope!r}; accepted: {', '.join(SCOPES)}")
    return Security(_REQUIREMENTS[scope], scopes=[scope])


async def open_access(request: Request) -> Caller | None:
    """The dependency behind ``open_route``: anyone may call; a known key is still named."""
    return caller_of(request)


def open_route() -> Any:
    """A dependency declaring the route open to callers without a key (probes, pages)."""
    return Depends(open_access)


CallerDep = Annotated[Caller | None, Depends(caller_of)]


def _calls(dependant: Dependant) -> Iterator[object]:
    yield dependant.call
    for sub in dependant.dependencies:
        yield from _calls(sub)


def declared_access(dependant: Dependant) -> Access:
    """The access a route's dependency tree declares (every scope it names, or open)."""
    scopes: set[str] = set()
    opened = False
    for call in _calls(dependant):
        if isinstance(call, ScopeRequirement):
            scopes.add(call.scope)
        elif call is open_access:
            opened = True
    if scopes:
        return Access(frozenset(scopes))
    return OPEN if opened else UNDECLARED
