"""The pseudo-label job on hand-made maps with known blobs: YOLO lines, COCO, summary, layout."""

from __future__ import annotations

import io
import json
import threading
import weakref
from dataclasses import asdict
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from services.pretrain.config import PretrainSettings
from services.pretrain.ml.labeler import BoxLabeler
from services.pretrain.ml.pseudo_boxes import ImageBoxes, build_coco, summarize
from services.pretrain.usecases.pseudo_label_jobs import run_pseudo_label_job
from shared.config import CommonSettings, PathSettings, StorageSettings
from shared.imaging.render import encode_png
from shared.jobs.runner import RunnerOptions, run_job
from shared.jobs.store import JobStore
from shared.schemas.jobs import JobRecord, JobState
from shared.schemas.pseudo_labels import PseudoLabelManifest, label_key, manifest_key
from shared.storage.filesystem import FileObjectStore

IMAGES = "img/steel/"
OUT = "maps/steel/20260101T120000-1a2b3c4d/"
WIDTH, HEIGHT, GRID = 200, 100, 10


def _npy(array: np.ndarray) -> bytes:
    buffer = io.BytesIO()
    np.save(buffer, array.astype(np.float32), allow_pickle=False)
    return buffer.getvalue()


@pytest.fixture
def store(tmp_path: Path) -> FileObjectStore:
    """Three 200x100 images; maps of 10x10 cells: a 2x2 blob of 2.0, nothing, another blob."""
    store = FileObjectStore(tmp_path / "store")
    maps = {name: np.zeros((GRID, GRID)) for name in ("a", "b", "c")}
    maps["a"][2:4, 3:5] = 2.0  # rows 2-3, columns 3-4: centre (0.4, 0.3) of the image
    maps["c"][6:8, 6:8] = 2.0  # centre (0.7, 0.7)
    for name, amap in maps.items():
        store.put_bytes(f"{IMAGES}{name}.png", encode_png(np.zeros((HEIGHT, WIDTH, 3), np.uint8)))
        store.put_bytes(f"{OUT}maps/{name}.npy", _npy(amap))
    scores = "image_key,image_score,zero_shot_score,map_max\n"
    scores += "".join(f"{IMAGES}{n},{s},0,0\n" for n, s in (("a.png", 0.9), ("c.png", 0.2)))
    store.put_bytes(f"{OUT}scores.csv", scores.encode())
    return store


@pytest.fixture(autouse=True, params=["1", "4"], ids=["inline", "threads"])
def io_threads(request: pytest.FixtureRequest, monkeypatch: pytest.MonkeyPatch) -> str:
    """Every job test runs both ways: store calls inline (the local folder's default) and on
    a thread pool (S3's)."""
    monkeypatch.setenv("PRETRAIN_LABEL_IO_THREADS", request.param)
    return str(request.param)


