"""The console in headless Chromium against a running suite, with the network cut to loopback:
inspect an image (map overlay and boxes), manage a category, follow a job to the end, read an
imported set's summary, promote a model; every API's /docs and /redoc render from local files."""

from __future__ import annotations

import time
from typing import Any

import httpx
import pytest

from tests.integration.console.support import (
    CATEGORY,
    DATASET,
    MODEL,
    Offline,
    Suite,
    screenshot,
    steel_png,
)

pytestmark = pytest.mark.timeout(300)
API_SERVICES = ("anomaly_map", "pretrain", "finetune", "inference", "pipeline")


@pytest.fixture(scope="module")
def steel(suite: Suite) -> str:
    """A zero-shot KeAD category created through the API (the browser tests build their own)."""
    answer = httpx.put(
        f"{suite.urls['anomaly_map']}/v1/categories/steel", json=CATEGORY, timeout=60
    )
    assert answer.status_code == 201, answer.text
    return "steel"


def test_the_guard_aborts_and_records_requests_that_leave_loopback(
    suite: Suite, page: Any, offline: Offline
) -> None:
    # given a blank page (no CSP of ours), when it asks for a resource on a public host
    page.goto("about:blank")
    page.evaluate("fetch('https://cdn.example.org/x.js').catch(() => null)")
    deadline = time.monotonic() + 5
    while not offline.blocked and time.monotonic() < deadline:
        page.wait_for_timeout(50)
    # then the request was aborted and recorded (cleared so the fixture's check passes)
    assert offline.blocked == ["https://cdn.example.org/x.js"]
    offline.blocked.clear()


@pytest.mark.parametrize("service", [*API_SERVICES, "console"])
def test_docs_and_redoc_render_offline(suite: Suite, page: Any, service: str) -> None:
    # given a service's docs pages, with the network cut
    base = suite.urls[service]
    # when Swagger UI loads, then it lists the service's operations from local assets
    page.goto(f"{base}/docs")
    page.wait_for_selector(".swagger-ui .opblock", timeout=30_000)
    assert page.locator(".swagger-ui .info .title").inner_text().startswith(f"AGSSP {service}")
    screenshot(page, f"docs-{service}")
    # and ReDoc renders the same schema
    page.goto(f"{base}/redoc")
    page.wait_for_selector("h1", timeout=30_000)
    assert f"AGSSP {service}" in page.locator("h1").first.inner_text()
    page.wait_for_selector("[data-section-id]", timeout=30_000)
    screenshot(page, f"redoc-{service}")


def test_inspect_shows_the_map_overlay_score_and_boxes(
    suite: Suite, page: Any, steel: str, tmp_path: Any
) -> None:
    # given an image on disk and the served model
    image = tmp_path / "plate.png"
    image.write_bytes(steel_png(123, 128))
    wait_ready(suite)
    expected = httpx.post(
        f"{suite.urls['anomaly_map']}/v1/anomaly-maps",
        files={"image": ("plate.png", image.read_bytes(), "image/png")},
        data={"category": steel, "map_encoding": "none"},
        timeout=60,
    ).json()["image_score"]
    # when the user picks it, chooses the category and runs the inspection
    page.goto(f"{suite.console}/inspect")
    page.wait_for_selector(f"#category option[value='{steel}']", state="attached")
    page.select_option("#category", steel)
    page.set_input_files("#image", str(image))
    page.click("#run")
    page.wait_for_selector("#results:not([hidden])")
    page.wait_for_function("() => document.body.dataset.inspected")
    # then the map's score is the API's, the colour bar is labelled and boxes are drawn
    assert float(page.inner_text("#score")) == pytest.approx(expected, abs=1e-4)
    assert float(page.inner_text("#bar-max")) >= float(page.inner_text("#bar-min"))
    assert page.locator("#map-error .error").count() == 0
    assert page.locator("#det-error .error").count() == 0
    assert MODEL in page.inner_text("#det-model")
    page.fill("#threshold", "0.01")
    assert page.locator("#det-table tr.det-row").count() > 0
    assert _coloured_pixels(page, "#map-canvas") > 0
    page.fill("#threshold", "0.5")
    screenshot(page, "console-inspect")
    page.click("#raw summary")
    assert '"image_score"' in page.inner_text("#raw-json")


