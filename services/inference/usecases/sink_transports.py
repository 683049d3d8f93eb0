"""How a result reaches a line system: an MQTT broker (paho-mqtt) or an HTTP webhook (httpx).

A transport raises ``TransientSinkError`` when trying again later may work (broker down,
timeout, 5xx, 429) and ``PermanentSinkError`` when it never will (4xx); the dispatcher in
``sinks`` owns retries and queues.
"""

from __future__ import annotations

import asyncio
import logging
import uuid
from typing import Any, Protocol
from urllib.parse import unquote, urlsplit

import httpx

from services.inference.config import SinkSpec

logger = logging.getLogger(__name__)


class TransientSinkError(Exception):
    """Delivery failed; the same message may succeed later."""


class PermanentSinkError(Exception):
    """Delivery failed in a way retrying cannot fix; the message is dropped."""


class Transport(Protocol):
    """Delivers one encoded message."""

    async def deliver(self, topic: str, body: bytes) -> None: ...

    async def close(self) -> None: ...


class MqttTransport:
    """One paho client per sink; paho's network thread connects and reconnects by itself.

    Delivery is at least once: QoS 1 publishes wait for the broker's PUBACK, and a message
    is never handed to paho while it is disconnected (paho would queue it on its own and a
    retry of ours would duplicate it).
    """

    def __init__(self, spec: SinkSpec, *, reconnect_max_s: float) -> None:
        # deferred: paho-mqtt is the "sinks" extra
        import paho.mqtt.client as mqtt
        from paho.mqtt.enums import CallbackAPIVersion

        url = urlsplit(spec.url)
        self._qos = spec.qos
        self._timeout_s = spec.timeout_s
        self._client: Any = mqtt.Client(
            CallbackAPIVersion.VERSION2,
            client_id=f"agssp-inference-{spec.name}-{uuid.uuid4().hex[:8]}",
        )
        if url.username:
            self._client.username_pw_set(unquote(url.username), unquote(url.password or ""))
        self._client.reconnect_delay_set(1, max(1, round(reconnect_max_s)))
        self._client.connect_async(url.hostname or "localhost", url.port or 1883, keepalive=30)
        self._client.loop_start()

    async def deliver(self, topic: str, body: bytes) -> None:
        await asyncio.to_thread(self._publish, topic, body)

    def _publish(self, topic: str, body: bytes) -> None:
        if not self._client.is_connected():
            raise TransientSinkError("not connected to the MQTT broker")
        info = self._client.publish(topic, body, qos=self._qos)
        if info.rc != 0:
            raise TransientSinkError(f"MQTT publish failed with code {info.rc}")
        try:
            info.wait_for_publish(self._timeout_s)
        except (RuntimeError, ValueError) as exc:  # connection lost while waiting
            raise TransientSinkError(f"MQTT publish not acknowledged: {exc}") from exc
        if not info.is_published():
            raise TransientSinkError(f"MQTT broker did not acknowledge in {self._timeout_s} s")

    async def close(self) -> None:
        await asyncio.to_thread(self._stop)

    def _stop(self) -> None:
        self._client.disconnect()
        self._client.loop_stop()


class WebhookTransport:
    """POSTs each message as JSON to one URL."""

    def __init__(self, spec: SinkSpec) -> None:
        self._url = spec.url
        self._headers = {"content-type": "application/json", **spec.headers}
        self._client = httpx.AsyncClient(timeout=spec.timeout_s)

    async def deliver(self, topic: str, body: bytes) -> None:
        try:
            response = await self._client.post(self._url, content=body, headers=self._headers)
        except httpx.HTTPError as exc:
            raise TransientSinkError(f"webhook unreachable: {type(exc).__name__}") from exc
        if response.status_code in (408, 429) or response.status_code >= 500:
            raise TransientSinkError(f"webhook answered {response.status_code}")
        if response.status_code >= 400:
            raise PermanentSinkError(f"webhook refused the message: {response.status_code}")

    async def close(self) -> None:
        await self._client.aclose()


def open_transport(spec: SinkSpec, *, reconnect_max_s: float) -> Transport:
    """The transport a spec names."""
    if spec.kind == "mqtt":
        return MqttTransport(spec, reconnect_max_s=reconnect_max_s)
    return WebhookTransport(spec)