def test_store_calls_are_inline_on_the_local_folder_and_threaded_on_s3(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.delenv("PRETRAIN_LABEL_IO_THREADS")
    local = CommonSettings(storage=StorageSettings(backend="file"))
    s3 = CommonSettings(storage=StorageSettings(backend="s3"))
    assert PretrainSettings(common=local).label_threads() == 1
    assert PretrainSettings(common=s3).label_threads() == 16
    assert PretrainSettings(common=local, label_io_threads=3).label_threads() == 3


def _settings(tmp: Path) -> PretrainSettings:
    return PretrainSettings(
        common=CommonSettings(paths=PathSettings(home=tmp / "home")), overlay_examples=2
    )


def _create(store: FileObjectStore, **params: Any) -> JobRecord:
    values = {"category": "steel", "images_prefix": IMAGES, "maps_prefix": OUT} | params
    return JobStore(store).create(
        kind="pseudo_labels", task_name="t", queue="pretrain", params=values
    )


def _deliver(
    store: FileObjectStore, record: JobRecord, tmp: Path, labeler: Any | None = None
) -> JobRecord:
    settings, labeler = _settings(tmp), labeler or BoxLabeler()
    return run_job(
        record.id,
        JobStore(store),
        lambda ctx: run_pseudo_label_job(ctx, settings, labeler),
        RunnerOptions("w"),
    )


def _run(store: FileObjectStore, tmp: Path, labeler: Any | None = None, **params: Any) -> JobRecord:
    return _deliver(store, _create(store, **params), tmp, labeler)


def _json(store: FileObjectStore, key: str) -> Any:
    return json.loads(store.get_bytes(key))


def test_yolo_labels_hold_the_blob_boxes_at_the_original_image_size(
    store: FileObjectStore, tmp_path: Path
) -> None:
    # when
    record = _run(store, tmp_path)
    out = record.outputs["out_prefix"]
    # then: T = mean(2, 0, 2) - 0.1; the bilinear ramp between cell centres crosses T at
    # 0.6167 of a cell before and 0.3833 after the blob: x 62..97, y 21..38 for blob "a"
    assert record.state == JobState.SUCCEEDED, record.error
    assert record.outputs["threshold"] == pytest.approx(4 / 3 - 0.1)
    assert store.get_bytes(f"{out}labels/a.txt") == b"0 0.400000 0.300000 0.180000 0.180000\n"
    assert store.get_bytes(f"{out}labels/b.txt") == b""
    assert store.get_bytes(f"{out}labels/c.txt") == b"0 0.700000 0.700000 0.180000 0.180000\n"
    assert store.get_bytes(f"{out}classes.txt") == b"anomaly\n"


def test_coco_annotations_match_the_labels_and_keep_background_images(
    store: FileObjectStore, tmp_path: Path
) -> None:
    # when
    record = _run(store, tmp_path)
    coco = _json(store, record.outputs["annotations"])
    # then
    assert coco["categories"] == [{"id": 0, "name": "anomaly", "supercategory": "defect"}]
    assert [(i["file_name"], i["width"], i["height"]) for i in coco["images"]] == [
        ("a.png", WIDTH, HEIGHT),
        ("b.png", WIDTH, HEIGHT),
        ("c.png", WIDTH, HEIGHT),
    ]
    assert [i["image_key"] for i in coco["images"]] == [f"{IMAGES}{n}.png" for n in "abc"]
    assert [(a["image_id"], a["bbox"]) for a in coco["annotations"]] == [
        (1, [62, 21, 36, 18]),
        (3, [122, 61, 36, 18]),
    ]


def test_summary_and_manifest_describe_the_output(store: FileObjectStore, tmp_path: Path) -> None:
    # when
    record = _run(store, tmp_path)
    out = record.outputs["out_prefix"]
    summary = _json(store, f"{out}summary.json")
    manifest = _json(store, f"{out}manifest.json")
    # then
    assert out == f"pseudo/steel/{record.id}/"
    assert summary["images_with_boxes"] == 2
    assert summary["share_with_boxes"] == pytest.approx(2 / 3)
    assert summary["boxes_per_image"] == pytest.approx(2 / 3)
    assert summary["mean_area_ratio"] == pytest.approx(36 * 18 / (WIDTH * HEIGHT))
    assert manifest["job_id"] == record.id
    assert manifest["map_job_id"] == "20260101T120000-1a2b3c4d"
    assert manifest["images"] == {n: f"{IMAGES}{n}.png" for n in "abc"}
    assert record.artifacts == [f"{out}manifest.json"]


def test_the_manifest_keeps_its_stored_layout_and_reads_with_the_seam(
    store: FileObjectStore, tmp_path: Path
) -> None:
    # when
    record = _run(store, tmp_path)
    out = record.outputs["out_prefix"]
    raw = store.get_bytes(manifest_key(out))
    # then: the fields of the stored layout, in order, and the reader's view of them
    assert list(json.loads(raw)) == [
        "kind", "format", "job_id", "category", "images_prefix", "maps_prefix", "map_job_id",
        "classes", "threshold", "count", "images_with_boxes", "files", "images",
    ]  # fmt: skip
    manifest = PseudoLabelManifest.from_bytes(raw)
    assert (manifest.kind, manifest.format, manifest.classes) == ("pseudo-labels", 1, ["anomaly"])
    assert manifest.files.model_dump(exclude={"examples"}) == {
        "labels": "labels/",
        "classes": "classes.txt",
        "annotations": "annotations.json",
        "summary": "summary.json",
    }
    assert all(store.exists(label_key(out, stem)) for stem in manifest.images)
    assert store.get_bytes(f"{out}{manifest.files.classes}") == b"anomaly\n"


def test_example_overlays_show_the_images_with_boxes_first(
    store: FileObjectStore, tmp_path: Path
) -> None:
    record = _run(store, tmp_path)
    examples = record.outputs["examples"]
    assert [k.rsplit("/", 1)[1] for k in examples] == ["a.png", "c.png"]
    assert all(store.get_bytes(k).startswith(b"\x89PNG") for k in examples)


def test_score_gate_leaves_low_scoring_images_without_boxes(
    store: FileObjectStore, tmp_path: Path
) -> None:
    # when: image c scores 0.2 in scores.csv
    record = _run(store, tmp_path, score_gate=0.5)
    # then
    assert record.state == JobState.SUCCEEDED, record.error
    assert store.get_bytes(f"{record.outputs['out_prefix']}labels/c.txt") == b""
    assert record.outputs["images_with_boxes"] == 1


def test_components_regions_give_the_same_boxes_for_solid_blobs(
    store: FileObjectStore, tmp_path: Path
) -> None:
    record = _run(store, tmp_path, regions="components")
    label = store.get_bytes(f"{record.outputs['out_prefix']}labels/a.txt")
    assert label == b"0 0.400000 0.300000 0.180000 0.180000\n"


def test_score_gate_without_scores_fails_clearly(store: FileObjectStore, tmp_path: Path) -> None:
    # given
    store.delete(f"{OUT}scores.csv")
    # when
    record = _run(store, tmp_path, score_gate=0.5)
    # then
    assert record.state == JobState.FAILED
    assert record.error_code == "scores_missing"


def test_an_output_prefix_holding_another_jobs_labels_is_refused(
    store: FileObjectStore, tmp_path: Path
) -> None:
    # given
    store.put_bytes("pseudo/mine/manifest.json", json.dumps({"job_id": "other"}).encode())
    # when
    record = _run(store, tmp_path, out_prefix="pseudo/mine/")
    # then
    assert record.state == JobState.FAILED
    assert record.error_code == "output_exists"


def test_an_unreadable_image_fails_the_job_naming_it(
    store: FileObjectStore, tmp_path: Path
) -> None:
    # given
    store.put_bytes(f"{IMAGES}b.png", b"garbage")
    # when
    record = _run(store, tmp_path)
    # then
    assert record.state == JobState.FAILED
    assert record.error_code == "bad_image"
    assert f"{IMAGES}b.png" in (record.error or "")


def test_cancel_mid_job_ends_canceled_and_removes_the_partial_output(tmp_path: Path) -> None:
    # given: the cancel flag appears once the first label file is written
    class CancelsOnLabels(FileObjectStore):
        def put_bytes(
            self, key: str, data: bytes, content_type: str = "application/octet-stream"
        ) -> None:
            super().put_bytes(key, data, content_type)
            if "/labels/" in key:
                for record in JobStore(self).list():
                    super().put_bytes(f"jobs/{record.id}/cancel", b"now")

    store = CancelsOnLabels(tmp_path / "store")
    store.put_bytes(f"{IMAGES}a.png", encode_png(np.zeros((HEIGHT, WIDTH, 3), np.uint8)))
    store.put_bytes(f"{OUT}maps/a.npy", _npy(np.ones((GRID, GRID))))
    # when
    record = _run(store, tmp_path)
    # then
    assert record.state == JobState.CANCELED
    assert store.list("pseudo/") == []


def test_the_record_says_the_gate_is_off_by_default(store: FileObjectStore, tmp_path: Path) -> None:
    # when
    record = _run(store, tmp_path)
    out = record.outputs
    # then: the reference behaviour, and the fields a benchmark reads
    assert (out["gate"], out["gate_threshold"], out["gate_score_source"]) == ("off", None, "none")
    assert out["gate_defect_share"] is None
    assert out["gate_separation"] is None
    assert out["gate_reason"] == "gate off: every image may get boxes"
    assert out["gate_passed_images"] == 3
    assert (out["images_with_boxes"], out["boxes"]) == (2, 2)
    assert out["share_with_boxes"] == pytest.approx(2 / 3)
    assert out["boxes_per_image"] == pytest.approx(2 / 3)


def test_an_auto_gate_on_three_images_is_off_and_says_why(
    store: FileObjectStore, tmp_path: Path
) -> None:
    record = _run(store, tmp_path, gate="auto")
    assert record.state == JobState.SUCCEEDED, record.error
    assert record.outputs["gate_threshold"] is None
    assert record.outputs["gate_reason"].startswith("3 images with a finite score")
    assert record.outputs["gate_score_source"] == "map_max"  # scores.csv lacks b.png
    assert record.outputs["images_with_boxes"] == 2


POOL = 16
PEAK = 2.0


def _pool(store: FileObjectStore, *, scores: bool, low_peak: float = PEAK) -> None:
    """16 images, each map with one hot blob; images 12-15 'defective' (score 0.8, peak 2.0),
    the rest 'normal' (score 0.2, peak ``low_peak``), all with a little jitter."""
    rng = np.random.default_rng(0)
    rows = "image_key,image_score,zero_shot_score,map_max\n"
    for i in range(POOL):
        defective = i >= 12
        amap = np.zeros((GRID, GRID))
        amap[2:4, 3:5] = (PEAK if defective else low_peak) + rng.normal(0, 0.02)
        name = f"p{i:02d}.png"
        store.put_bytes(f"{IMAGES}{name}", encode_png(np.zeros((HEIGHT, WIDTH, 3), np.uint8)))
        store.put_bytes(f"{OUT}maps/p{i:02d}.npy", _npy(amap))
        score = (0.8 if defective else 0.2) + rng.normal(0, 0.03)
        rows += f"{IMAGES}{name},{score},0,0\n"
    if scores:
        store.put_bytes(f"{OUT}scores.csv", rows.encode())


@pytest.fixture
def pool(tmp_path: Path) -> FileObjectStore:
    store = FileObjectStore(tmp_path / "pool")
    _pool(store, scores=True)
    return store


def test_the_auto_gate_keeps_boxes_on_the_high_scoring_share_of_the_pool(
    pool: FileObjectStore, tmp_path: Path
) -> None:
    # given: every map exceeds T_c, so without a gate every image gets a box
    ungated = _run(pool, tmp_path).outputs
    # when
    record = _run(pool, tmp_path, gate="auto")
    out = record.outputs
    summary = _json(pool, out["summary"])
    # then
    assert record.state == JobState.SUCCEEDED, record.error
    assert ungated["images_with_boxes"] == POOL
    assert (out["gate"], out["gate_score_source"]) == ("auto", "scores")
    assert 0.3 < out["gate_threshold"] < 0.7
    assert out["gate_defect_share"] == pytest.approx(0.25, abs=0.01)
    assert out["gate_separation"] >= 2
    assert out["gate_reason"].startswith("two populations")
    assert (out["gate_passed_images"], out["images_with_boxes"], out["boxes"]) == (4, 4, 4)
    assert out["share_with_boxes"] == pytest.approx(0.25)
    assert out["boxes_per_image"] == pytest.approx(0.25)
    assert [pool.get_bytes(f"{out['out_prefix']}labels/p{i:02d}.txt") != b"" for i in (0, 12)] == [
        False,
        True,
    ]
    assert summary["gate"] == "auto"
    assert summary["gate_threshold"] == out["gate_threshold"]
    assert summary["gate_mixture"]["weights"][1] == pytest.approx(0.25, abs=0.01)


def test_the_auto_gate_falls_back_to_map_maxima_without_scores(tmp_path: Path) -> None:
    # given: no scores.csv; normal maps peak at 1.0, defective ones at 2.0; c = 0.5 puts
    # T_c = 1.25 - 0.5 below both, so only the gate keeps normal images box-free
    store = FileObjectStore(tmp_path / "pool")
    _pool(store, scores=False, low_peak=1.0)
    # when
    record = _run(store, tmp_path, gate="auto", c=0.5)
    out = record.outputs
    # then
    assert record.state == JobState.SUCCEEDED, record.error
    assert out["gate_score_source"] == "map_max"
    assert out["gate_score_note"] == "no scores.csv: each map's maximum instead"
    assert 1.0 < out["gate_threshold"] < 2.0
    assert out["images_with_boxes"] == 4


def test_the_auto_gate_on_one_population_gates_nothing(tmp_path: Path) -> None:
    # given: every image alike (all defective)
    store = FileObjectStore(tmp_path / "pool")
    _pool(store, scores=False)
    # when
    record = _run(store, tmp_path, gate="auto")
    # then
    assert record.outputs["gate_threshold"] is None
    assert record.outputs["gate_reason"].startswith("one population")
    assert record.outputs["images_with_boxes"] == POOL


REFERENCE = "maps/steel/20260101T130000-5e6f7a8b/"


def _reference(store: FileObjectStore, scores: list[float]) -> None:
    """A dataset-map output over labelled defect images: only its scores.csv is read."""
    rows = "image_key,image_score,zero_shot_score,map_max\n"
    rows += "".join(f"lab/d{i:02d}.png,{s},0,{PEAK}\n" for i, s in enumerate(scores))
    store.put_bytes(f"{REFERENCE}scores.csv", rows.encode())


def test_labelled_defects_below_the_mixtures_gate_lower_it(
    pool: FileObjectStore, tmp_path: Path
) -> None:
    # given: 10 labelled defects, half scoring like the pool's normal images (0.2)
    _reference(pool, [0.19, 0.2, 0.21, 0.22, 0.23, 0.78, 0.79, 0.8, 0.81, 0.82])
    # when
    record = _run(pool, tmp_path, gate="auto", reference_maps_prefix=REFERENCE)
    out = record.outputs
    summary = _json(pool, out["summary"])
    # then: lowered to the 3rd lowest reference (keeps 8 of 10), which most of the pool passes
    assert record.state == JobState.SUCCEEDED, record.error
    assert out["gate_threshold"] == pytest.approx(0.21)
    assert (out["gate_reference_images"], out["gate_reference_kept"]) == (10, 0.8)
    assert out["gate_reason"].startswith("labelled defects: the mixture's gate")
    assert out["images_with_boxes"] == out["gate_passed_images"] > 4
    assert out["gate_pool_kept"] == pytest.approx(out["gate_passed_images"] / POOL)
    assert summary["reference_maps_prefix"] == REFERENCE
    assert summary["gate_reference_kept"] == 0.8


def test_labelled_defects_above_the_mixtures_gate_keep_it(
    pool: FileObjectStore, tmp_path: Path
) -> None:
    _reference(pool, [0.75, 0.78, 0.8, 0.82, 0.85, 0.9])
    out = _run(pool, tmp_path, gate="auto", reference_maps_prefix=REFERENCE).outputs
    assert out["gate_reason"].startswith("two populations")
    assert (out["gate_reference_images"], out["gate_reference_kept"]) == (6, 1.0)
    assert (out["images_with_boxes"], out["gate_pool_kept"]) == (4, 0.25)


def test_a_reference_prefix_without_scores_fails_the_job(
    pool: FileObjectStore, tmp_path: Path
) -> None:
    record = _run(pool, tmp_path, gate="auto", reference_maps_prefix="maps/nothing/")
    assert (record.state, record.error_code) == (JobState.FAILED, "reference_scores_missing")


def test_a_pool_larger_than_the_map_memory_labels_the_same(
    store: FileObjectStore, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from services.pretrain.usecases import pseudo_label_jobs

    # given the labels of a run that keeps every map between its two passes
    whole = _run(store, tmp_path, out_prefix="pseudo/whole/")
    assert whole.outputs["maps_kept_in_memory"] == 3
    # when the map memory holds one 10 x 10 map only, so two are read back from the job's
    # scratch file
    monkeypatch.setattr(pseudo_label_jobs, "MAP_MEMORY", GRID * GRID * 4)
    bounded = _run(store, tmp_path, out_prefix="pseudo/bounded/")
    # then it kept one, and its threshold, gate and every label file are the same
    assert bounded.state == JobState.SUCCEEDED, bounded.error
    assert bounded.outputs["maps_kept_in_memory"] == 1
    for key in ("threshold", "gate_threshold", "boxes", "images_with_boxes"):
        assert bounded.outputs[key] == whole.outputs[key], key
    for name in ("a", "b", "c"):
        assert store.get_bytes(label_key("pseudo/bounded/", name)) == store.get_bytes(
            label_key("pseudo/whole/", name)
        )


class _Recording(BoxLabeler):
    """``BoxLabeler`` that keeps every box record it makes, by file name."""

    def __init__(self) -> None:
        self.items: dict[str, ImageBoxes] = {}

    def label(self, *args: Any, **kwargs: Any) -> tuple[ImageBoxes, str]:
        item, text = super().label(*args, **kwargs)
        self.items[item.file_name] = item
        return item, text


def test_a_pool_labelled_with_tiny_memory_settings_gives_the_same_coco_and_summary(
    pool: FileObjectStore, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from services.pretrain.usecases import pseudo_label_jobs

    # given a run with the default settings (12 of the 16 images gated to no box)
    default = _run(pool, tmp_path, gate="auto", out_prefix="pseudo/default/")
    # when one map stays in memory and batches hold one image
    monkeypatch.setattr(pseudo_label_jobs, "MAP_MEMORY", GRID * GRID * 4)
    monkeypatch.setattr(pseudo_label_jobs, "_BATCH", 1)
    recording = _Recording()
    tiny = _run(pool, tmp_path, recording, gate="auto", out_prefix="pseudo/tiny/")
    # then the COCO document is byte for byte the whole pool's, as the job wrote it before
    assert tiny.state == JobState.SUCCEEDED, tiny.error
    items = [recording.items[f"p{i:02d}.png"] for i in range(POOL)]
    whole = build_coco(items)
    for entry in whole["images"]:
        entry["image_key"] = f"{IMAGES}{entry['file_name']}"
    coco = pool.get_bytes("pseudo/tiny/annotations.json")
    assert coco == json.dumps(whole, indent=1).encode()
    assert coco == pool.get_bytes("pseudo/default/annotations.json")
    # and the summary, the record and the examples are those of the whole pool too
    summary = _json(pool, "pseudo/tiny/summary.json")
    stats = asdict(summarize(items)["steel"])
    assert {key: summary[key] for key in stats} == stats
    assert summary | {"job_id": ""} == _json(pool, "pseudo/default/summary.json") | {"job_id": ""}
    for key in ("boxes", "images_with_boxes", "boxes_per_image", "share_with_boxes"):
        assert tiny.outputs[key] == default.outputs[key], key
    strongest = sorted(items, key=lambda i: (not i.boxes, -max([b.score for b in i.boxes] or [0])))
    assert [k.rsplit("/", 1)[1] for k in tiny.outputs["examples"]] == [
        i.file_name for i in strongest[:2]
    ]
    assert tiny.outputs["examples"] == [
        k.replace("/default/", "/tiny/") for k in default.outputs["examples"]
    ]


class _Counting(BoxLabeler):
    """``BoxLabeler`` that counts its box records still alive whenever it makes or reads one."""

    def __init__(self) -> None:
        self.alive: weakref.WeakSet[ImageBoxes] = weakref.WeakSet()
        self.made = 0
        self.most = 0
        self._lock = threading.Lock()

    def _count(self, item: ImageBoxes | None = None) -> None:
        with self._lock:
            if item is not None:
                self.alive.add(item)
                self.made += 1
            self.most = max(self.most, len(self.alive))

    def label(self, *args: Any, **kwargs: Any) -> tuple[ImageBoxes, str]:
        item, text = super().label(*args, **kwargs)
        self._count(item)
        return item, text

    def area_ratios(self, item: ImageBoxes) -> list[float]:
        self._count()
        return super().area_ratios(item)


def test_the_box_records_of_the_pool_are_not_accumulated(
    pool: FileObjectStore, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from services.pretrain.usecases import pseudo_label_jobs

    # given batches of two images, and two example overlays
    monkeypatch.setattr(pseudo_label_jobs, "_BATCH", 2)
    counting = _Counting()
    # when
    record = _run(pool, tmp_path, counting)
    # then: never more records alive than two batches, the examples kept and the one written
    assert record.state == JobState.SUCCEEDED, record.error
    assert (counting.made, record.outputs["boxes"]) == (POOL, POOL)
    assert counting.most <= 2 * 2 + 2 + 1 < POOL


def test_a_cancel_stops_the_read_ahead_and_nothing_is_written_after_the_cleanup(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from services.pretrain.usecases import pseudo_label_jobs

    # given a pool whose cancel flag appears once the third label file is written, and a
    # window of two store calls ahead
    class CancelsOnThirdLabel(FileObjectStore):
        labels = 0

        def put_bytes(
            self, key: str, data: bytes, content_type: str = "application/octet-stream"
        ) -> None:
            super().put_bytes(key, data, content_type)
            if "/labels/" in key:
                type(self).labels += 1
                if type(self).labels == 3:
                    for record in JobStore(self).list():
                        super().put_bytes(f"jobs/{record.id}/cancel", b"now")

    store = CancelsOnThirdLabel(tmp_path / "store")
    _pool(store, scores=True)
    monkeypatch.setattr(pseudo_label_jobs, "_BATCH", 2)
    # when
    record = _run(store, tmp_path)
    # then it stopped within a window or two, and its output is gone, late writes included
    assert record.state == JobState.CANCELED
    assert 3 <= CancelsOnThirdLabel.labels <= 3 + 2 * 2 < POOL
    assert store.list("pseudo/") == []


def test_a_redelivered_job_overwrites_what_a_killed_delivery_left(
    pool: FileObjectStore, tmp_path: Path
) -> None:
    # given a clean run, and a job whose first delivery was killed half-way: scratch files
    # named by its id and a stale label file in its output
    clean = _run(pool, tmp_path, gate="auto", out_prefix="pseudo/clean/")
    record = _create(pool, gate="auto", out_prefix="pseudo/again/")
    scratch = _settings(tmp_path).cache_root() / "scratch" / f"pseudo-labels-{record.id}"
    scratch.mkdir(parents=True)
    (scratch / "annotations.json").write_text('{\n "images": [\n  {\n   "id": 1')
    (scratch / "annotations.part").write_text('\n  {\n   "id": 9')
    (scratch / "ratios.f64").write_bytes(b"\x00" * 12)
    pool.put_bytes(label_key("pseudo/again/", "p00"), b"0 0.5 0.5 0.1 0.1\n")
    # when it is delivered again
    again = _deliver(pool, record, tmp_path)
    # then it wrote what the clean run wrote, and left no scratch behind
    assert again.state == JobState.SUCCEEDED, again.error
    for key in pool.list("pseudo/clean/"):
        name = key.removeprefix("pseudo/clean/")
        if name not in ("summary.json", "manifest.json"):
            assert pool.get_bytes(f"pseudo/again/{name}") == pool.get_bytes(key), name
    summary = _json(pool, "pseudo/again/summary.json")
    assert summary | {"job_id": ""} == _json(pool, "pseudo/clean/summary.json") | {"job_id": ""}
    assert not scratch.exists()
    assert clean.outputs["boxes"] == again.outputs["boxes"] == 4
