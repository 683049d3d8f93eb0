"""The report's links to each finetuned model's saved evaluation, and its error totals."""

from __future__ import annotations

import html
import re
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, urlsplit

import pytest

from services.pipeline.params import PipelineRequest
from services.pipeline.stores.pipelines import PipelineRecord, StepState
from services.pipeline.usecases.report import render_report
from services.pipeline.usecases.steps import SPECS, plan
from shared.storage.filesystem import FileObjectStore

OURS_KEY = "models/line-3/j5/evaluations/line-3-labelled-j4-val.json"
SCRATCH_KEY = "models/line-3-scratch/j6/evaluations/line-3-labelled-j4-val.json"
OURS_TOTALS = {"misses": 3, "false_alarms": 7, "images_with_misses": 2}
SCRATCH_TOTALS = {"misses": 9, "false_alarms": 11, "images_with_misses": 5}


@pytest.fixture
def store(tmp_path: Path) -> FileObjectStore:
    return FileObjectStore(tmp_path / "store")


def _record(finetune: dict[str, Any], baseline: dict[str, Any]) -> PipelineRecord:
    request = PipelineRequest.model_validate(
        {
            "name": "line-3",
            "category": "tile",
            "unlabelled_prefix": "lines/",
            "labelled": {"prefix": "labelled/", "format": "masks", "images": "."},
            "maps": "tocoad",
        }
    )
    record = PipelineRecord(id="20261201T000000-abcdef12", request=request, steps=plan(request))
    metrics = {"map50": 0.5, "map50_95": 0.25, "per_class": {}}
    outputs: dict[str, dict[str, Any]] = {
        "dataset": {"dataset": "line-3-labelled:j4"},
        "finetune": {"artifact": "line-3:j5", "metrics": metrics, **finetune},
        "baseline": {"artifact": "line-3-scratch:j6", "metrics": metrics, **baseline},
    }
    for step in record.steps:
        step.state = StepState.SUCCEEDED
        step.outputs = outputs.get(step.name, {})
    return record


def _links(page: str) -> list[tuple[str, dict[str, list[str]]]]:
    """Every link's path and query, as a browser would read the href."""
    found = []
    for href in re.findall(r"href='([^']*)'", page):
        url = urlsplit(html.unescape(href))
        assert (url.scheme, url.netloc) == ("", ""), href  # relative: the console's origin
        found.append((url.path, parse_qs(url.query)))
    return found


def test_each_model_links_to_its_evaluation_and_both_to_the_compare_view(
    store: FileObjectStore,
) -> None:
    # given both detectors with a saved evaluation and their error totals
    store.put_bytes(OURS_KEY, b"{}")
    store.put_bytes(SCRATCH_KEY, b"{}")
    record = _record(
        {"evaluation_key": OURS_KEY, "error_totals": OURS_TOTALS},
        {"evaluation_key": SCRATCH_KEY, "error_totals": SCRATCH_TOTALS},
    )
    # when
    page = render_report(record, store).decode()
    # then the console's Evaluation page of each version, on the pipeline's val split
    on_val = {"split": ["val"], "dataset": ["line-3-labelled:j4"]}
    assert _links(page) == [
        ("/evaluation", {"model": ["line-3"], "version": ["j5"], **on_val}),
        ("/evaluation", {"model": ["line-3-scratch"], "version": ["j6"], **on_val}),
        (
            "/evaluation",
            {"model": ["line-3"], "version": ["j5"], **on_val, "compare": ["line-3-scratch:j6"]},
        ),
    ]
    # and each model's misses, false alarms and images with misses beside its mAP
    assert "<td>50.0</td><td>3</td><td>7</td><td>2</td>" in page
    assert "<td>50.0</td><td>9</td><td>11</td><td>5</td>" in page
    assert f"<code>{OURS_KEY}</code>" in page  # in the artifacts table
    assert "no evaluation saved" not in page


def test_models_without_a_saved_evaluation_say_so_instead_of_linking(
    store: FileObjectStore,
) -> None:
    # given an older AGSSP model (no evaluation key) and a scratch model whose key points
    # at nothing in the store, and whose save failed
    record = _record(
        {},
        {"evaluation_key": SCRATCH_KEY, "evaluation_error": "OSError: disk full"},
    )
    # when
    page = render_report(record, store).decode()
    # then no link to an empty page, no compare link, no made-up totals
    assert "/evaluation?" not in page
    assert page.count("no evaluation saved") == 2
    assert "no evaluation saved: OSError: disk full" in page
    assert "<td>50.0</td><td>–</td><td>–</td><td>–</td>" in page


def test_the_detector_steps_keep_the_evaluation_outputs_of_their_jobs() -> None:
    # given a finished finetune job that saved its evaluation, and one that could not
    saved = {"artifact": "m:1", "evaluation_key": OURS_KEY, "error_totals": OURS_TOTALS}
    failed = {"artifact": "m:2", "evaluation_error": "disk full"}
    # when the finetune and baseline steps collect them
    kept = SPECS["finetune"].collect({"outputs": saved})
    warned = SPECS["baseline"].collect({"outputs": failed})
    # then what the report reads is kept, and nothing is invented for what is absent
    assert (kept["evaluation_key"], kept["error_totals"]) == (OURS_KEY, OURS_TOTALS)
    assert "evaluation_error" not in kept
    assert warned["evaluation_error"] == "disk full"
    assert "evaluation_key" not in warned
