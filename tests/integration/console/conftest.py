"""A running suite for the console's browser tests: real Redis and S3 servers, one worker,
the four APIs and the console as ``agssp serve`` child processes, and headless Chromium
(Debian's package, driven by Playwright) whose every request off loopback is aborted and
recorded."""

from __future__ import annotations

import json
import os
import shutil
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import httpx
import numpy as np
import pytest

from shared.storage.artifacts import ArtifactStore
from shared.storage.base import ObjectStore
from shared.storage.factory import create_store
from tests.integration.console.support import (
    CHROMIUM,
    DATASET,
    JOB_IMAGES,
    LOOPBACK,
    MODEL,
    VIEWPORT,
    Offline,
    Suite,
    steel_png,
)
from tests.integration.suite import (
    ROOT,
    Proc,
    SuiteEnv,
    start_api,
    start_worker,
    suite_env,
)
from tests.servers import ServerHandle, free_port


def _detecting_onnx(out: Path) -> Path:
    """A random-init YOLOv8n that finds boxes of varied sizes.

    Out of the box its activations shrink layer by layer, so every box is alike and scores
    are near zero; BatchNorm statistics estimated on a few images give unit-scale features,
    and a shift of the class biases lifts the best scores to about 0.2-0.9.
    """
    import torch
    from ultralytics.models.yolo.model import YOLO

    torch.manual_seed(0)
    model: Any = YOLO("yolov8n.yaml")
    net = model.model
    rng = np.random.default_rng(0)
    calib = rng.integers(0, 256, (6, 3, 4, 4)).repeat(16, axis=2).repeat(16, axis=3)
    for module in net.modules():
        if isinstance(module, torch.nn.BatchNorm2d):
            module.reset_running_stats()
            module.momentum = None  # cumulative average: one pass sets the statistics
    net.train()
    with torch.no_grad():
        net(torch.from_numpy(calib).float() / 255)
    net.eval()
    for branch in net.model[-1].cv3:
        branch[-1].bias.data += 6.5
    net.pt_path = str(out / "det.pt")  # the exporter writes next to this path
    return Path(model.export(format="onnx", imgsz=64, dynamic=True, simplify=False))


def _publish_models(store: ObjectStore, onnx: Path) -> None:
    """Two registry versions as the finetune service publishes them; v1 is in production."""
    artifacts = ArtifactStore(store)
    classes = json.dumps([f"class{i}" for i in range(80)]).encode()
    for version, map50 in (("v1", 0.31), ("v2", 0.42)):
        meta = {
            "kind": "detector",
            "metrics": {"map50": map50, "map50_95": map50 / 2},
            "lineage": {"dataset": "steel-labelled:1", "init": {"kind": "agdp", "artifact": "x:1"}},
        }
        artifacts.publish(
            MODEL, {"model.onnx": onnx, "classes.json": classes}, version=version, metadata=meta
        )
    artifacts.promote(MODEL, "v1", "production")


def _seed(store: ObjectStore) -> None:
    for i in range(JOB_IMAGES):
        store.put_bytes(f"lines/steel/images/line_{i:02d}.png", steel_png(i))
    for i in range(6):  # a small labelled set (YOLO) for the pipeline form
        store.put_bytes(f"labelled/images/d_{i}.png", steel_png(100 + i))
        store.put_bytes(f"labelled/labels/d_{i}.txt", b"0 0.3 0.3 0.2 0.25\n")
    store.put_bytes("labelled/classes.txt", b"scratch\n")


def _import_dataset(store: ObjectStore, tmp: Path) -> None:
    """A labelled set imported as ``agssp data import`` does (its summary stored): six
    defect images (one stored twice), three labelled defect-free, YOLO flat layout."""
    from services.finetune.config import FinetuneSettings
    from services.finetune.params import DatasetImportParams
    from services.finetune.usecases.datasets import import_local_dataset
    from shared.config import CommonSettings, PathSettings

    root = tmp / "labelled-set"
    (root / "images").mkdir(parents=True)
    (root / "labels").mkdir()
    (root / "classes.txt").write_text("scratch\n")
    for i in range(9):
        (root / "images" / f"p_{i}.png").write_bytes(steel_png(300 + i))
        (root / "labels" / f"p_{i}.txt").write_text("0 0.3 0.3 0.2 0.25\n" if i < 6 else "")
    shutil.copy(root / "images" / "p_0.png", root / "images" / "p_copy.png")
    shutil.copy(root / "labels" / "p_0.txt", root / "labels" / "p_copy.txt")
    settings = FinetuneSettings(common=CommonSettings(paths=PathSettings(home=tmp)))
    params = DatasetImportParams.model_validate({"name": DATASET, "prefix": "x/"})
    import_local_dataset(store, root, params, "1", settings)


