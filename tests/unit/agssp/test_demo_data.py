"""``agssp demo data``: the folders the README's run command feeds the pipeline."""

from __future__ import annotations

import random
from pathlib import Path

import httpx
import numpy as np
import pytest
import typer
from PIL import Image
from typer.testing import CliRunner

from agssp import demo
from services.finetune.ml.dataset import ImageRecord
from services.finetune.ml.voc import import_voc, voc_xml_bytes


def _fake_neu(root: Path, classes: tuple[str, ...], per_class: int) -> None:
    """A NEU-DET-shaped folder: ``images/<class>_<n>.jpg`` and ``annotations/<stem>.xml``."""
    (root / "images").mkdir(parents=True)
    (root / "annotations").mkdir()
    for cls in classes:
        for n in range(1, per_class + 1):
            stem = f"{cls}_{n}"
            Image.new("L", (40, 40), 90).save(root / "images" / f"{stem}.jpg")
            record = ImageRecord(file_name=f"{stem}.jpg", width=40, height=40, boxes=[])
            (root / "annotations" / f"{stem}.xml").write_bytes(voc_xml_bytes(record, classes))


def test_generated_set_boxes_are_the_extent_of_each_drawn_defect(tmp_path: Path) -> None:
    # given
    out = tmp_path / "demo"

    # when
    written, flags = demo.write_demo(out, tmp_path / "absent", "auto", 3, pool=6)

    # then
    dataset = import_voc(out / "labelled" / "annotations", out / "labelled" / "images")
    assert written.startswith("generated: 12 labelled")
    assert flags == demo.VOC_FLAGS
    assert list(dataset.classes) == [demo.GENERATED_CLASS]
    assert len(dataset.images) == 12
    for record in dataset.images:
        (box,) = record.boxes
        pixels = np.asarray(Image.open(out / "labelled" / "images" / record.file_name).convert("L"))
        inside = pixels[int(box.y1) : int(box.y2), int(box.x1) : int(box.x2)]
        outside = pixels.copy()
        outside[int(box.y1) : int(box.y2), int(box.x1) : int(box.x2)] = 128
        assert inside.min() < 50 or inside.max() > 220  # the drawn spot or scratch
        assert outside.min() >= 50  # plain texture elsewhere
        assert outside.max() <= 220
    assert len(list((out / "unlabelled").iterdir())) == 6


def test_mask_box_covers_exactly_the_defect_pixels() -> None:
    # given
    mask = Image.new("L", (20, 10), 0)
    mask.paste(255, (3, 2, 8, 5))  # columns 3..7, rows 2..4

    # when
    box = demo.mask_box(mask)

    # then
    assert box is not None
    assert (box.x1, box.y1, box.x2, box.y2) == (3, 2, 8, 5)
    assert demo.mask_box(Image.new("L", (4, 4), 0)) is None


def test_neu_det_draw_takes_per_class_labels_and_pools_the_rest(tmp_path: Path) -> None:
    # given
    root = tmp_path / "neu-det"
    _fake_neu(root, ("crazing", "rolled-in_scale"), per_class=5)

    # when
    labelled, pooled = demo.neu_det_demo(root, tmp_path / "out", labelled_per_class=2, pool=100)

    # then
    images = sorted(p.name for p in (tmp_path / "out" / "labelled" / "images").iterdir())
    xmls = sorted(p.stem for p in (tmp_path / "out" / "labelled" / "annotations").iterdir())
    pool = {p.name for p in (tmp_path / "out" / "unlabelled").iterdir()}
    assert (labelled, pooled) == (4, 6)
    assert [Path(i).stem for i in images] == xmls
    assert sum(i.startswith("rolled-in_scale_") for i in images) == 2
    assert not pool & set(images)


def test_neu_det_draw_is_the_same_for_the_same_seed(tmp_path: Path) -> None:
    # given
    root = tmp_path / "neu-det"
    _fake_neu(root, ("patches", "scratches"), per_class=6)
    seed = random.Random(7).randrange(1000)

    # when
    demo.neu_det_demo(root, tmp_path / "a", 2, 3, seed=seed)
    demo.neu_det_demo(root, tmp_path / "b", 2, 3, seed=seed)

    # then
    for sub in ("labelled/images", "unlabelled"):
        a = sorted(p.name for p in (tmp_path / "a" / sub).iterdir())
        assert a == sorted(p.name for p in (tmp_path / "b" / sub).iterdir())


