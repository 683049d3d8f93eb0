"""The pseudo-label job's whole output on a small mixed pool, pinned byte for byte.

``tests/fixtures/pseudo_labels_golden.json`` holds every text file a job wrote (label files,
``classes.txt``, the COCO document, ``summary.json`` less the gate's fields and
``manifest.json``, the job id blanked) as the job wrote them before its map shelf, read-ahead
and JSON writer were reworked; the example overlays are pinned by key only (their PNG bytes
follow the codec).
The pool mixes what the job must handle: PNG and JPEG images, one with an EXIF rotation,
square and oblong maps, float64 and Fortran-ordered ``.npy`` files, several blobs a map.
"""

from __future__ import annotations

import io
import json
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from PIL import Image

from services.pretrain.config import PretrainSettings
from services.pretrain.ml.labeler import BoxLabeler
from services.pretrain.usecases import pseudo_label_jobs
from services.pretrain.usecases.pseudo_label_jobs import run_pseudo_label_job
from shared.config import CommonSettings, PathSettings
from shared.imaging.render import encode_png
from shared.jobs.runner import RunnerOptions, run_job
from shared.jobs.store import JobStore
from shared.schemas.jobs import JobState
from shared.storage.filesystem import FileObjectStore

GOLDEN = Path(__file__).resolve().parents[2] / "fixtures" / "pseudo_labels_golden.json"
IMAGES = "img/mixed/"
MAPS = "maps/mixed/20260101T120000-1a2b3c4d/"
RUNS: dict[str, dict[str, Any]] = {
    "off": {"gate": "off", "c": 0.6},
    "fixed_components": {"score_gate": 0.5, "regions": "components", "top_k": 2},
}


def _npy(array: np.ndarray) -> bytes:
    buffer = io.BytesIO()
    np.save(buffer, array, allow_pickle=False)
    return buffer.getvalue()


def _jpeg(width: int, height: int, orientation: int | None = None) -> bytes:
    exif = Image.Exif()
    if orientation is not None:
        exif[0x0112] = orientation
    buffer = io.BytesIO()
    Image.new("RGB", (width, height), (90, 90, 90)).save(buffer, format="JPEG", exif=exif.tobytes())
    return buffer.getvalue()


def _map(rng: np.random.Generator, shape: tuple[int, int]) -> np.ndarray:
    """Low noise with one to three blobs of random size, place and height."""
    amap = rng.uniform(0.0, 0.3, shape)
    for _ in range(int(rng.integers(1, 4))):
        y, x = (int(rng.integers(0, side - 2)) for side in shape)
        h, w = (int(v) for v in rng.integers(1, 4, 2))
        amap[y : y + h, x : x + w] += rng.uniform(0.8, 2.0)
    return amap


def write_pool(store: FileObjectStore) -> None:
    """14 images and maps, seeded: 200x100 PNGs, a rotated and a plain JPEG, odd map files."""
    rng = np.random.default_rng(24)
    rows = "image_key,image_score,zero_shot_score,map_max\n"
    for i in range(14):
        name = f"m{i:02d}.png" if i < 10 else f"m{i:02d}.jpg"
        if i < 10:
            image = encode_png(np.zeros((100, 200, 3), np.uint8))
        else:
            image = _jpeg(40, 20, 6) if i == 10 else _jpeg(64, 48)
        amap = _map(rng, (7, 13) if i == 12 else (10, 10))
        if i == 10:  # the rotated JPEG gets a box, sized on the upright image
            amap[2:5, 6:8] += 2.5
        stored: np.ndarray = amap.astype(np.float32)
        if i == 12:
            stored = amap  # float64 on disk
        elif i == 13:
            stored = np.asfortranarray(stored)
        store.put_bytes(f"{IMAGES}{name}", image)
        store.put_bytes(f"{MAPS}maps/m{i:02d}.npy", _npy(stored))
        rows += f"{IMAGES}{name},{rng.uniform(0.0, 1.0)},0,0\n"
    store.put_bytes(f"{MAPS}scores.csv", rows.encode())


def run(store: FileObjectStore, home: Path, name: str) -> tuple[Any, dict[str, str]]:
    """One job of ``RUNS[name]`` under ``pseudo/<name>/``; its record and its text outputs."""
    out = f"pseudo/{name}/"
    params = {"category": "mixed", "images_prefix": IMAGES, "maps_prefix": MAPS}
    params |= RUNS[name] | {"out_prefix": out}
    jobs = JobStore(store)
    record = jobs.create(kind="pseudo_labels", task_name="t", queue="pretrain", params=params)
    settings = PretrainSettings(
        common=CommonSettings(paths=PathSettings(home=home)), overlay_examples=3
    )
    done = run_job(
        record.id,
        jobs,
        lambda ctx: run_pseudo_label_job(ctx, settings, BoxLabeler()),
        RunnerOptions("w"),
    )
    return done, outputs(store, out, done.id)


def outputs(store: FileObjectStore, out: str, job_id: str) -> dict[str, str]:
    """Every file under ``out`` as text, the job id blanked; PNG examples as their key only."""
    found: dict[str, str] = {}
    for key in store.list(out):
        name = key.removeprefix(out)
        if name.endswith(".png"):
            found[name] = "<png>"
        else:
            found[name] = store.get_bytes(key).decode().replace(job_id, "<job>")
    found["summary.json"] = _without_gate(found["summary.json"])
    return found


def _without_gate(summary: str) -> str:
    """``summary.json`` less the gate's fields (``ml.gate`` owns those; its tests pin them)."""
    fields = json.loads(summary)
    return json.dumps({k: v for k, v in fields.items() if not k.startswith("gate")}, indent=1)


@pytest.mark.parametrize("name", list(RUNS))
@pytest.mark.parametrize(
    "tight", ["", "scratch"], ids=["default", "one_map_in_memory_scratch_file_batch_3"]
)
def test_the_jobs_outputs_are_the_pinned_ones(
    name: str, tight: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # given the mixed pool, and with ``tight`` a map memory of one map and batches of three,
    # the others kept in the job's scratch file
    store = FileObjectStore(tmp_path / "store")
    write_pool(store)
    if tight:
        monkeypatch.setattr(pseudo_label_jobs, "MAP_MEMORY", 10 * 10 * 4)
        monkeypatch.setattr(pseudo_label_jobs, "_BATCH", 3)
    # when
    record, found = run(store, tmp_path / "home", name)
    # then every file is the pinned one, byte for byte
    assert record.state == JobState.SUCCEEDED, record.error
    golden = json.loads(GOLDEN.read_text())[name]
    assert sorted(found) == sorted(golden)
    for key, text in golden.items():
        assert found[key] == text, key
