"""API keys with scopes, checked on the raw ASGI path before routing.

Keys are stored hashed (sha256) in ``AUTH_API_KEYS`` as ``name:sha256hex:scope+scope``.
Scopes: ``inspect`` (detection and anomaly maps, for cameras), ``train`` (jobs), ``admin``
(models and categories; admin also grants every other scope). Health, readiness and metrics
stay open. With no keys configured auth is off (the embedded loopback default).
"""

from __future__ import annotations

import hashlib
import hmac
import json
import secrets
from collections.abc import Sequence
from dataclasses import dataclass

from starlette.types import ASGIApp, Receive, Scope, Send

from shared.http.context import request_id_of

OPEN_PATHS = ("/healthz", "/readyz", "/metrics")
SCOPES = ("inspect", "train", "admin")


@dataclass(frozen=True)
class ApiKey:
    name: str
    sha256: str
    scopes: frozenset[str]


@dataclass(frozen=True)
class ScopeRule:
    """Requests whose path starts with ``prefix`` (and method in ``methods``) need ``scope``."""

    prefix: str
    scope: str
    methods: frozenset[str] = frozenset()


def parse_keys(entries: Sequence[str]) -> list[ApiKey]:
    keys = []
    for entry in entries:
        name, digest, scopes = entry.split(":")
        keys.append(ApiKey(name, digest.lower(), frozenset(s for s in scopes.split("+") if s)))
    return keys


def hash_key(key: str) -> str:
    return hashlib.sha256(key.encode()).hexdigest()


def create_key(name: str, scopes: Sequence[str]) -> tuple[str, str]:
    """A new random key and its ``AUTH_API_KEYS`` entry (only the entry is stored)."""
    unknown = set(scopes) - set(SCOPES)
    if unknown:
        raise ValueError(f"unknown scopes {sorted(unknown)}; accepted: {', '.join(SCOPES)}")
    key = "agssp_" + secrets.token_urlsafe(24)
    return key, f"{name}:{hash_key(key)}:{'+'.join(scopes)}"


def _presented_key(scope: Scope) -> str | None:
    for name, value in scope.get("headers", []):
        if name == b"x-api-key":
            return str(value.decode("latin-1")).strip()
        if name == b"authorization":
            text = str(value.decode("latin-1"))
            if text.lower().startswith("bearer "):
                return text[7:].strip()
    return None


class ApiKeyMiddleware:
    """Deny by default: a path matching no rule needs ``admin``."""

    def __init__(self, app: ASGIApp, keys: Sequence[ApiKey], rules: Sequence[ScopeRule]) -> None:
        self.app = app
        self.keys = list(keys)
        self.rules = sorted(rules, key=lambda r: len(r.prefix), reverse=True)

    def required_scope(self, path: str, method: str) -> str | None:
        """The scope a request needs; HEAD needs what GET needs, OPTIONS the least any method
        of the path needs (it reveals no data: FastAPI answers 405, CORS answers preflights).
        """
        if path in OPEN_PATHS:
            return None
        if method == "OPTIONS":
            needed = {r.scope for r in self.rules if path.startswith(r.prefix)} or {"admin"}
            return min(needed, key=SCOPES.index)
        method = "GET" if method == "HEAD" else method
        for rule in self.rules:
            if path.startswith(rule.prefix) and (not rule.methods or method in rule.methods):
                return rule.scope
        return "admin"

    def _match(self, presented: str) -> ApiKey | None:
        digest = hash_key(presented)
        found = None
        for key in self.keys:
            if hmac.compare_digest(digest, key.sha256):
                found = key
        return found

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or not self.keys:
            await self.app(scope, receive, send)
            return
        needed = self.required_scope(scope["path"], scope["method"])
        presented = _presented_key(scope)
        key = self._match(presented) if presented else None
        if needed is None:
            if key is not None:  # open probes show details only to a known key
                _remember(scope, key)
            await self.app(scope, receive, send)
            return
        if key is None:
            await _deny(scope, send, 401, "unauthorized", "missing or unknown API key")
        elif needed not in key.scopes and "admin" not in key.scopes:
            await _deny(
                scope, send, 403, "forbidden", f"API key {key.name!r} lacks scope {needed!r}"
            )
        else:
            _remember(scope, key)
            await self.app(scope, receive, send)


def _remember(scope: Scope, key: ApiKey) -> None:
    state = scope.setdefault("state", {})
    state["api_key"] = key.name
    state["api_scopes"] = sorted(key.scopes)


def request_scopes(scope: Scope, auth_enabled: bool) -> frozenset[str] | None:
    """The scopes of the request's key; ``None`` means "everything" (auth is off)."""
    if not auth_enabled:
        return None
    return frozenset(scope.get("state", {}).get("api_scopes", ()))


async def _deny(scope: Scope, send: Send, status: int, code: str, detail: str) -> None:
    body = json.dumps({"detail": detail, "code": code, "request_id": request_id_of(scope)}).encode()
    headers = [(b"content-type", b"application/json"), (b"content-length", str(len(body)).encode())]
    if status == 401:
        headers.append((b"www-authenticate", b"Bearer"))
    await send({"type": "http.response.start", "status": status, "headers": headers})
    await send({"type": "http.response.body", "body": body})
