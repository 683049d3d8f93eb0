"""A stored set for the review-export tests: six labelled images (``shapes:v1``), two model
versions' saved evaluations on its val split, and a pseudo-label output with its manifest,
served by the finetune API whose job sender is a fake."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from fastapi.testclient import TestClient

from services.finetune.api.main import create_app
from services.finetune.config import FinetuneSettings
from services.finetune.ml.backend import SplitPredictions
from services.finetune.ml.dataset import DetectionDataset, ScoredBox
from services.finetune.stores.datasets import DatasetRef
from services.finetune.stores.models import ModelRegistry
from services.finetune.usecases.datasets import store_dataset
from services.finetune.usecases.evaluations import evaluation_details, evaluation_name
from shared.config import CommonSettings, PathSettings, StorageSettings
from shared.http.state import http_state
from shared.schemas.artifacts import ArtifactRef
from shared.schemas.pseudo_labels import PseudoLabelManifest
from shared.storage.artifacts import ArtifactStore
from shared.storage.filesystem import FileObjectStore
from tests.unit.finetune.conftest import MakeDataset, stage_pseudo_labelled

SHAPES = DatasetRef("shapes", "v1")
OURS, THEIRS = ArtifactRef(name="det", version="v1"), ArtifactRef(name="det-scratch", version="v1")


@dataclass
class FakeSender:
    """Records what the API would hand the broker."""

    sent: list[tuple[str, Any, dict[str, Any]]] = field(default_factory=list)

    def send_task(self, name: str, args: Any = None, **options: Any) -> None:
        self.sent.append((name, args, options))


@dataclass
class World:
    http: TestClient
    store: FileObjectStore
    settings: FinetuneSettings
    val: DetectionDataset
    sender: FakeSender


def _hit(dataset: DetectionDataset, i: int, score: float, dx: float = 0.0) -> ScoredBox:
    box = dataset.images[i].boxes[0]
    return ScoredBox(
        x1=box.x1 + dx, y1=box.y1, x2=box.x2 + dx, y2=box.y2, score=score, class_id=box.class_id
    )


def _stray(score: float) -> ScoredBox:
    return ScoredBox(x1=1.5, y1=2.25, x2=9.75, y2=11.0, score=score, class_id=0)


def _predictions(val: DetectionDataset) -> tuple[dict[str, Any], dict[str, Any]]:
    """Ours: finds all but image 4, a false alarm on image 5. Theirs: misses 0-2, finds the
    rest, two false alarms on image 3; both miss image 4."""
    names = [im.file_name for im in val.images]
    ours = {n: [_hit(val, i, 0.9 - 0.05 * i)] for i, n in enumerate(names) if i != 4}
    ours[names[5]].append(_stray(0.6))
    theirs = {n: [_hit(val, i, 0.5, dx=0.5)] for i, n in enumerate(names) if i > 2 and i != 4}
    theirs[names[3]] += [_stray(0.4), _stray(0.3)]
    theirs[names[0]] = [_hit(val, 0, 0.1)]  # under the 0.25 threshold: still a miss
    return ours, theirs


def _save(store: FileObjectStore, ref: ArtifactRef, val: DetectionDataset, boxes: Any) -> None:
    doc = {
        "model": str(ref),
        "dataset": str(SHAPES),
        "split": "val",
        "images": len(val.images),
        "imgsz": 64,
        **evaluation_details(val, SplitPredictions(boxes), 0.25),
        "evaluated_at": "2026-12-01T10:00:00+00:00",
    }
    ModelRegistry(store).save_evaluation(ref, evaluation_name(str(SHAPES), "val"), doc)


@contextmanager
def evaluated_world(tmp_path: Path, make_dataset: MakeDataset) -> Iterator[World]:
    """``shapes:v1`` with both versions' evaluations saved, and the API serving them."""
    store = FileObjectStore(tmp_path / "store")
    dataset, images = make_dataset(n=6, classes=("light", "dark"), size=64, seed=3)
    names = [im.file_name for im in dataset.images]
    sources = {n: images / n for n in names}
    store_dataset(store, SHAPES, dataset, sources, {"train": names[:2], "val": names}, {})
    artifacts = ArtifactStore(store)
    for ref in (OURS, THEIRS):
        files = {"weights.pt": b"w", "classes.json": b'["light", "dark"]'}
        artifacts.publish(ref.name, files, version=ref.version, metadata={"kind": "finetune"})
    for ref, boxes in zip((OURS, THEIRS), _predictions(dataset), strict=True):
        _save(store, ref, dataset, boxes)
    common = CommonSettings(
        paths=PathSettings(home=tmp_path / "home"), storage=StorageSettings(backend="file")
    )
    settings = FinetuneSettings(common=common, work_dir=str(tmp_path / "work"))
    sender = FakeSender()
    with TestClient(create_app(settings, store=store)) as http:
        http_state(http.app).celery = sender  # type: ignore[arg-type,assignment]
        yield World(http, store, settings, dataset, sender)


def stage_with_manifest(world: World, make_dataset: MakeDataset) -> None:
    """Eight pseudo-labelled images and their output ``pseudo/rect/pl-1/`` with a manifest."""
    stage_pseudo_labelled(world.store, make_dataset)
    stems = {k.rsplit("/", 1)[-1].rsplit(".", 1)[0]: k for k in world.store.list("uploads/rect/")}
    manifest = PseudoLabelManifest(
        category="rect",
        images_prefix="uploads/rect/",
        maps_prefix="maps/rect/",
        threshold=0.5,
        count=len(stems),
        images_with_boxes=len(stems),
        images=stems,
    )
    world.store.put_bytes("pseudo/rect/pl-1/manifest.json", manifest.to_bytes())
