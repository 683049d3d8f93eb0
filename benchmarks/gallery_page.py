"""Time a gallery page of 100 thumbnails through the console's proxy, as the Datasets page
asks for it, on the local-folder store ``scripts/run.sh`` uses.

A labelled set of camera-sized JPEGs is imported into a fresh store; the finetune API and
the console run in this process (uvicorn, one thread each). The first request builds every
thumbnail (``cold``); the next ones read them back from ``thumbs/`` (``warm``). Two ways are
timed: the page with its thumbnails inlined (one request, what the console does) and the
listing followed by 100 thumbnail requests, six at a time (a browser's connections per host).

    .venv/bin/python -m benchmarks.gallery_page --images 110 --repeats 5
"""

from __future__ import annotations

import argparse
import json
import socket
import statistics
import tempfile
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import cv2
import httpx
import numpy as np
import uvicorn
from fastapi import FastAPI

from benchmarks.provenance import load_average, stamp
from services.console.api.main import create_app as console_app
from services.console.config import ConsoleSettings
from services.finetune.api.main import create_app as finetune_app
from services.finetune.config import FinetuneSettings
from services.finetune.params import DatasetImportParams
from services.finetune.usecases.datasets import import_local_dataset
from shared.config import CommonSettings, PathSettings, StorageSettings
from shared.storage.filesystem import FileObjectStore

NAME = "gallery-bench"
RESULT = Path(__file__).parent / "results" / "gallery_page.json"


def _port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def _serve(app: FastAPI) -> str:
    port = _port()
    server = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=port, log_level="warning"))
    threading.Thread(target=server.run, daemon=True).start()
    while not server.started:
        time.sleep(0.05)
    return f"http://127.0.0.1:{port}"


def _import(store: FileObjectStore, tmp: Path, n: int, width: int, height: int) -> None:
    root = tmp / "set"
    (root / "images").mkdir(parents=True)
    (root / "labels").mkdir()
    (root / "classes.txt").write_text("scratch\n")
    rng = np.random.default_rng(0)
    for i in range(n):
        image = rng.integers(40, 90, (height, width, 3), dtype=np.uint8)
        cv2.rectangle(image, (width // 4, height // 4), (width // 2, height // 2), (230,) * 3, -1)
        cv2.imwrite(str(root / "images" / f"b_{i:04d}.jpg"), image, [cv2.IMWRITE_JPEG_QUALITY, 90])
        (root / "labels" / f"b_{i:04d}.txt").write_text("0 0.375 0.375 0.25 0.25\n")
    common = CommonSettings(paths=PathSettings(home=tmp / "home"))
    params = DatasetImportParams.model_validate({"name": NAME, "prefix": "x/", "val_fraction": 0})
    import_local_dataset(store, root, params, "v1", FinetuneSettings(common=common))


def _inlined(client: httpx.Client, page: str) -> float:
    start = time.perf_counter()
    answer = client.get(page, params={"limit": 100, "thumbnails": 256})
    answer.raise_for_status()
    assert sum(1 for i in answer.json()["items"] if i["thumbnail"]) == 100
    return (time.perf_counter() - start) * 1000


def _separate(client: httpx.Client, page: str, thumbs: str) -> float:
    start = time.perf_counter()
    items = client.get(page, params={"limit": 100}).json()["items"]

    def fetch(item: dict[str, Any]) -> int:
        answer = client.get(thumbs + item["image_key"], params={"side": 256})
        answer.raise_for_status()
        return len(answer.content)

    with ThreadPoolExecutor(max_workers=6) as pool:
        list(pool.map(fetch, items))
    return (time.perf_counter() - start) * 1000


def run(images: int, repeats: int, width: int, height: int) -> dict[str, Any]:
    with tempfile.TemporaryDirectory() as folder:
        tmp = Path(folder)
        store = FileObjectStore(tmp / "store")
        _import(store, tmp, images, width, height)
        common = CommonSettings(
            paths=PathSettings(home=tmp / "home"), storage=StorageSettings(backend="file")
        )
        finetune = _serve(finetune_app(FinetuneSettings(common=common), store=store))
        console = _serve(console_app(ConsoleSettings(common=common, finetune_url=finetune)))  # type: ignore[arg-type]
        page = f"{console}/api/finetune/v1/galleries/datasets/{NAME}/v1/train"
        thumbs = f"{console}/api/finetune/v1/galleries/thumbnails/"
        with httpx.Client(timeout=120, limits=httpx.Limits(max_connections=6)) as client:
            cold = _inlined(client, page)
            inlined = [_inlined(client, page) for _ in range(repeats)]
            separate = [_separate(client, page, thumbs) for _ in range(repeats)]
    return {
        "images": 100,
        "source": f"{width}x{height} JPEG",
        "store": "local folder",
        "cold_ms": round(cold),
        "inlined_ms": [round(v) for v in inlined],
        "inlined_median_ms": round(statistics.median(inlined)),
        "separate_ms": [round(v) for v in separate],
        "separate_median_ms": round(statistics.median(separate)),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--images", type=int, default=110)
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--width", type=int, default=640)
    parser.add_argument("--height", type=int, default=480)
    parser.add_argument("--out", type=Path, default=RESULT)
    args = parser.parse_args()
    started_load = load_average()
    result = run(max(args.images, 101), args.repeats, args.width, args.height)
    result = {**stamp("benchmarks.gallery_page", started_load), **result}
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=1) + "\n")
    print(json.dumps(result, indent=1))


if __name__ == "__main__":
    main()