def test_auto_prefers_neu_det_and_a_missing_named_source_is_refused(tmp_path: Path) -> None:
    # given
    _fake_neu(tmp_path / "data" / "neu-det", ("inclusion",), per_class=3)

    # when
    written, flags = demo.write_demo(tmp_path / "out", tmp_path / "data", "auto", 1, pool=1)

    # then
    assert written == "NEU-DET: 1 labelled, 1 unlabelled"
    assert flags == demo.VOC_FLAGS
    with pytest.raises(typer.BadParameter, match="magnetic-tile"):
        demo.write_demo(tmp_path / "mt", tmp_path / "data", "magnetic-tile", 1, pool=1)


def test_cli_refuses_an_unknown_source(tmp_path: Path) -> None:
    # when
    result = CliRunner().invoke(demo.app, ["data", str(tmp_path / "o"), "--source", "kaggle"])

    # then
    assert result.exit_code == 2
    assert "unknown source" in result.output


def test_neu_det_from_the_shared_data_reads_back_as_six_classes(
    shared_data: Path, tmp_path: Path
) -> None:
    # when
    written, _ = demo.write_demo(tmp_path / "demo", shared_data, "neu-det", None, pool=20)

    # then
    dataset = import_voc(tmp_path / "demo/labelled/annotations", tmp_path / "demo/labelled/images")
    assert written == "NEU-DET: 120 labelled, 20 unlabelled"
    assert len(dataset.classes) == 6
    assert len(dataset.images) == 120
    assert all(r.boxes for r in dataset.images)


def _detect_server(boxes_for: dict[str, int]) -> httpx.MockTransport:
    """A stand-in /detect: ``boxes_for[file name]`` boxes, 404 for names it does not know."""

    def handle(request: httpx.Request) -> httpx.Response:
        if request.url.path == "/v1/models/reload":
            return httpx.Response(403, json={"error": {"code": "forbidden"}})
        body = request.content.decode("latin-1")
        name = next((n for n in boxes_for if f'filename="{n}"' in body), None)
        if request.url.path != "/detect" or name is None:
            return httpx.Response(404, json={"error": {"code": "not_found"}})
        detection = {"class_name": "scratches", "score": 0.5, "class_id": 0}
        return httpx.Response(
            200,
            json={
                "detections": [detection] * boxes_for[name],
                "model": {"name": "m", "version": "3"},
            },
        )

    return httpx.MockTransport(handle)


def test_detect_command_counts_the_images_answered_with_boxes(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # given
    for name in ("a.png", "b.png", "c.png"):
        Image.new("L", (8, 8)).save(tmp_path / name)
    transport = _detect_server({"a.png": 0, "b.png": 2, "c.png": 1})
    real_client = httpx.Client
    monkeypatch.setattr(httpx, "Client", lambda **kw: real_client(transport=transport, **kw))

    # when
    result = CliRunner().invoke(demo.app, ["detect", str(tmp_path)])

    # then
    assert result.exit_code == 0, result.output
    assert "model m 3): boxes on 2 of 3 images" in result.output
    assert "b.png: scratches 0.50, scratches 0.50" in result.output
    assert f"curl -s -F image=@{tmp_path / 'b.png'}" in result.output


def test_detect_command_stops_on_an_error_answer(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # given
    Image.new("L", (8, 8)).save(tmp_path / "unknown.png")
    transport = _detect_server({})
    real_client = httpx.Client
    monkeypatch.setattr(httpx, "Client", lambda **kw: real_client(transport=transport, **kw))

    # when
    result = CliRunner().invoke(demo.app, ["detect", str(tmp_path), "--wait", "0"])

    # then
    assert result.exit_code == 2
    assert "error 404" in result.output


def test_detect_waits_while_the_service_has_no_model_yet(tmp_path: Path) -> None:
    # given
    Image.new("L", (8, 8)).save(tmp_path / "a.png")
    calls: list[str] = []

    def handle(request: httpx.Request) -> httpx.Response:
        calls.append(request.url.path)
        if request.url.path == "/v1/models/reload":
            return httpx.Response(200, json={})
        if calls.count("/detect") < 3:
            return httpx.Response(503, json={"code": "model_not_loaded"})
        return httpx.Response(200, json={"detections": [], "model": {"name": "m", "version": "1"}})

    client = httpx.Client(transport=httpx.MockTransport(handle), base_url="http://svc")

    # when
    demo.reload_models(client)
    answers = demo.detect_folder(client, [tmp_path / "a.png"], conf=0.1, wait_s=30)

    # then
    assert calls == ["/v1/models/reload", "/detect", "/detect", "/detect"]
    assert answers[0][1]["model"] == {"name": "m", "version": "1"}
