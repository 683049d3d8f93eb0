"""With no model configured, /detect serves the detector most recently promoted to production."""

from __future__ import annotations

import asyncio
from pathlib import Path

import numpy as np
import pytest
from fastapi.testclient import TestClient

from services.inference.api.main import create_app
from services.inference.runtime.build import build_runtime
from services.inference.stores.models import ModelKey
from services.inference.usecases.detect import DetectOptions, detect
from shared.errors import UnavailableError
from shared.storage.filesystem import FileObjectStore
from tests.unit.inference.serving import FakeDetector, encode, publish, settings_for

IMAGE = encode(np.full((32, 48, 3), 90, np.uint8))
OPTIONS = DetectOptions(conf=0.25, iou=0.7, max_det=300)


def test_the_default_follows_the_latest_promotion_across_models(tmp_path: Path) -> None:
    store = FileObjectStore(tmp_path / "store")
    settings = settings_for(tmp_path, model_name="")  # nothing configured, as after `agssp up`
    served: list[ModelKey | None] = []

    async def scenario() -> None:
        runtime = build_runtime(settings, store, factory=lambda _: FakeDetector())
        await runtime.refresh()  # nothing promoted yet
        with pytest.raises(UnavailableError, match="none promoted to 'production'"):
            await detect(runtime, IMAGE, OPTIONS, settings=settings)
        publish(store, "v1", b"a1", name="alpha")
        publish(store, "v1", b"b1", name="beta", stage=None)  # published, never promoted
        await runtime.refresh()
        served.append((await detect(runtime, IMAGE, OPTIONS, settings=settings)).model)
        publish(store, "v1", b"b1", name="beta")  # promoting beta moves its pointer
        await runtime.refresh()
        served.append((await detect(runtime, IMAGE, OPTIONS, settings=settings)).model)
        publish(store, "v2", b"a2", name="alpha")  # then alpha again, a new version
        await runtime.refresh()
        served.append((await detect(runtime, IMAGE, OPTIONS, settings=settings)).model)
        await runtime.close()

    asyncio.run(scenario())
    assert served == [ModelKey("alpha", "v1"), ModelKey("beta", "v1"), ModelKey("alpha", "v2")]


def test_at_start_the_newest_promoted_version_is_served_and_ready(tmp_path: Path) -> None:
    # given two promoted models before the server starts; beta's version is the newer
    store = FileObjectStore(tmp_path / "store")
    publish(store, "v1", b"a1", name="alpha")
    publish(store, "v1", b"b1", name="beta")
    app = create_app(
        settings_for(tmp_path, model_name=""),
        store=store,
        detector_factory=lambda _: FakeDetector(),
    )
    with TestClient(app) as client:
        ready = client.get("/readyz")
        body = client.post("/detect", content=IMAGE, headers={"content-type": "image/png"}).json()
        models = client.get("/v1/models").json()
    assert ready.status_code == 200
    assert body["model"] == {"name": "beta", "version": "v1"}
    assert models["followed"]["name"] == "beta"
    assert models["followed"]["stage"] == "production"


def test_a_configured_model_name_is_never_replaced_by_promotions(tmp_path: Path) -> None:
    store = FileObjectStore(tmp_path / "store")
    publish(store, "v1", b"d1")  # the configured model "detector"
    settings = settings_for(tmp_path)

    async def scenario() -> ModelKey:
        runtime = build_runtime(settings, store, factory=lambda _: FakeDetector())
        await runtime.refresh()
        publish(store, "v1", b"o1", name="other")
        await runtime.refresh()
        result = await detect(runtime, IMAGE, OPTIONS, settings=settings)
        await runtime.close()
        return result.model

    assert asyncio.run(scenario()) == ModelKey("detector", "v1")
