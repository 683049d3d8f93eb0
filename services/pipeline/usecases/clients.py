"""HTTP calls from the pipeline to the four services, with their answers sorted by cause.

A connection failure, a timeout, 429 and 5xx are transient: the step stays where it is and
the driver tries again on its next tick. Any other 4xx is the service's final word on that
request (a bad config, an unknown category): the step fails with the service's own error
code and message, so the user reads the same error the service would have shown them.
"""

from __future__ import annotations

import json
from typing import Any

import httpx

from services.pipeline.usecases.common import StepCallError
from services.pipeline.usecases.steps import Call

_MAX_DETAIL = 800


class ServiceClient:
    """Sends :class:`Call` s to the services' base URLs with the pipeline's key."""

    def __init__(
        self,
        urls: dict[str, str],
        api_key: str = "",
        timeout_s: float = 60.0,
        transport: httpx.BaseTransport | None = None,
    ) -> None:
        headers = {"X-API-Key": api_key} if api_key else {}
        self._urls = urls
        self._http = httpx.Client(headers=headers, timeout=timeout_s, transport=transport)

    def close(self) -> None:
        self._http.close()

    def send(self, call: Call) -> dict[str, Any]:
        """The JSON answer of one call (``{}`` for an empty body).

        Raises:
            StepCallError: transport failure or a non-2xx answer.
        """
        url = self._urls[call.service] + call.path
        try:
            response = self._http.request(call.method, url, json=call.body)
        except httpx.HTTPError as exc:
            raise StepCallError(
                f"{call.service} unreachable at {self._urls[call.service]}: {exc}",
                "service_unavailable",
                transient=True,
            ) from exc
        # /readyz answers 503 with a body worth reading (what is not ready).
        if response.is_success or call.path == "/readyz":
            return _json(response)
        raise _error(call, response)

    def job(self, service: str, job_id: str) -> dict[str, Any]:
        """A job record from the service that ran it."""
        return self.send(Call(service, "GET", f"/v1/jobs/{job_id}"))

    def cancel(self, service: str, job_id: str) -> None:
        """Ask the service to cancel a job (cooperative)."""
        self.send(Call(service, "POST", f"/v1/jobs/{job_id}/cancel"))


def _json(response: httpx.Response) -> dict[str, Any]:
    if not response.content:
        return {}
    try:
        body = response.json()
    except ValueError:
        return {}
    return body if isinstance(body, dict) else {"items": body}


def _error(call: Call, response: httpx.Response) -> StepCallError:
    body = _json(response)  # the suite's error body: {"detail", "code", "request_id"}
    code = str(body.get("code") or f"http_{response.status_code}")
    detail = body.get("detail") or response.reason_phrase
    message = detail if isinstance(detail, str) else json.dumps(detail)[:_MAX_DETAIL]
    transient = response.status_code in (408, 425, 429) or response.status_code >= 500
    where = f"{call.method} {call.service}{call.path}"
    return StepCallError(f"{where} -> {response.status_code}: {message}", code, transient)
