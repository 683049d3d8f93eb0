"""Stored sets for the gallery tests: a labelled set imported as ``agssp data import`` does,
a pool labelled by pretrain's own pseudo-label job over maps with known blobs, and a
detector's evaluation on the labelled set saved as the evaluation job saves it."""

from __future__ import annotations

import io
from pathlib import Path
from typing import Any

import cv2
import numpy as np

from services.finetune.config import FinetuneSettings
from services.finetune.ml.backend import SplitPredictions
from services.finetune.ml.dataset import DetectionDataset, ScoredBox
from services.finetune.params import DatasetImportParams
from services.finetune.stores.datasets import DatasetCatalog
from services.finetune.stores.models import ModelRegistry
from services.finetune.usecases.datasets import import_local_dataset
from services.finetune.usecases.evaluations import evaluation_details, evaluation_name
from services.pretrain.config import PretrainSettings
from services.pretrain.ml.labeler import BoxLabeler
from services.pretrain.usecases.pseudo_label_jobs import run_pseudo_label_job
from shared.config import CommonSettings, PathSettings
from shared.jobs.runner import RunnerOptions, run_job
from shared.jobs.store import JobStore
from shared.schemas.artifacts import ArtifactRef
from shared.schemas.dataset_maps import DatasetMapManifest, ScoreRow, manifest_key, scores_csv
from shared.storage.artifacts import ArtifactStore
from shared.storage.base import ObjectStore

DATASET = "plates"
CLASSES = ("scratch", "pit")
# p_00.png holds three boxes (two scratches, one pit); the others one box each, or none.
BUSY_IMAGE = "p_00.png"
POOL_IMAGES = "uploads/pool/"
MAPS_OUT = "maps/tile/m1/"
DETECTOR = ArtifactRef(name="plates-det", version="v1")
CONF = 0.25
PIT = CLASSES.index("pit")


def png(width: int, height: int, seed: int) -> bytes:
    rng = np.random.default_rng(seed)
    image = rng.integers(20, 70, (height, width, 3), dtype=np.uint8)
    ok, encoded = cv2.imencode(".png", image)
    assert ok
    return bytes(encoded.tobytes())


def import_plates(store: ObjectStore, tmp: Path, n: int = 12) -> str:
    """``plates:v1``: n 80x60 images in a YOLO folder; returns the dataset spec."""
    root = tmp / "plates"
    (root / "images").mkdir(parents=True)
    (root / "labels").mkdir()
    (root / "classes.txt").write_text("\n".join(CLASSES) + "\n")
    for i in range(n):
        name = f"p_{i:02d}"
        (root / "images" / f"{name}.png").write_bytes(png(80, 60, i))
        if i == 0:
            lines = ["0 0.25 0.25 0.2 0.2", "0 0.75 0.25 0.2 0.2", "1 0.5 0.75 0.25 0.3"]
        elif i % 3 == 0:
            lines = []  # defect-free
        else:
            lines = [f"{i % 2} 0.5 0.5 0.25 0.5"]
        (root / "labels" / f"{name}.txt").write_text("\n".join(lines) + ("\n" if lines else ""))
    settings = FinetuneSettings(common=CommonSettings(paths=PathSettings(home=tmp / "home")))
    params = DatasetImportParams.model_validate(
        {"name": DATASET, "prefix": "x/", "val_fraction": 0.25, "seed": 3}
    )
    import_local_dataset(store, root, params, "v1", settings)
    return f"{DATASET}:v1"


def npy(values: np.ndarray) -> bytes:
    buffer = io.BytesIO()
    np.save(buffer, values.astype(np.float32), allow_pickle=False)
    return buffer.getvalue()


def stage_pool(store: ObjectStore, tmp: Path, with_manifest: bool = True) -> str:
    """Three 200x100 images with 10x10 maps (a blob in a and c, none in b), their scores and,
    optionally, the map output's manifest; pseudo boxes from pretrain's job. Returns the
    pseudo-label output prefix."""
    maps = {name: np.zeros((10, 10), np.float32) for name in ("a", "b", "c")}
    maps["a"][2:4, 3:5] = 2.0
    maps["c"][6:8, 6:8] = 2.0
    keys = {}
    for name, amap in maps.items():
        image_key = f"{POOL_IMAGES}{name}.png"
        store.put_bytes(image_key, png(200, 100, ord(name)))
        keys[image_key] = f"{MAPS_OUT}maps/{name}.npy"
        store.put_bytes(keys[image_key], npy(amap))
    if with_manifest:
        rows = [ScoreRow(k, float(np.max(maps[k[-5]])) + 0.1, float("nan"), 0.0) for k in keys]
        store.put_bytes(f"{MAPS_OUT}scores.csv", scores_csv(rows))
        manifest = DatasetMapManifest(category="tile", count=3, maps=keys, mode="tocoad")
        store.put_bytes(manifest_key(MAPS_OUT), manifest.to_bytes())
    jobs = JobStore(store)
    params = {"category": "tile", "images_prefix": POOL_IMAGES, "maps_prefix": MAPS_OUT}
    record = jobs.create(kind="pseudo_labels", task_name="t", queue="pretrain", params=params)
    settings = PretrainSettings(common=CommonSettings(paths=PathSettings(home=tmp / "h")))
    done = run_job(
        record.id,
        jobs,
        lambda ctx: run_pseudo_label_job(ctx, settings, BoxLabeler()),
        RunnerOptions("w"),
    )
    assert done.state == "SUCCEEDED", done.error
    return str(done.outputs["out_prefix"])


def publish_detector(store: ObjectStore) -> None:
    """``plates-det:v1``, a registered version predicting the plates' classes."""
    files = {"weights.pt": b"w", "classes.json": b'["scratch", "pit"]'}
    metadata = {"kind": "finetune"}
    ArtifactStore(store).publish(DETECTOR.name, files, version=DETECTOR.version, metadata=metadata)


def predictions(split: DetectionDataset, perfect: bool = False) -> dict[str, list[ScoredBox]]:
    """By position in the split: 0 mod 3 finds every box (plus a pit under the threshold),
    1 finds nothing, 2 finds every box and raises a false pit in the top-left corner;
    ``perfect``: every box found, nothing else."""
    found: dict[str, list[ScoredBox]] = {}
    for j, image in enumerate(split.images):
        hits = [ScoredBox(**b.model_dump(exclude={"difficult"}), score=0.9) for b in image.boxes]
        stray = ScoredBox(x1=0, y1=0, x2=8, y2=8, class_id=PIT, score=0.6 if j % 3 else 0.1)
        found[image.file_name] = hits if perfect else [[*hits, stray], [], [*hits, stray]][j % 3]
    return found


def save_evaluation(
    store: ObjectStore, split: str, evaluated_at: str, perfect: bool = False
) -> dict[str, Any]:
    """Evaluate :func:`predictions` on ``split`` of ``plates:v1`` at CONF as the evaluation
    job does and save the document with ``plates-det:v1``; returns the document."""
    catalog = DatasetCatalog(store)
    ref = catalog.resolve(f"{DATASET}:v1")
    dataset = DetectionDataset.model_validate_json(catalog.dataset_bytes(ref))
    subset = dataset.subset(catalog.splits(ref)[split])
    document = {
        "model": str(DETECTOR),
        "dataset": str(ref),
        "split": split,
        "images": len(subset.images),
        "imgsz": 80,
        **evaluation_details(subset, SplitPredictions(predictions(subset, perfect)), CONF),
        "evaluated_at": evaluated_at,
    }
    ModelRegistry(store).save_evaluation(DETECTOR, evaluation_name(str(ref), split), document)
    return document