def _env(senv: SuiteEnv, tmp: Path) -> None:
    senv.env.update(
        {
            "ANOMALY_MAP_CLIP_MODEL": "tiny-vit",
            "ANOMALY_MAP_ALLOW_RANDOM_WEIGHTS": "true",
            "ANOMALY_MAP_EXTRA_MODEL_CONFIG_DIR": str(ROOT / "tests" / "fixtures"),
            "ANOMALY_MAP_DEVICE": "cpu",
            "ANOMALY_MAP_MAX_BATCH_SIZE": "1",
            "PRETRAIN_DEVICE": "cpu",
            "FINETUNE_DEVICE": "cpu",
            "FINETUNE_WORK_DIR": str(tmp / "ft"),
            "INFERENCE_MODEL_NAME": MODEL,
            "INFERENCE_POLL_INTERVAL_S": "1",
            "INFERENCE_INTRA_OP_THREADS": "1",
            "OMP_NUM_THREADS": "1",
            "YOLO_CONFIG_DIR": str(tmp / "yolo"),
        }
    )


def _start_apis(
    senv: SuiteEnv, tmp: Path, services: tuple[str, ...], urls: dict[str, str]
) -> dict[str, Proc]:
    """Start several ``agssp serve`` processes at once (as ``agssp up`` does), then wait."""
    procs = {}
    for service in services:
        port = free_port()
        argv = [sys.executable, "-m", "agssp.main", "serve", service, "--port", str(port)]
        procs[service] = Proc(argv, senv.env, tmp / f"api-{service}.log")
        urls[service] = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + 120
    for service, proc in procs.items():
        while not _healthy(urls[service]):
            assert time.monotonic() < deadline, f"{service} did not start:\n{proc.tail()}"
            time.sleep(0.2)
    return procs


def _healthy(url: str) -> bool:
    try:
        return httpx.get(f"{url}/healthz", timeout=2).status_code == 200
    except httpx.HTTPError:
        return False


@pytest.fixture(scope="module")
def suite(
    tmp_path_factory: pytest.TempPathFactory, redis_server: ServerHandle, s3_server: ServerHandle
) -> Iterator[Suite]:
    if shutil.which(CHROMIUM) is None:
        pytest.skip(f"no Chromium at {CHROMIUM} (scripts/setup.sh installs Debian's chromium)")
    tmp = tmp_path_factory.mktemp("console")
    senv = suite_env(
        tmp, redis_url=f"redis://127.0.0.1:{redis_server.port}/0", s3_url=s3_server.url
    )
    _env(senv, tmp)
    os.environ.setdefault("YOLO_CONFIG_DIR", str(tmp / "yolo"))
    store = create_store(senv.settings)
    _seed(store)
    _publish_models(store, _detecting_onnx(tmp))
    _import_dataset(store, tmp)
    procs: dict[str, Proc] = {"worker": start_worker(senv, tmp, ["maps", "default"], "console")}
    urls: dict[str, str] = {}
    try:
        procs.update(
            _start_apis(senv, tmp, ("anomaly_map", "pretrain", "finetune", "inference"), urls)
        )
        senv.env.update({f"PIPELINE_{name.upper()}_URL": url for name, url in urls.items()})
        senv.env["PIPELINE_POLL_INTERVAL_S"] = "0.5"
        procs["pipeline"], urls["pipeline"] = start_api(senv, tmp, "pipeline")
        senv.env.update({f"CONSOLE_{name.upper()}_URL": url for name, url in urls.items()})
        senv.env["CONSOLE_POLL_INTERVAL_MS"] = "300"
        procs["console"], urls["console"] = start_api(senv, tmp, "console")
        yield Suite(urls, store, procs, senv, tmp)
    finally:
        for proc in procs.values():
            proc.stop()


@pytest.fixture(scope="module")
def browser() -> Iterator[Any]:
    from playwright.sync_api import sync_playwright

    with sync_playwright() as playwright:
        chromium = playwright.chromium.launch(
            executable_path=CHROMIUM,
            headless=True,
            args=["--no-sandbox", "--disable-background-networking", "--disable-component-update"],
        )
        yield chromium
        chromium.close()


@pytest.fixture
def offline() -> Offline:
    return Offline()


@pytest.fixture
def page(browser: Any, offline: Offline) -> Iterator[Any]:
    """A fresh 1280x800 page; the network is cut to everything but loopback."""
    context = browser.new_context(viewport=VIEWPORT)

    def guard(route: Any) -> None:
        host = urlsplit(route.request.url).hostname or ""
        if host in LOOPBACK:
            route.continue_()
        else:
            offline.blocked.append(route.request.url)
            route.abort("internetdisconnected")

    context.route("**/*", guard)
    page = context.new_page()
    page.set_default_timeout(30_000)
    yield page
    context.close()
    assert offline.blocked == [], f"requests left loopback: {offline.blocked}"
