"""With no INFERENCE_MODEL_NAME (as after `agssp up`), the server on moto S3 serves the
detector most recently promoted to production, and follows the next promotion."""

from __future__ import annotations

import io

import httpx
import numpy as np
import pytest
from PIL import Image

from shared.schemas.detector_artifact import CLASSES_FILE, ONNX_FILE, classes_json
from shared.storage.artifacts import ArtifactStore
from shared.storage.factory import create_store
from tests.integration.inference.conftest import MODEL
from tests.integration.inference.support import Exports, Publish, Serve
from tests.integration.suite import SuiteEnv

pytestmark = pytest.mark.timeout(180)


def _png() -> bytes:
    out = io.BytesIO()
    Image.fromarray(np.full((96, 128, 3), 120, np.uint8)).save(out, "PNG")
    return out.getvalue()


def test_no_configured_model_follows_the_latest_promotion(
    serve: Serve, publish: Publish, exports: Exports, senv: SuiteEnv
) -> None:
    # given one promoted detector and a server started without a model name
    publish("v1", exports.v1)
    _, url = serve(model_name="")
    with httpx.Client(timeout=30) as client:
        first = client.post(f"{url}/detect", content=_png(), headers={"content-type": "image/png"})
        # when another detector is promoted later
        artifacts = ArtifactStore(create_store(senv.settings))
        classes = classes_json([f"class{i}" for i in range(80)])
        artifacts.publish(
            "other-line", {ONNX_FILE: exports.v2, CLASSES_FILE: classes}, version="v7"
        )
        artifacts.promote("other-line", "v7", "production")
        reload = client.post(f"{url}/v1/models/reload")
        second = client.post(f"{url}/detect", content=_png(), headers={"content-type": "image/png"})
    # then
    assert first.status_code == 200, first.text
    assert first.json()["model"] == {"name": MODEL, "version": "v1"}
    assert reload.status_code == 200
    assert reload.json()["followed"]["name"] == "other-line"
    assert second.json()["model"] == {"name": "other-line", "version": "v7"}
