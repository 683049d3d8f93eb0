"""Tiled detection: the grid covers the frame, and an object cut by tile borders is one box."""

from __future__ import annotations

import asyncio
import io
import itertools
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from fastapi.testclient import TestClient
from PIL import Image

from services.inference.api.main import create_app
from services.inference.ml.detections import Detections, DetectParams
from services.inference.ml.tiling import Tile, merge_tiles, tile_grid
from services.inference.runtime.build import build_runtime
from services.inference.usecases.detect import DetectOptions, DetectResult, detect
from shared.storage.filesystem import FileObjectStore
from tests.unit.inference.serving import encode, publish, settings_for

TILE = 320


class BlobDetector:
    """Sees bright pixels: one box around all pixels > 200 of each image (class 0, 0.9).

    An object cut by a tile border is seen as the piece inside each tile, exactly what a
    real detector reports for a truncated object at best.
    """

    imgsz = (TILE, TILE)

    def __init__(self) -> None:
        self.batches: list[int] = []

    @property
    def names(self) -> Mapping[int, str]:
        return {0: "scratch"}

    def detect(
        self, images: Sequence[np.ndarray], params: DetectParams | Sequence[DetectParams] = ()
    ) -> list[Detections]:
        self.batches.append(len(images))
        return [self._one(image) for image in images]

    @staticmethod
    def _one(image: np.ndarray) -> Detections:
        ys, xs = np.nonzero(image[..., 0] > 200)
        hw = (image.shape[0], image.shape[1])
        if not len(xs):
            return Detections.empty(hw)
        box = [[xs.min(), ys.min(), xs.max() + 1, ys.max() + 1]]
        return Detections(np.array(box, np.float32), np.array([0.9]), np.array([0]), hw)


def _dets(boxes: list[list[float]], scores: list[float], classes: list[int]) -> Detections:
    """Detections of one 320x320 tile."""
    return Detections(
        np.array(boxes, np.float32), np.array(scores, np.float32), np.array(classes), (320, 320)
    )


def _frame(h: int, w: int, box: tuple[int, int, int, int]) -> np.ndarray:
    image = np.full((h, w, 3), 60, np.uint8)
    x1, y1, x2, y2 = box
    image[y1:y2, x1:x2] = 255
    return image


@pytest.mark.parametrize(("h", "w"), [(1000, 1500), (320, 320), (200, 900), (3000, 4000)])
def test_tiles_cover_the_frame_and_stay_inside_it(h: int, w: int) -> None:
    tiles = tile_grid((h, w), (TILE, TILE), 0.2)
    covered = np.zeros((h, w), bool)
    for t in tiles:
        assert 0 <= t.y0 < t.y1 <= h
        assert 0 <= t.x0 < t.x1 <= w
        assert t.y1 - t.y0 == min(TILE, h)
        assert t.x1 - t.x0 == min(TILE, w)
        covered[t.y0 : t.y1, t.x0 : t.x1] = True
    assert covered.all()


def test_neighbouring_tiles_overlap_at_least_the_asked_fraction() -> None:
    tiles = tile_grid((320, 1500), (TILE, TILE), 0.25)
    starts = [t.x0 for t in tiles]
    assert min(b - a for a, b in itertools.pairwise(starts)) <= TILE * 0.75


def test_golden_pieces_of_one_box_across_a_border_merge_into_that_box() -> None:
    # given: the two tiles of a 320x600 frame (x 0-320 and 280-600) each saw a piece of an
    # object at x 200-500 (golden values worked out by hand)
    tiles = [Tile(0, 0, 320, 320), Tile(0, 280, 320, 600)]
    left = _dets([[200, 50, 320, 90]], [0.8], [2])
    right = _dets([[0, 52, 220, 90]], [0.7], [2])
    # when
    merged = merge_tiles([left, right], tiles, (320, 600))
    # then
    assert len(merged) == 1
    np.testing.assert_array_equal(merged.boxes, [[200, 50, 500, 90]])
    assert merged.scores.tolist() == pytest.approx([0.8])
    assert merged.class_ids.tolist() == [2]