def test_categories_create_version_and_prompt_errors_where_they_occur(
    suite: Suite, page: Any, tmp_path: Any
) -> None:
    # given the categories page and a reference image
    reference = tmp_path / "ok.png"
    reference.write_bytes(steel_png(7))
    page.goto(f"{suite.console}/categories")
    # when a category is created with one reference image
    page.click("#new-cat")
    page.fill("#cat-name", "tile")
    page.fill("#cat-map", "magnetic tile surface")
    page.fill("#cat-good", "{} without any defect")
    page.fill("#cat-defect", "{} with a crack, a thin dark line")
    page.set_input_files("#cat-files", str(reference))
    page.click("#cat-save")
    page.wait_for_selector("#save-status .ok")
    # then it is listed with its reference, and an edit makes a second version
    row = page.locator("#cat-table tr[data-name='tile']")
    assert row.locator("td").nth(5).inner_text() == "1"
    page.fill("#cat-defect", "{} with a crack, a thin dark line\n{} with a blowhole")
    page.click("#cat-save")
    page.wait_for_function("() => document.querySelectorAll('#cat-version option').length === 2")
    assert row.locator("td").nth(5).inner_text() == "1"  # the reference carried over
    assert page.locator("#cat-refs li").count() == 1
    # and a description over the 77-token context is refused, shown under its field and line
    page.fill("#cat-defect", "{} with a blowhole\n{} " + "with a very long rambling crack " * 12)
    page.click("#cat-save")
    error = page.wait_for_selector("#defect-error .error")
    assert error.get_attribute("data-code") == "prompt_too_long"
    assert "line 2" in error.inner_text()
    assert page.locator("#good-error .error").count() == 0
    screenshot(page, "console-categories")


def test_a_started_job_shows_progress_advance_and_finish(
    suite: Suite, page: Any, steel: str
) -> None:
    # given the jobs page with the dataset-maps preset
    page.goto(f"{suite.console}/jobs")
    page.select_option("#preset", "maps")
    fields = "#preset-fields[data-preset='maps']"
    page.wait_for_selector(f"{fields} #field-mode option[value='tocoad']", state="attached")
    page.wait_for_selector(f"{fields} #field-category option[value='{steel}']", state="attached")
    page.select_option("#field-category", steel)
    # and a request the API refuses shows its error code
    page.click("#job-form details summary")
    page.fill("#job-body", '{"category": "no-such-category", "prefix": "x/"}')
    page.click("#start-job")
    refused = page.wait_for_selector("#job-error .error")
    assert refused.get_attribute("data-code") == "category_not_found", refused.inner_text()
    page.fill("#field-prefix", "lines/steel/images/")  # the fields rewrite the body
    # when the job is started from the form
    page.click("#start-job")
    row = page.locator("#job-table tr.job.selected")
    row.wait_for()
    job_id = row.get_attribute("data-job-id")
    seen = _follow(page, job_id, timeout_s=180)
    # then its bar moved through intermediate values and the job finished
    assert any(0 < p < 100 for p in seen), seen
    assert seen == sorted(seen)
    final = page.locator(f"#job-table tr[data-job-id='{job_id}']")
    assert final.get_attribute("data-state") == "SUCCEEDED", suite.tails()
    assert final.locator(".bar .fill").get_attribute("style") == "width:100.0%"
    assert page.locator("#detail-charts svg.chart").count() >= 1
    # and the files it wrote are listed (through the pipeline API's /v1/objects)
    page.wait_for_selector("#detail-files a.object[data-key$='/manifest.json']")
    record = httpx.get(f"{suite.urls['anomaly_map']}/v1/jobs/{job_id}", timeout=30).json()
    assert record["state"] == "SUCCEEDED"
    assert record["outputs"]["total"] > 0
    screenshot(page, "console-jobs")


def test_a_pipeline_started_from_the_form_shows_its_steps_and_cancels(
    suite: Suite, page: Any, steel: str
) -> None:
    # given the pipelines form with the cpu-demo preset
    page.goto(f"{suite.console}/jobs")
    page.wait_for_selector(f"#pl-category option[value='{steel}']", state="attached")
    page.select_option("#pl-category", steel)
    page.fill("#pl-name", "console-demo")
    page.fill("#pl-unlabelled", "lines/steel/images/")
    page.fill("#pl-labelled", "labelled/")
    page.select_option("#pl-format", "yolo")
    page.select_option("#pl-preset", "cpu-demo")
    assert '"preset": "cpu-demo"' in page.input_value("#pl-body")
    # when it is started, then its steps are listed and the first one runs a job
    page.click("#start-pipeline")
    page.wait_for_selector("#pipeline-table tr.pipeline.selected[data-state='RUNNING']")
    page.wait_for_selector("#step-table tr.step[data-state='RUNNING']", timeout=60_000)
    assert page.locator("#step-table tr.step").count() >= 5
    screenshot(page, "console-pipelines")
    # and a cancel stops it
    page.click("#pl-cancel")
    page.wait_for_selector(
        "#pipeline-table tr.pipeline.selected[data-state='CANCELED']", timeout=90_000
    )
    pipeline_id = page.get_attribute("#pipeline-table tr.pipeline.selected", "data-pipeline-id")
    record = httpx.get(f"{suite.urls['pipeline']}/v1/pipelines/{pipeline_id}", timeout=30).json()
    assert record["state"] == "CANCELED"
    assert record["request"]["preset"] == "cpu-demo"


