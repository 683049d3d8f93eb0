"""The Evaluation page in headless Chromium against a running suite, network cut to loopback:
a model version's errors on a split (the "has a miss" filter lists exactly the images the
evaluation does), two versions compared with both models' boxes on one image, an export
for review that the dataset import takes back with the same boxes, and the Models page's
mAP and stage per version.

The two evaluations are saved as an evaluation job saves them, computed by the finetune
service's own code from hand-made predictions on an imported set: the suite's worker
serves no finetune queue, and training a detector here would take minutes.
"""

from __future__ import annotations

import io
import zipfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import pytest

from tests.integration.console.support import Suite, screenshot, steel_png

pytestmark = pytest.mark.timeout(300)
EVAL_DATA = "eval-labelled"
OURS, THEIRS = "eval-det", "eval-det-scratch"


@dataclass(frozen=True)
class Evaluated:
    """The names of the val images, and the two saved evaluation documents."""

    val: list[str]
    ours: dict[str, Any]
    theirs: dict[str, Any]


def _import(suite: Suite) -> Any:
    """Eight labelled plates (two classes), half of them in val."""
    from services.finetune.config import FinetuneSettings
    from services.finetune.params import DatasetImportParams
    from services.finetune.usecases.datasets import import_local_dataset
    from shared.config import CommonSettings, PathSettings

    root = suite.tmp / "eval-set"
    (root / "images").mkdir(parents=True)
    (root / "labels").mkdir()
    (root / "classes.txt").write_text("scratch\npit\n")
    for i in range(8):
        (root / "images" / f"e_{i}.png").write_bytes(steel_png(500 + i))
        lines = f"{i % 2} 0.3 0.3 0.2 0.25\n" + ("1 0.7 0.7 0.15 0.15\n" if i % 3 == 0 else "")
        (root / "labels" / f"e_{i}.txt").write_text(lines)
    settings = FinetuneSettings(common=CommonSettings(paths=PathSettings(home=suite.tmp)))
    params = DatasetImportParams.model_validate(
        {"name": EVAL_DATA, "prefix": "x/", "val_fraction": 0.5, "seed": 0}
    )
    ref, _ = import_local_dataset(suite.store, root, params, "1", settings)
    return ref


def _predictions(val: Any, shift: float, drop: set[int], alarms: dict[int, int]) -> Any:
    """Every box found (moved by ``shift`` px) but on the images in ``drop``, where the
    first box is missed, plus ``alarms[i]`` false alarms on image i."""
    from services.finetune.ml.dataset import ScoredBox

    found: dict[str, list[ScoredBox]] = {}
    for i, image in enumerate(val.images):
        boxes = image.boxes[1:] if i in drop else image.boxes
        found[image.file_name] = [
            ScoredBox(
                x1=b.x1 + shift, y1=b.y1, x2=b.x2 + shift, y2=b.y2, score=0.8, class_id=b.class_id
            )
            for b in boxes
        ]
        for k in range(alarms.get(i, 0)):
            found[image.file_name].append(
                ScoredBox(x1=2 + 4 * k, y1=60, x2=14 + 4 * k, y2=70, score=0.5, class_id=0)
            )
    return found


def _save(suite: Suite, model: str, dataset: Any, val: Any, boxes: Any) -> dict[str, Any]:
    from services.finetune.ml.backend import SplitPredictions
    from services.finetune.stores.models import ModelRegistry
    from services.finetune.usecases.evaluations import evaluation_details, evaluation_name
    from shared.schemas.artifacts import ArtifactRef
    from shared.storage.artifacts import ArtifactStore

    details = evaluation_details(val, SplitPredictions(boxes), 0.25)
    metrics = {"map50": details["map50"], "map50_95": details["map50_95"]}
    files = {"weights.pt": b"w", "classes.json": b'["scratch", "pit"]'}
    meta = {"kind": "finetune", "metrics": metrics, "lineage": {"dataset": str(dataset)}}
    ArtifactStore(suite.store).publish(model, files, version="v1", metadata=meta)
    doc = {
        "model": f"{model}:v1",
        "dataset": str(dataset),
        "split": "val",
        "images": len(val.images),
        "imgsz": 96,
        **details,
        "evaluated_at": "2026-12-05T12:00:00+00:00",
    }
    ref = ArtifactRef(name=model, version="v1")
    ModelRegistry(suite.store).save_evaluation(ref, evaluation_name(str(dataset), "val"), doc)
    return doc


