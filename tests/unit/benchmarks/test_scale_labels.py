"""benchmarks.scale_labels end to end on a tiny pool: every arm runs and the ratios are theirs."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from benchmarks import scale_labels

pytestmark = pytest.mark.unit


def test_a_tiny_run_measures_every_arm_on_the_same_pool(tmp_path: Path) -> None:
    out = tmp_path / "scale_labels.json"
    scale_labels.main(["--images", "40", "--grid", "16", "--side", "32", "--out", str(out)])
    doc = json.loads(out.read_text())
    rates = doc["images_per_s"]
    assert set(rates) == {"job", "bare_extraction_io", "bare_in_memory"}
    assert all(rate > 0 for rate in rates.values())
    ratio = doc["ratios"]["job_over_bare_extraction_io"]
    assert ratio == pytest.approx(rates["job"] / rates["bare_extraction_io"], abs=1e-3)
    assert {r["arm"] for r in doc["runs"]} == set(rates)
    assert all(r["images"] == 40 for r in doc["runs"])
    assert doc["machine"]["cpu_count"] >= 1
    assert doc["command"].startswith("python -m benchmarks.scale_labels")