def test_boxes_of_other_classes_or_far_apart_stay_separate() -> None:
    tiles = [Tile(0, 0, 320, 320), Tile(0, 280, 320, 600)]
    left = _dets([[200, 50, 320, 90], [10, 10, 30, 30]], [0.8, 0.6], [2, 2])
    right = _dets([[0, 52, 220, 90]], [0.7], [1])
    merged = merge_tiles([left, right], tiles, (320, 600))
    assert len(merged) == 3


def _tiled(
    tmp_path: Path, image: np.ndarray, **options: object
) -> tuple[DetectResult, BlobDetector]:
    store = FileObjectStore(tmp_path / "store")
    publish(store, "v1", b"1")
    settings = settings_for(tmp_path, max_batch_size=4)
    detector = BlobDetector()

    async def scenario() -> DetectResult:
        runtime = build_runtime(settings, store, factory=lambda _: detector)
        await runtime.refresh()
        opts = DetectOptions(conf=0.25, iou=0.7, max_det=300, tile=True, **options)  # type: ignore[arg-type]
        try:
            return await detect(runtime, encode(image), opts, settings=settings)
        finally:
            await runtime.close()

    return asyncio.run(scenario()), detector


@pytest.mark.parametrize(
    "box",
    [(200, 100, 500, 150), (250, 250, 380, 420)],  # across one border; over a tile corner
    ids=["border", "corner"],
)
def test_golden_detect_tiled_reports_one_box_in_frame_pixels(
    tmp_path: Path, box: tuple[int, int, int, int]
) -> None:
    # given a 700x1000 frame with one bright object that no single 320-px tile holds whole
    image = _frame(700, 1000, box)
    # when
    result, detector = _tiled(tmp_path, image)
    # then
    (found,) = result.detections
    assert found.box_xyxy == tuple(float(v) for v in box)
    assert (result.width, result.height) == (1000, 700)
    assert result.tiles == len(tile_grid((700, 1000), (TILE, TILE), 0.2)) > 4
    assert max(detector.batches) == 4  # tiles went to the model in full batches


def test_tiled_png_draws_the_merged_box_on_the_whole_frame(tmp_path: Path) -> None:
    store = FileObjectStore(tmp_path / "store")
    publish(store, "v1", b"1")
    image = _frame(700, 1000, (200, 100, 500, 150))
    with TestClient(
        create_app(settings_for(tmp_path), store=store, detector_factory=lambda _: BlobDetector())
    ) as client:
        body = client.post(
            "/detect",
            params={"tile": "true"},
            content=encode(image),
            headers={"content-type": "image/png"},
        ).json()
        png = client.post(
            "/detect",
            params={"tile": "true", "annotated": "true"},
            content=encode(image),
            headers={"content-type": "image/png"},
        )
    assert [d["box_xyxy"] for d in body["detections"]] == [[200, 100, 500, 150]]
    assert body["tiles"] > 4
    drawn = np.asarray(Image.open(io.BytesIO(png.content)))
    assert drawn.shape == image.shape
    assert png.headers["X-Detections"] == "1"


def test_tiled_detect_runs_on_a_real_onnx_export(
    tmp_path: Path, yolo_files: Any, parity_images: list[np.ndarray]
) -> None:
    # given the random YOLOv8n export (320 px input) and a 700x900 frame
    store = FileObjectStore(tmp_path / "store")
    publish(store, "v1", yolo_files.dynamic_onnx)
    frame = np.tile(parity_images[1], (2, 2, 1))[:700, :900]
    with TestClient(create_app(settings_for(tmp_path), store=store)) as client:
        response = client.post(
            "/detect",
            params={"tile": "true", "conf": "0.1"},
            content=encode(np.ascontiguousarray(frame)),
            headers={"content-type": "image/png"},
        )
    # then every box lies in the frame and several tiles ran
    assert response.status_code == 200, response.text
    body = response.json()
    assert body["tiles"] == len(tile_grid((700, 900), (320, 320), 0.2))
    assert body["detections"]
    for det in body["detections"]:
        x1, y1, x2, y2 = det["box_xyxy"]
        assert 0 <= x1 <= x2 <= 900
        assert 0 <= y1 <= y2 <= 700
