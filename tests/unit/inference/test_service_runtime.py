"""ModelRuntime with fake detectors: batching, hot swaps, LRU, back-pressure, readiness, failures."""

from __future__ import annotations

import asyncio
import threading
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from services.inference.ml.detections import DetectParams
from services.inference.runtime.model_runtime import ModelRuntime
from services.inference.runtime.slots import BatchingConfig, Outcome
from services.inference.stores.models import ModelFiles, ModelKey, ModelRegistry, ModelTarget
from shared.errors import NotFoundError, OverloadedError, UnavailableError
from shared.storage.artifacts import ArtifactStore
from shared.storage.filesystem import FileObjectStore
from tests.unit.inference.serving import GUARD_S, MODEL, FakeDetector, publish

DEFAULT = ModelTarget(MODEL, stage="production", fallback=True)
IMAGE = np.zeros((48, 64, 3), np.uint8)


def params(_: Any) -> DetectParams:
    return DetectParams()


def run(scenario: Callable[[], Awaitable[Any]]) -> Any:
    async def guarded() -> Any:
        return await asyncio.wait_for(scenario(), GUARD_S)

    return asyncio.run(guarded())


class Factory:
    """Opens a FakeDetector per version; counts opens; fails for versions in ``broken``."""

    def __init__(self, **detectors: FakeDetector) -> None:
        self.detectors = detectors
        self.opened: list[str] = []
        self.broken: set[str] = set()

    def __call__(self, files: ModelFiles) -> FakeDetector:
        self.opened.append(files.key.version)
        if files.key.version in self.broken:
            raise RuntimeError("corrupt export")
        return self.detectors.setdefault(files.key.version, FakeDetector())


@pytest.fixture
def store(tmp_path: Path) -> FileObjectStore:
    return FileObjectStore(tmp_path / "store")


@pytest.fixture
def make_runtime(
    store: FileObjectStore, tmp_path: Path
) -> Callable[..., tuple[ModelRuntime, list[str | None]]]:
    def make(factory: Factory, **kwargs: Any) -> tuple[ModelRuntime, list[str | None]]:
        statuses: list[str | None] = []
        batching = kwargs.pop("batching", BatchingConfig(max_queue_delay_ms=1))
        runtime = ModelRuntime(
            registry=ModelRegistry(ArtifactStore(store), tmp_path / "cache"),
            factory=factory,
            batching=batching,
            max_resident=kwargs.pop("max_resident", 2),
            default=kwargs.pop("default", DEFAULT),
            on_default_status=statuses.append,
            **kwargs,
        )
        return runtime, statuses

    return make


def versions(outcomes: list[Outcome]) -> list[str]:
    return [o.run.key.version for o in outcomes]


def test_concurrent_requests_share_one_batch_call(
    store: FileObjectStore, make_runtime: Any
) -> None:
    # given a window long enough for four callers
    publish(store, "v1", b"1")
    factory = Factory()
    runtime, _ = make_runtime(factory, batching=BatchingConfig(4, 1000, 16))

    # when four requests arrive together, with more on their way (so the batch waits)
    async def scenario() -> list[Outcome]:
        await runtime.refresh()
        with runtime.arriving():
            outcomes = await asyncio.gather(
                *(runtime.submit(None, IMAGE, params) for _ in range(4))
            )
        await runtime.close()
        return list(outcomes)

    outcomes = run(scenario)

    # then the model ran once, and every answer says so
    assert factory.detectors["v1"].batches == [4]
    assert [o.run.size for o in outcomes] == [4, 4, 4, 4]
    assert versions(outcomes) == ["v1"] * 4


def test_a_promoted_version_is_swapped_in_without_dropping_requests(
    store: FileObjectStore, make_runtime: Any
) -> None:
    # given v1 serving, its batch call held shut with one request in it and two queued
    publish(store, "v1", b"1")
    gate = threading.Event()
    factory = Factory(v1=FakeDetector(gate=gate))
    runtime, _ = make_runtime(factory, batching=BatchingConfig(1, 0, 16))

    async def scenario() -> tuple[list[Outcome], Outcome]:
        await runtime.refresh()
        first = asyncio.ensure_future(runtime.submit(None, IMAGE, params))
        while runtime.resident()[0].stats.in_flight == 0:
            await asyncio.sleep(0.01)
        queued = [asyncio.ensure_future(runtime.submit(None, IMAGE, params)) for _ in range(2)]
        await asyncio.sleep(0)

        # when v2 is promoted and the registry is re-read
        publish(store, "v2", b"2")
        await runtime.refresh()
        gate.set()
        outcomes = await asyncio.gather(first, *queued)
        later = await runtime.submit(None, IMAGE, params)
        await runtime.close()
        return list(outcomes), later

    outcomes, later = run(scenario)

    # then the request in flight finished on v1, the queued ones and later ones ran on v2
    assert versions(outcomes) == ["v1", "v2", "v2"]
    assert later.run.key == ModelKey(MODEL, "v2")


