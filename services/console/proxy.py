"""Same-origin reverse proxy from ``/api/<service>/<path>`` to the four APIs and the pipeline API.

The browser talks only to the console's origin, so no API needs CORS, and the user's API key
(``X-API-Key`` or ``Authorization``) is forwarded as is: the APIs check it, the console holds
no key of its own. Only API routes (``v1/…``, ``detect``, probes) are reachable, on the fixed
base URLs of ``ConsoleSettings``; a path cannot climb out of them.
"""

from __future__ import annotations

import re
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass

import httpx

from shared.errors import InvalidInputError, NotFoundError, SuiteError

FORWARDED_REQUEST = ("x-api-key", "authorization", "content-type", "accept", "x-request-id")
FORWARDED_RESPONSE = (
    "content-type",
    "x-image-score",
    "retry-after",
    "www-authenticate",
    "x-request-id",
    "content-disposition",  # with the two below: a stored .html or .svg stays a download,
    "content-security-policy",  # or a sandboxed report, on the console's origin too
    "x-content-type-options",
)
# Set on every proxied answer whatever the API said: the console's origin never sniffs.
ALWAYS = {"X-Content-Type-Options": "nosniff"}
ALLOWED_PATH = re.compile(r"^(v1/[A-Za-z0-9._~:@%+=,\-/]*|detect|healthz|readyz)$")


class UpstreamError(SuiteError):
    """The API behind the proxy did not answer (down, or too slow)."""

    http_status = 502
    code = "upstream_unavailable"


class UpstreamTimeoutError(UpstreamError):
    """The API behind the proxy took longer than ``CONSOLE_PROXY_TIMEOUT_S``."""

    http_status = 504
    code = "upstream_timeout"


@dataclass(frozen=True)
class Forwarded:
    """An upstream answer as the proxy hands it back: its body streams from ``chunks``, and
    ``close`` releases the upstream connection once the body is sent (or abandoned)."""

    status: int
    chunks: AsyncIterator[bytes]
    headers: dict[str, str]
    close: Callable[[], Awaitable[None]]


def target_url(upstreams: dict[str, str], service: str, path: str) -> str:
    """The upstream URL for ``/api/<service>/<path>``; refuses unknown services and paths."""
    if service not in upstreams:
        raise NotFoundError(
            f"unknown service {service!r}; one of {', '.join(upstreams)}", code="unknown_service"
        )
    segments = path.split("/")
    if not ALLOWED_PATH.match(path) or ".." in segments or "" in segments[:-1]:
        raise InvalidInputError(
            f"path {path!r} is not an API route (v1/…, detect, healthz, readyz)",
            code="bad_proxy_path",
        )
    return f"{upstreams[service]}/{path}"


def request_headers(headers: dict[str, str]) -> dict[str, str]:
    """The request headers worth forwarding (the key, content negotiation, request id)."""
    return {name: value for name, value in headers.items() if name.lower() in FORWARDED_REQUEST}


async def forward(
    client: httpx.AsyncClient,
    *,
    service: str,
    method: str,
    url: str,
    query: str,
    headers: dict[str, str],
    body: bytes | AsyncIterator[bytes],
) -> Forwarded:
    """Send one request upstream, streaming its body both ways (the proxy holds a chunk, not
    an upload or a model file), and keep the answer's status and useful headers."""
    request = client.build_request(
        method, url, params=httpx.QueryParams(query), headers=request_headers(headers),
        content=body,
    )  # fmt: skip
    try:
        response = await client.send(request, stream=True)
    except httpx.TimeoutException as exc:
        raise UpstreamTimeoutError(
            f"the {service} API did not answer in time ({url}): {exc!r}"
        ) from exc
    except httpx.HTTPError as exc:
        raise UpstreamError(
            f"the {service} API is not reachable ({url}): {type(exc).__name__}: {exc}"
        ) from exc
    kept = {k: v for k, v in response.headers.items() if k.lower() in FORWARDED_RESPONSE}
    kept = {k: v for k, v in kept.items() if k.lower() != "x-content-type-options"} | ALWAYS
    return Forwarded(response.status_code, response.aiter_bytes(), kept, response.aclose)