@pytest.fixture(scope="module")
def evaluated(suite: Suite) -> Evaluated:
    from services.finetune.stores.datasets import load_split

    dataset = _import(suite)
    val, _ = load_split(suite.store, dataset, "val", suite.tmp / "eval-val")
    assert len(val.images) >= 3, [im.file_name for im in val.images]
    last = len(val.images) - 1
    ours = _save(suite, OURS, dataset, val, _predictions(val, 0.0, {0}, {last: 1}))
    theirs = _save(suite, THEIRS, dataset, val, _predictions(val, 1.0, {0, 1}, {2: 2}))
    return Evaluated([im.file_name for im in val.images], ours, theirs)


def test_the_has_a_miss_filter_lists_exactly_the_images_the_evaluation_does(
    suite: Suite, page: Any, evaluated: Evaluated
) -> None:
    # given the evaluation as the API serves it
    served = httpx.get(
        f"{suite.urls['finetune']}/v1/models/{OURS}/versions/v1/evaluation", timeout=30
    ).json()
    missed = [im["file_name"] for im in served["errors"]["images"] if im["misses"] > 0]
    assert missed == [evaluated.val[0]]
    # when the page shows it and the "has a miss" filter is chosen
    page.goto(f"{suite.console}/evaluation?model={OURS}&version=v1")
    page.wait_for_selector("#error-table tr.error-row")
    assert page.locator("#error-table tr.error-row").count() == len(evaluated.val)
    page.select_option("#error-filter", "miss")
    # then the rows are exactly the evaluation's images with a miss
    rows = page.locator("#error-table tr.error-row")
    assert [rows.nth(i).get_attribute("data-file") for i in range(rows.count())] == missed
    # and the first is drawn over its image: its missed box and the boxes found
    page.wait_for_selector("#error-stage svg rect.miss")
    image = served["errors"]["images"][0]
    assert page.locator("#error-stage svg rect.tp").count() == len(image["dets"])
    assert page.evaluate("document.querySelector('#error-stage img').naturalWidth") == 96
    # and the per-class table, the PR curves and the confusion matrix agree with it
    assert page.locator("#class-table tr.class-row").count() == 2
    assert page.locator("#pr-curves path.curve").count() == 2
    cells = page.locator("#confusion tr[data-truth='background'] td")
    background = [int(cells.nth(i).get_attribute("data-count")) for i in range(cells.count())]
    assert background == served["errors"]["confusion"]["matrix"][-1]
    page.select_option("#error-filter", "false_alarm")
    alarms = page.locator("#error-table tr.error-row")
    assert [alarms.nth(i).get_attribute("data-file") for i in range(alarms.count())] == [
        evaluated.val[-1]
    ]
    page.select_option("#error-filter", "all")
    page.wait_for_selector("#error-stage svg rect.miss")
    screenshot(page, "console-evaluation")


def test_compare_shows_both_models_boxes_on_one_image(
    suite: Suite, page: Any, evaluated: Evaluated
) -> None:
    # given the API's comparison of the model with its scratch baseline
    answer = httpx.get(
        f"{suite.urls['finetune']}/v1/evaluations/compare",
        params={"a": f"{OURS}:v1", "b": f"{THEIRS}:v1"},
        timeout=30,
    ).json()
    top = answer["images"][0]
    # when the page opens the model (the baseline is the default other side)
    page.goto(f"{suite.console}/evaluation?model={OURS}&version=v1")
    page.wait_for_selector("#compare-panel:not([hidden]) #diff-table tr.diff-row")
    assert page.input_value("#compare-model") == THEIRS
    # then the images are listed largest difference first, as the API sorts them
    rows = page.locator("#diff-table tr.diff-row")
    names = [rows.nth(i).get_attribute("data-file") for i in range(rows.count())]
    assert names == [im["file_name"] for im in answer["images"]]
    assert top["difference"] > 0
    # and the first image carries both models' boxes, drawn over it
    page.wait_for_selector(f"#compare-stage[data-file='{top['file_name']}'] svg rect.box-b")
    a_dets = _dets(evaluated.ours, top["file_name"])
    b_dets = _dets(evaluated.theirs, top["file_name"])
    assert page.locator("#compare-stage svg rect.box-a").count() == a_dets
    assert page.locator("#compare-stage svg rect.box-b").count() == b_dets
    assert a_dets > 0
    assert b_dets > 0
    assert page.evaluate("document.querySelector('#compare-stage img').naturalWidth") == 96
    page.evaluate("document.getElementById('compare-panel').scrollIntoView()")
    screenshot(page, "console-compare")
    # and a layer can be hidden
    page.uncheck("#show-b")
    assert not page.locator("#compare-stage svg rect.box-b").first.is_visible()