def test_requests_for_other_versions_load_them_beside_the_default(
    store: FileObjectStore, make_runtime: Any
) -> None:
    publish(store, "v1", b"1")
    publish(store, "v2", b"2", stage=None)
    runtime, _ = make_runtime(Factory())

    async def scenario() -> tuple[Outcome, list[str]]:
        await runtime.refresh()
        pinned = await runtime.submit(ModelTarget(MODEL, version="v2"), IMAGE, params)
        slots = [m.slot for m in runtime.resident()]
        await runtime.close()
        return pinned, slots

    pinned, slots = run(scenario)
    assert pinned.run.key == ModelKey(MODEL, "v2")
    assert slots == ["default", f"{MODEL}@v2"]


def test_the_least_recently_used_model_is_evicted_and_the_default_never(
    store: FileObjectStore, make_runtime: Any
) -> None:
    # given room for the default and one more
    for version in ("v1", "v2", "v3"):
        publish(store, version, version.encode(), stage="production" if version == "v1" else None)
    runtime, _ = make_runtime(Factory(), max_resident=2)

    # when two other versions are asked for in turn
    async def scenario() -> list[str]:
        await runtime.refresh()
        for version in ("v2", "v3"):
            await runtime.submit(ModelTarget(MODEL, version=version), IMAGE, params)
        resident = [m.key.version for m in runtime.resident()]
        await runtime.close()
        return resident

    # then the default (v1) stays and v2 made room for v3
    assert run(scenario) == ["v1", "v3"]


def test_an_evicted_model_still_answers_what_it_had_accepted(
    store: FileObjectStore, make_runtime: Any
) -> None:
    # given a pinned v2 whose batch call is held shut with a request in it
    for version in ("v1", "v2", "v3"):
        publish(store, version, version.encode(), stage="production" if version == "v1" else None)
    gate = threading.Event()
    runtime, _ = make_runtime(Factory(v2=FakeDetector(gate=gate)), max_resident=2)

    async def scenario() -> tuple[Outcome, Outcome]:
        await runtime.refresh()
        held = asyncio.ensure_future(
            runtime.submit(ModelTarget(MODEL, version="v2"), IMAGE, params)
        )
        while not runtime.resident()[1:] or runtime.resident()[1].stats.in_flight == 0:
            await asyncio.sleep(0.01)

        # when v3 evicts it
        other = await runtime.submit(ModelTarget(MODEL, version="v3"), IMAGE, params)
        gate.set()
        answered = await held
        await runtime.close()
        return answered, other

    answered, other = run(scenario)

    # then the accepted request still got its answer from v2
    assert answered.run.key.version == "v2"
    assert other.run.key.version == "v3"


def test_a_cap_of_one_keeps_the_slot_for_the_default_model(
    store: FileObjectStore, make_runtime: Any
) -> None:
    publish(store, "v1", b"1")
    runtime, _ = make_runtime(Factory(), max_resident=1)

    async def scenario() -> None:
        await runtime.refresh()
        try:
            await runtime.submit(ModelTarget(MODEL, version="v1"), IMAGE, params)
        finally:
            await runtime.close()

    with pytest.raises(UnavailableError) as info:
        run(scenario)
    assert info.value.code == "model_capacity"


def test_a_full_queue_answers_overloaded(store: FileObjectStore, make_runtime: Any) -> None:
    # given one request in flight (held) and one queued, the queue's size
    publish(store, "v1", b"1")
    gate = threading.Event()
    runtime, _ = make_runtime(Factory(v1=FakeDetector(gate=gate)), batching=BatchingConfig(1, 0, 1))

    async def scenario() -> OverloadedError:
        await runtime.refresh()
        accepted = [asyncio.ensure_future(runtime.submit(None, IMAGE, params))]
        while runtime.resident()[0].stats.in_flight == 0:
            await asyncio.sleep(0.01)
        accepted.append(asyncio.ensure_future(runtime.submit(None, IMAGE, params)))
        await asyncio.sleep(0)

        # when one more arrives
        with pytest.raises(OverloadedError) as info:
            await runtime.submit(None, IMAGE, params)
        gate.set()
        await asyncio.gather(*accepted)
        await runtime.close()
        return info.value

    # then it is refused as 429 with a retry hint
    error = run(scenario)
    assert error.http_status == 429
    assert error.retry_after_s >= 1


