"""API keys with scopes: parsing, hashing, creating and recognising them.

Keys are stored hashed (sha256) in ``AUTH_API_KEYS`` as ``name:sha256hex:scope+scope``.
Scopes: ``inspect`` (detection and anomaly maps, for cameras), ``train`` (jobs), ``admin``
(models and categories; admin also grants every other scope). Routes declare the scope
they need (:mod:`shared.http.scopes`); :mod:`shared.http.gate` checks it. With no keys
configured auth is off (the embedded loopback default).
"""

from __future__ import annotations

import hashlib
import hmac
import secrets
from collections.abc import Sequence
from dataclasses import dataclass

from starlette.types import Scope

SCOPES = ("inspect", "train", "admin")


@dataclass(frozen=True)
class ApiKey:
    name: str
    sha256: str
    scopes: frozenset[str]


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


def presented_key(scope: Scope) -> str | None:
    """The key sent as ``X-API-Key`` or ``Authorization: Bearer``, if any."""
    for name, value in scope.get("headers", []):
        if name == b"x-api-key":
            return str(value.decode("latin-1")).strip()
        if name == b"authorization":
            text = str(value.decode("latin-1"))
            if text.lower().startswith("bearer "):
                return text[7:].strip()
    return None


def match_key(keys: Sequence[ApiKey], presented: str) -> ApiKey | None:
    """The configured key ``presented`` hashes to (compared in constant time), or None."""
    digest = hash_key(presented)
    found = None
    for key in keys:
        if hmac.compare_digest(digest, key.sha256):
            found = key
    return found


def request_scopes(scope: Scope, auth_enabled: bool) -> frozenset[str] | None:
    """The scopes of the request's key; ``None`` means "everything" (auth is off)."""
    if not auth_enabled:
        return None
    return frozenset(scope.get("state", {}).get("api_scopes", ()))
