"""The sink dispatcher: routing by model and key, order, retries, bounded queues, 4xx drops."""

from __future__ import annotations

import asyncio
import json

import numpy as np
import pytest

from services.inference.config import SinkSpec
from services.inference.ml.detections import Detections
from services.inference.stores.models import ModelKey
from services.inference.usecases.sink_transports import PermanentSinkError, TransientSinkError
from services.inference.usecases.sinks import SinkDispatcher, event_now

BOX = Detections(np.array([[1, 2, 30, 40]], np.float32), np.array([0.5]), np.array([1]), (48, 64))


class Recording:
    """A transport that fails while ``down`` and records what it delivered."""

    def __init__(self, *, down: bool = False, refuse: bool = False) -> None:
        self.down = down
        self.refuse = refuse
        self.delivered: list[tuple[str, dict[str, object]]] = []
        self.attempts = 0

    async def deliver(self, topic: str, body: bytes) -> None:
        self.attempts += 1
        if self.refuse:
            raise PermanentSinkError("400")
        if self.down:
            raise TransientSinkError("down")
        self.delivered.append((topic, json.loads(body)))

    async def close(self) -> None:
        pass


def _spec(**fields: object) -> SinkSpec:
    values: dict[str, object] = {"name": "s", "kind": "mqtt", "url": "mqtt://127.0.0.1:1"}
    return SinkSpec.model_validate(values | fields)


def _event(key: str | None, model: str = "det") -> object:
    return event_now(ModelKey(model, "v1"), key, BOX, {1: "dent"}, None)


async def _until(predicate: object, timeout_s: float = 5.0) -> None:
    deadline = asyncio.get_running_loop().time() + timeout_s
    while not predicate():  # type: ignore[operator]
        assert asyncio.get_running_loop().time() < deadline, "condition never held"
        await asyncio.sleep(0.01)


def test_results_are_routed_by_model_and_key_with_the_topic_filled_in() -> None:
    sinks = {"all": Recording(), "cam": Recording(), "other": Recording()}
    specs = [
        _spec(name="all", topic="t/{model}/{version}/{key}"),
        _spec(name="cam", keys=["cam-1"]),
        _spec(name="other", models=["other-model"]),
    ]

    async def scenario() -> None:
        dispatcher = SinkDispatcher(specs, transport_factory=lambda s: sinks[s.name])
        dispatcher.offer(_event("cam-1"))  # type: ignore[arg-type]
        dispatcher.offer(_event(None))  # type: ignore[arg-type]
        await _until(lambda: len(sinks["all"].delivered) == 2)
        await dispatcher.close()

    asyncio.run(scenario())
    assert [t for t, _ in sinks["all"].delivered] == ["t/det/v1/cam-1", "t/det/v1/default"]
    assert [b["key"] for _, b in sinks["cam"].delivered] == ["cam-1"]
    assert sinks["other"].delivered == []
    body = sinks["all"].delivered[0][1]
    assert body["detections"] == [
        {"box_xyxy": [1.0, 2.0, 30.0, 40.0], "class_id": 1, "class_name": "dent", "score": 0.5}
    ]
    assert body["image"] == {"width": 64, "height": 48}


def test_a_sink_that_is_down_keeps_the_newest_results_and_delivers_them_in_order() -> None:
    transport = Recording(down=True)

    async def scenario() -> dict[str, int]:
        dispatcher = SinkDispatcher(
            [_spec(max_queue=3)], retry_max_s=0.05, transport_factory=lambda _: transport
        )
        for i in range(5):
            dispatcher.offer(_event(f"k{i}"))  # type: ignore[arg-type]
        await _until(lambda: transport.attempts >= 3)
        transport.down = False
        await _until(lambda: dispatcher.stats()["s"].queue_depth == 0)
        stats = dispatcher.stats()["s"]
        await dispatcher.close()
        return {"dropped": stats.dropped, "delivered": stats.delivered, "retries": stats.retries}

    counts = asyncio.run(scenario())
    # k0 and k1 were dropped when k3 and k4 arrived (queue of 3); the rest kept their order
    assert [b["key"] for _, b in transport.delivered] == ["k2", "k3", "k4"]
    assert (counts["delivered"], counts["dropped"]) == (3, 2)
    assert counts["retries"] >= 2


def test_a_refused_result_is_dropped_and_counted_not_retried() -> None:
    transport = Recording(refuse=True)

    async def scenario() -> int:
        dispatcher = SinkDispatcher([_spec()], transport_factory=lambda _: transport)
        dispatcher.offer(_event("a"))  # type: ignore[arg-type]
        await _until(lambda: dispatcher.stats()["s"].failed == 1)
        await asyncio.sleep(0.05)
        await dispatcher.close()
        return transport.attempts

    assert asyncio.run(scenario()) == 1


@pytest.mark.parametrize(
    ("kind", "url"), [("mqtt", "http://x"), ("webhook", "mqtt://x"), ("webhook", "ftp://x")]
)
def test_a_sink_url_must_fit_its_kind(kind: str, url: str) -> None:
    with pytest.raises(ValueError, match="must start with"):
        _spec(kind=kind, url=url)