def test_without_a_default_model_requests_are_unavailable_and_readiness_says_why(
    store: FileObjectStore, make_runtime: Any
) -> None:
    # given a configured model that has no published version yet
    runtime, statuses = make_runtime(Factory())

    async def scenario() -> tuple[UnavailableError, str | None]:
        await runtime.refresh()
        with pytest.raises(UnavailableError) as info:
            await runtime.submit(None, IMAGE, params)
        # when it is published and the registry re-read
        publish(store, "v1", b"1")
        await runtime.refresh()
        served = runtime.default_key
        await runtime.close()
        return info.value, None if served is None else served.version

    error, served = run(scenario)

    # then requests were refused with 503 naming the reason, and readiness followed
    assert error.code == "model_not_loaded"
    assert "no published version" in error.message
    assert statuses[0] is not None
    assert "no published version" in statuses[0]
    assert statuses[-1] is None
    assert served == "v1"


def test_no_configured_model_is_reported_as_such(make_runtime: Any) -> None:
    runtime, statuses = make_runtime(Factory(), default=None)

    async def scenario() -> None:
        await runtime.refresh()
        await runtime.close()

    run(scenario)
    assert statuses == [
        "no model configured: set INFERENCE_MODEL_NAME or INFERENCE_LOCAL_MODEL_PATH"
    ]


def test_a_model_that_fails_to_open_is_not_retried_on_every_request(
    store: FileObjectStore, make_runtime: Any
) -> None:
    # given a version whose export is broken
    publish(store, "v1", b"1")
    publish(store, "v2", b"2", stage=None)
    factory = Factory()
    factory.broken.add("v2")
    runtime, _ = make_runtime(factory, retry_failed_after_s=3600)

    # when it is asked for three times
    async def scenario() -> list[UnavailableError]:
        await runtime.refresh()
        target = ModelTarget(MODEL, version="v2")
        errors = []
        for _ in range(3):
            with pytest.raises(UnavailableError) as info:
                await runtime.submit(target, IMAGE, params)
            errors.append(info.value)
        await runtime.close()
        return errors

    errors = run(scenario)

    # then every caller got 503 model_load_failed, but the export was opened only once
    assert {e.code for e in errors} == {"model_load_failed"}
    assert factory.opened.count("v2") == 1


def test_a_broken_new_version_leaves_the_current_one_serving(
    store: FileObjectStore, make_runtime: Any
) -> None:
    # given v1 serving, then a broken v2 promoted
    publish(store, "v1", b"1")
    factory = Factory()
    factory.broken.add("v2")
    runtime, _ = make_runtime(factory)

    async def scenario() -> tuple[Outcome, str | None]:
        await runtime.refresh()
        publish(store, "v2", b"2")
        await runtime.refresh()
        outcome = await runtime.submit(None, IMAGE, params)
        error = runtime.resident()[0].last_error
        await runtime.close()
        return outcome, error

    outcome, error = run(scenario)

    # then v1 still answers and the listing says why v2 is not served
    assert outcome.run.key.version == "v1"
    assert error is not None
    assert "corrupt export" in error


def test_unknown_versions_are_not_found(store: FileObjectStore, make_runtime: Any) -> None:
    publish(store, "v1", b"1")
    runtime, _ = make_runtime(Factory())

    async def scenario() -> None:
        await runtime.refresh()
        try:
            await runtime.submit(ModelTarget(MODEL, version="v404"), IMAGE, params)
        finally:
            await runtime.close()

    with pytest.raises(NotFoundError):
        run(scenario)


def test_two_targets_on_the_same_version_share_one_detector(
    store: FileObjectStore, make_runtime: Any
) -> None:
    # given production = v1, and a request pinning v1 explicitly
    publish(store, "v1", b"1")
    factory = Factory()
    runtime, _ = make_runtime(factory)

    async def scenario() -> None:
        await runtime.refresh()
        await runtime.submit(ModelTarget(MODEL, version="v1"), IMAGE, params)
        await runtime.close()

    run(scenario)

    # then the export was opened once
    assert factory.opened == ["v1"]