def test_promoting_a_version_moves_the_stage(suite: Suite, page: Any) -> None:
    # given the registry page with v1 in production
    page.goto(f"{suite.console}/models")
    page.click(f"#model-table tr[data-model='{MODEL}'] a")
    v2 = page.locator("#version-table tr.version[data-version='v2']")
    v2.wait_for()
    assert "production" in page.locator("tr.version[data-version='v1']").get_attribute(
        "data-stages"
    )
    # when v2 is promoted to production
    v2.locator("select.stage-select").select_option("production")
    v2.locator("button.promote").click()
    page.wait_for_selector("#promote-status .ok")
    page.wait_for_selector("tr.version[data-version='v2'][data-stages='production']")
    # then the page and the registry agree that production moved from v1 to v2
    assert page.locator("tr.version[data-version='v1']").get_attribute("data-stages") == ""
    detail = httpx.get(f"{suite.urls['finetune']}/v1/models/{MODEL}", timeout=30).json()
    assert detail["stages"]["production"] == "v2"
    screenshot(page, "console-models")


def test_a_dataset_shows_its_import_summary(suite: Suite, page: Any) -> None:
    # given an imported set with 10 images (one stored twice) and one split of each side
    page.goto(f"{suite.console}/datasets")
    page.click(f"#dataset-table tr[data-dataset='{DATASET}'] a")
    page.wait_for_selector("#split-table tr.split-row")
    # then each split's counts add up to the stored set, with defects and defect-free ones
    rows = page.locator("#split-table tr.split-row[data-split='train'], tr[data-split='val']")
    images = [int(rows.nth(i).get_attribute("data-images")) for i in range(rows.count())]
    defective = [int(rows.nth(i).get_attribute("data-defective")) for i in range(rows.count())]
    assert sum(images) == 10
    assert sum(defective) == 7
    # and the box sizes are drawn, one bar per bin, holding every box
    bins = page.locator("#size-histogram tr.size-bin")
    assert sum(int(bins.nth(i).get_attribute("data-count")) for i in range(bins.count())) == 7
    # and the duplicate pair is named
    assert page.locator("#duplicates").get_attribute("data-groups") == "1"
    assert "p_0.png = p_copy.png" in page.locator("#duplicates").inner_text()
    detail = httpx.get(f"{suite.urls['finetune']}/v1/datasets/{DATASET}", timeout=30).json()
    assert detail["versions"][0]["summary"]["images"] == 10
    screenshot(page, "console-datasets")


def wait_ready(suite: Suite, timeout_s: float = 60) -> None:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if httpx.get(f"{suite.urls['inference']}/readyz", timeout=5).status_code == 200:
            return
        time.sleep(0.5)
    raise AssertionError(f"inference never loaded {MODEL}:\n{suite.tails()}")


def _follow(page: Any, job_id: str | None, timeout_s: float) -> list[float]:
    """Progress values the page showed for a job, sampled until it reached a final state."""
    seen: list[float] = []
    row = page.locator(f"#job-table tr[data-job-id='{job_id}']")
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        progress, state = float(row.get_attribute("data-progress")), row.get_attribute("data-state")
        if not seen or seen[-1] != progress:
            seen.append(progress)
        if state in ("SUCCEEDED", "FAILED", "CANCELED"):
            return seen
        page.wait_for_timeout(100)
    raise AssertionError(f"job {job_id} did not finish; progress seen: {seen}")


def _coloured_pixels(page: Any, selector: str) -> int:
    """Pixels of a canvas whose channels differ (the grey test image has none)."""
    script = """(sel) => {
      const c = document.querySelector(sel);
      const d = c.getContext('2d').getImageData(0, 0, c.width, c.height).data;
      let n = 0;
      for (let i = 0; i < d.length; i += 4) if (Math.abs(d[i] - d[i + 2]) > 40) n += 1;
      return n;
    }"""
    return int(page.evaluate(script, selector))
