"""The method catalogue is the service's only list of anomaly-map methods: each method has
its own folder under ``ml/``, and adding one is a folder and a row. The second test adds a
row (a CLIP method whose scorer halves KeAD's maps) and finds it served by the API, checked
by the request schema, built by ``load_scorers`` and published by ``/readyz`` (which the
console's method lists read), with no other edit."""

from __future__ import annotations

import base64
import json
from collections.abc import MutableMapping
from pathlib import Path
from typing import cast

import numpy as np
import pytest
from fastapi.testclient import TestClient

import services.anomaly_map.ml as ml_package
from services.anomaly_map.api.main import create_app
from services.anomaly_map.api.schemas import MapParams
from services.anomaly_map.params.catalog import CATALOG, CLIP_NEEDS, MethodSpec
from services.anomaly_map.runtime.methods import method_for
from shared.storage.filesystem import FileObjectStore
from tests.unit.anomaly_map.test_service_support import (
    image_bytes,
    make_engine,
    make_settings,
    tiny_scorers,
)

SPEC = {"map": "metal surface", "good": ["{} without holes"], "defect": ["{} with a crack"]}
HALF = MethodSpec(
    "halfkead", "Half KeAD", CLIP_NEEDS, "tests.unit.anomaly_map.extra_method:HalfKead", "test"
)


def test_every_method_lives_in_its_own_folder() -> None:
    # given
    ml_dir = Path(next(iter(ml_package.__path__)))
    for name, spec in CATALOG.items():
        module, _, attribute = spec.scorer.partition(":")
        # then
        assert module.startswith(f"services.anomaly_map.ml.{name}."), (name, module)
        assert (ml_dir / name / "__init__.py").is_file(), name
        assert spec.load_scorer().__name__ == attribute


def _map(client: TestClient, mode: str) -> tuple[np.ndarray, float]:
    response = client.post(
        "/v1/anomaly-maps",
        files={"image": ("x.png", image_bytes(seed=3), "image/png")},
        data={"category": "tile", "mode": mode},
    )
    assert response.status_code == 200, response.text
    body = response.json()
    values = np.frombuffer(base64.b64decode(body["map"]["data"]), dtype="<f4")
    return values, float(body["image_score"])


def test_a_new_method_is_one_catalogue_row(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, request: pytest.FixtureRequest
) -> None:
    # given one row, added before the service starts (as a module-level row would be)
    monkeypatch.setitem(cast(MutableMapping[str, MethodSpec], CATALOG), HALF.name, HALF)
    tiny_scorers.cache_clear()  # the shared scorers were built from the catalogue without it
    request.addfinalizer(tiny_scorers.cache_clear)
    settings = make_settings(tmp_path)
    app = create_app(settings, store=FileObjectStore(tmp_path / "store"), load_engine=make_engine)
    with TestClient(app) as client:
        files = [("references", ("a.png", image_bytes(seed=1), "image/png"))]
        client.put("/v1/categories/tile", data={"spec": json.dumps(SPEC)}, files=files)
        # when
        half, half_score = _map(client, "halfkead")
        kead, kead_score = _map(client, "kead")
        ready = client.get("/readyz").json()["details"]["methods"]
    # then the new method scores through the engine with its own scorer
    np.testing.assert_allclose(half, kead * 0.5, rtol=1e-5, atol=1e-6)
    assert half_score == pytest.approx(kead_score * 0.5, rel=1e-5)
    assert MapParams(category="tile", mode="halfkead").mode == "halfkead"
    assert method_for("halfkead").needs == CLIP_NEEDS
    assert ready["halfkead"] == {
        "ready": True, "reason": None, "label": "Half KeAD", "summary": "test"
    }  # fmt: skip
    assert list(ready)[:3] == ["kead", "winclip", "tocoad"]