def _dets(doc: dict[str, Any], file_name: str) -> int:
    image = next(im for im in doc["errors"]["images"] if im["file_name"] == file_name)
    return len(image["dets"])


def test_an_exported_coco_set_reimports_with_identical_boxes(
    suite: Suite, page: Any, evaluated: Evaluated, tmp_path: Path
) -> None:
    from services.finetune.config import FinetuneSettings
    from services.finetune.ml.dataset import DetectionDataset
    from services.finetune.params import DatasetImportParams
    from services.finetune.stores.datasets import DatasetCatalog
    from services.finetune.usecases.datasets import import_local_dataset
    from shared.config import CommonSettings, PathSettings
    from shared.storage.filesystem import FileObjectStore

    # given the evaluation page
    page.goto(f"{suite.console}/evaluation?model={OURS}&version=v1")
    page.wait_for_selector("#error-table tr.error-row")
    # when its predictions are exported as COCO
    page.select_option("#export-format", "coco")
    with page.expect_download() as download:
        page.click("#export-predictions")
    archive = tmp_path / "export.zip"
    download.value.save_as(str(archive))
    page.wait_for_selector("#export-status .export-done")
    root = tmp_path / "export"
    with zipfile.ZipFile(io.BytesIO(archive.read_bytes())) as opened:
        opened.extractall(root)
    # then the folder imports as a labelled set with the evaluation's boxes, exactly
    store = FileObjectStore(tmp_path / "store")
    settings = FinetuneSettings(common=CommonSettings(paths=PathSettings(home=tmp_path)))
    params = DatasetImportParams.model_validate({"name": "back", "prefix": "x/"})
    ref, _ = import_local_dataset(store, root, params, "1", settings)
    back = DetectionDataset.model_validate_json(DatasetCatalog(store).dataset_bytes(ref))
    got = {
        im.file_name: sorted((b.class_id, b.x1, b.y1, b.x2, b.y2) for b in im.boxes)
        for im in back.images
    }
    want = {
        im["file_name"]: sorted((d["class_id"], *d["box"]) for d in im["dets"])
        for im in evaluated.ours["errors"]["images"]
    }
    assert got == want


def test_the_models_page_gives_each_version_its_map_and_stage(
    suite: Suite, page: Any, evaluated: Evaluated
) -> None:
    # given the scratch baseline in staging
    from shared.storage.artifacts import ArtifactStore

    ArtifactStore(suite.store).promote(THEIRS, "v1", "staging")
    # when the registry page opens it
    page.goto(f"{suite.console}/models?name={THEIRS}")
    row = page.locator("#version-table tr.version[data-version='v1']")
    row.wait_for()
    # then the version shows its mAP@0.5 and its stage, and links to its evaluation
    expected = f"{100 * evaluated.theirs['map50']:.1f} %"
    assert row.locator("td.map").inner_text().startswith(expected)
    assert row.get_attribute("data-stages") == "staging"
    row.locator("a.evaluation-link").click()
    page.wait_for_selector("#error-table tr.error-row")
    assert page.input_value("#eval-model") == THEIRS


def test_the_models_page_gallery_shows_predictions_and_filters_misses(
    suite: Suite, page: Any, evaluated: Evaluated
) -> None:
    # given the evaluation's own records of misses and false alarms
    images = evaluated.theirs["errors"]["images"]
    missed = sorted(im["file_name"] for im in images if im["misses"] > 0)
    alarmed = sorted(im["file_name"] for im in images if im["false_alarms"] > 0)
    assert missed
    assert alarmed
    # when the Models page opens the version and its gallery of predictions is shown
    page.goto(f"{suite.console}/models?name={THEIRS}")
    page.wait_for_selector("#gallery-panel:not([hidden]) #gallery-grid[data-state='ready']")
    source = page.input_value("#gallery-source")
    assert '"kind":"evaluation"' in source
    assert page.locator("#gallery-grid .tile").count() == len(evaluated.val)
    # then every image carries its ground truth and the detector's boxes at the
    # evaluation's confidence, false alarms and misses marked as the evaluation says
    for im in images:
        tile = page.locator(f"#gallery-grid .tile[data-name='{im['file_name']}']")
        assert tile.locator("rect.box.truth").count() == len(im["gt"])
        assert tile.locator("rect.box.pred").count() == len(im["dets"])
        assert tile.locator("rect.box.pred.false-alarm").count() == im["false_alarms"]
        assert tile.locator("rect.box.truth.miss").count() == im["misses"]
    page.evaluate("document.getElementById('gallery-panel').scrollIntoView()")
    screenshot(page, "console-models-gallery")
    # and "has a miss" keeps exactly the images with a miss, "has a false alarm" those
    page.select_option("#gallery-errors", "miss")
    page.wait_for_function(
        f"() => document.querySelectorAll('#gallery-grid .tile').length === {len(missed)}"
    )
    shown = page.locator("#gallery-grid .tile").evaluate_all("ts => ts.map(t => t.dataset.name)")
    assert sorted(shown) == missed
    page.select_option("#gallery-errors", "false-alarm")
    page.wait_for_function(
        f"() => document.querySelectorAll('#gallery-grid .tile').length === {len(alarmed)}"
    )
    shown = page.locator("#gallery-grid .tile").evaluate_all("ts => ts.map(t => t.dataset.name)")
    assert sorted(shown) == alarmed
    # and raising the confidence above every prediction's score leaves none drawn
    page.eval_on_selector(
        "#gallery-conf", "e => { e.value = '0.9'; e.dispatchEvent(new Event('input')); }"
    )
    page.wait_for_function("() => !document.querySelector('#gallery-grid rect.box.pred')")


