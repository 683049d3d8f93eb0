"""Result sinks over real sockets: a mosquitto broker that goes down and comes back, and a
local webhook receiver that fails at first; ``/detect`` latency must not notice either."""

from __future__ import annotations

import io
import json
import shutil
import socket
import statistics
import threading
import time
from collections.abc import Callable, Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import httpx
import numpy as np
import pytest
from PIL import Image

from tests.integration.inference.conftest import MODEL
from tests.integration.inference.support import Exports, Publish, Serve
from tests.integration.suite import wait_for
from tests.servers import ServerHandle, free_port

pytestmark = pytest.mark.timeout(240)

PER_PHASE = 12
TOPIC = "agssp/line/{model}/{key}"


def _png() -> bytes:
    rng = np.random.default_rng(1)
    out = io.BytesIO()
    Image.fromarray(rng.integers(0, 256, (160, 160, 3), dtype=np.uint8)).save(out, "PNG")
    return out.getvalue()


PICTURE = _png()


def _port_open(port: int) -> Callable[[], bool]:
    def ready() -> bool:
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=1.0):
                return True
        except OSError:
            return False

    return ready


@pytest.fixture
def broker(tmp_path: Path) -> Iterator[ServerHandle]:
    """mosquitto on a free loopback port, persistent so a stopped broker keeps sessions."""
    binary = shutil.which("mosquitto")
    if binary is None:
        pytest.skip("mosquitto is not installed (apt-get install mosquitto; scripts/setup.sh)")
    port = free_port()
    data = tmp_path / "mosquitto"
    data.mkdir()
    conf = data / "mosquitto.conf"
    conf.write_text(
        f"listener {port} 127.0.0.1\nallow_anonymous true\n"
        f"persistence true\npersistence_location {data}/\nautosave_interval 1\n"
    )
    handle = ServerHandle(
        "mosquitto", f"mqtt://127.0.0.1:{port}", port, [binary, "-c", str(conf)], _port_open(port)
    )
    handle.start()
    yield handle
    handle.close()


class Subscriber:
    """A persistent-session MQTT subscriber: messages published while it is away (or while the
    broker restarts) are queued for it by the broker and arrive when it reconnects."""

    def __init__(self, port: int) -> None:
        import paho.mqtt.client as mqtt
        from paho.mqtt.enums import CallbackAPIVersion

        self.messages: list[dict[str, Any]] = []
        self._lock = threading.Lock()
        self._client: Any = mqtt.Client(
            CallbackAPIVersion.VERSION2, client_id="it-subscriber", clean_session=False
        )
        self._client.on_connect = lambda c, *_: c.subscribe("agssp/#", qos=1)
        self._client.on_message = self._on_message
        self._client.reconnect_delay_set(1, 1)
        self._client.connect("127.0.0.1", port)
        self._client.loop_start()
        wait_for(self._client.is_connected, 10, "subscriber never connected")

    def _on_message(self, client: Any, userdata: Any, message: Any) -> None:
        with self._lock:
            self.messages.append({"topic": message.topic, **json.loads(message.payload)})

    def routing_keys(self) -> list[str]:
        with self._lock:
            return [m["key"] for m in self.messages]

    def close(self) -> None:
        self._client.disconnect()
        self._client.loop_stop()


class Receiver(BaseHTTPRequestHandler):
    """Webhook endpoint: answers 503 to the first ``fail_first`` posts, then 204."""

    received: list[dict[str, Any]]
    attempts: list[int]
    fail_first = 2

    def do_POST(self) -> None:
        body = self.rfile.read(int(self.headers["content-length"]))
        self.attempts.append(1)
        if len(self.attempts) <= self.fail_first:
            self.send_response(503)
        else:
            self.received.append(json.loads(body))
            self.send_response(204)
        self.end_headers()

    def log_message(self, format: str, *args: Any) -> None:
        pass


@pytest.fixture
def webhook() -> Iterator[tuple[str, type[Receiver]]]:
    handler = type("TestReceiver", (Receiver,), {"received": [], "attempts": []})
    server = ThreadingHTTPServer(("127.0.0.1", 0), handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{server.server_address[1]}/hook", handler
    server.shutdown()
    server.server_close()


def _phase(client: httpx.Client, url: str, name: str) -> list[float]:
    latencies = []
    for i in range(PER_PHASE):
        started = time.perf_counter()
        response = client.post(
            f"{url}/detect",
            params={"key": f"{name}-{i}", "conf": "0.01"},
            content=PICTURE,
            headers={"content-type": "image/png"},
        )
        latencies.append(time.perf_counter() - started)
        assert response.status_code == 200, response.text
    return latencies


def test_a_broker_outage_does_not_slow_detect_and_results_arrive_after_it_returns(
    serve: Serve,
    publish: Publish,
    exports: Exports,
    broker: ServerHandle,
    webhook: tuple[str, type[Receiver]],
) -> None:
    # given a served model with an MQTT sink and a webhook sink, and a listening subscriber
    publish("v1", exports.v1)
    hook_url, receiver = webhook
    sinks = [
        {"name": "line", "kind": "mqtt", "url": broker.url, "topic": TOPIC, "models": [MODEL]},
        {"name": "mes", "kind": "webhook", "url": hook_url, "keys": ["up-0", "up-1", "up-2"]},
    ]
    proc, url = serve(sinks=json.dumps(sinks), sink_retry_max_s="1")
    subscriber = Subscriber(broker.port)
    try:
        with httpx.Client(timeout=30) as client:
            _phase(client, url, "warm")
            wait_for(
                lambda: len(subscriber.routing_keys()) == PER_PHASE, 20, "warm-up not delivered"
            )
            # when: requests with the broker up, then with it down
            up = _phase(client, url, "up")
            wait_for(
                lambda: len(subscriber.routing_keys()) == 2 * PER_PHASE, 20, "'up' not delivered"
            )
            broker.stop()
            time.sleep(0.5)  # the sink notices the lost connection
            down = _phase(client, url, "down")
            # then no 'down' result could have been delivered yet, and /detect did not slow
            assert not [k for k in subscriber.routing_keys() if k.startswith("down")]
            assert statistics.median(down) <= 1.5 * statistics.median(up) + 0.05, (up, down)
            stats = client.get(f"{url}/v1/sinks").json()["sinks"]
            line = next(s for s in stats if s["name"] == "line")
            assert line["queue_depth"] >= PER_PHASE - 1  # one may be in an attempt right now
            assert line["retries"] > 0
            # and once the broker is back, every queued result arrives, in order
            broker.start()
            expected = [f"down-{i}" for i in range(PER_PHASE)]
            wait_for(
                lambda: [k for k in subscriber.routing_keys() if k.startswith("down")] == expected,
                30,
                lambda: f"got {subscriber.routing_keys()}\n{proc.tail()}",
            )
            metrics = client.get(f"{url}/metrics").text
    finally:
        subscriber.close()
    topics = {m["topic"] for m in subscriber.messages}
    assert f"agssp/line/{MODEL}/down-0" in topics
    assert 'agssp_inference_sink_retries_total{sink="line"}' in metrics
    # the webhook got exactly the three keys it lists, after two refused attempts
    wait_for(lambda: len(receiver.received) == 3, 10, "webhook results missing")
    assert [r["key"] for r in receiver.received] == ["up-0", "up-1", "up-2"]
    assert len(receiver.attempts) == 5
    assert receiver.received[0]["model"]["name"] == MODEL