def _pipeline_record(dataset: str) -> dict[str, Any]:
    """A finished pipeline as the pipeline API returns it, whose steps made the evaluated
    set and models (the suite here runs no training)."""
    step = {"service": "finetune", "state": "SUCCEEDED", "progress": 100.0, "message": ""}
    return {
        "id": "20261206T120000-feedbeef",
        "state": "SUCCEEDED",
        "request": {
            "name": OURS,
            "labelled": {"dataset": None, "split": "train", "val_split": "val"},
        },
        "steps": [
            {**step, "name": "dataset", "outputs": {"dataset": dataset}},
            {**step, "name": "finetune", "outputs": {"artifact": f"{OURS}:v1"}},
            {**step, "name": "baseline", "outputs": {"artifact": f"{THEIRS}:v1"}},
        ],
        "updated_at": "2026-12-06T12:00:00+00:00",
    }


def test_the_pipeline_page_gallery_offers_what_the_pipeline_made(
    suite: Suite, page: Any, evaluated: Evaluated
) -> None:
    import json

    # given a finished pipeline whose dataset and models are the evaluated ones
    record = _pipeline_record(evaluated.ours["dataset"])
    summary = {k: record[k] for k in ("id", "state", "updated_at")}
    summary.update(name=OURS, progress=100.0, current_step=None)

    record["report_key"] = f"pipelines/{record['id']}/report.html"
    link = f"/evaluation?model={OURS}&version=v1"
    report = (
        f'<html><head><title>r</title></head><body><a id="ev" href="{link}">e</a></body></html>'
    )

    def answer(route: Any) -> None:
        path = route.request.url.split("?")[0]
        if path.endswith("/report"):
            route.fulfill(status=200, content_type="text/html; charset=utf-8", body=report)
            return
        body = [summary] if path.endswith("/v1/pipelines") else record
        route.fulfill(status=200, content_type="application/json", body=json.dumps(body))

    page.route("**/api/pipeline/v1/pipelines**", answer)
    # when the Pipelines page selects it
    page.goto(f"{suite.console}/jobs")
    page.click(f"#pipeline-table tr.pipeline[data-pipeline-id='{record['id']}']")
    page.wait_for_selector("#gallery-panel:not([hidden]) #gallery-grid[data-state='ready']")
    # then its gallery offers both labelled splits and both models' predictions
    options = page.locator("#gallery-source option").evaluate_all("os => os.map(o => o.value)")
    kinds = sorted(json.loads(o)["kind"] for o in options)
    assert kinds == ["dataset", "dataset", "evaluation", "evaluation"]
    baseline = next(o for o in options if THEIRS in o)
    page.select_option("#gallery-source", baseline)
    page.wait_for_selector("#gallery-grid[data-state='ready'] rect.box.pred.false-alarm")
    assert page.locator("#gallery-grid .tile").count() == len(evaluated.val)
    # and the page's polling (every few seconds) leaves the chosen set shown
    page.wait_for_timeout(4000)
    assert page.input_value("#gallery-source") == baseline
    page.evaluate("document.getElementById('gallery-panel').scrollIntoView()")
    screenshot(page, "console-pipeline-gallery")
    # and the report, opened from a blob, resolves its relative link to the console's page
    with page.context.expect_page() as opened:
        page.click("#pl-report")
    tab = opened.value
    tab.wait_for_load_state()
    tab.click("#ev")
    tab.wait_for_selector("#error-table tr.error-row")
    assert tab.url.startswith(f"{suite.console}{link}")
