"""The scale benchmark's parts (b) and (c) in quick mode: every arm runs in its child, and the
report is merged into the results file without losing part (a)."""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any

import pytest

from benchmarks import scale_maps

pytestmark = pytest.mark.unit


def _positive(value: Any) -> bool:
    return isinstance(value, int | float) and math.isfinite(value) and value > 0


def test_quick_mode_merges_maps_and_agbp_loading(tmp_path: Path) -> None:
    # given part (a)'s report already in the file
    out = tmp_path / "scale.json"
    out.write_text(json.dumps({"benchmark": "scale", "rows": [{"records": 1005}]}))
    # when
    scale_maps.main(["--quick", "--out", str(out)])
    # then
    report = json.loads(out.read_text())
    assert report["benchmark"] == "scale"
    assert report["rows"] == [{"records": 1005}]
    maps, agbp = report["maps"], report["agbp_loading"]
    assert maps["command"].endswith(f"--quick --out {out}")
    assert len(maps["load_average"]["start"]) == 3
    assert maps["setup"]["preset"] == "tiny"
    assert [r["images"] for r in maps["rows"]] == scale_maps.QUICK["sizes"]
    for row in maps["rows"]:
        for arm in ("map_job", "map_bare", "label_job", "label_bare", "label_bare_extraction_io"):
            assert row[arm]["images"] == row["images"]
            assert _positive(row[arm]["images_per_s"])
        ratios = ("map_job_over_bare", "label_job_over_bare", "label_job_over_bare_extraction_io")
        for key in (*ratios, "bare_peak_rss_mb"):
            assert _positive(row[key])
        assert _positive(row["map_job"]["peak_rss_mb"])
        assert row["rounds"] == 2  # the default: each arm twice, the order reversed
        assert len(row["map_job"]["rounds_images_per_s"]) == 2
        assert len(row["map_bare"]["rounds_images_per_s"]) == 2
        assert _positive(row["label_job"]["peak_rss_mb"])
    assert all(isinstance(aim["reached"], bool) for aim in maps["aims"].values())
    assert len(maps["aims"]) == 4

    for section in ("cache_fill", "loading", "step"):
        assert _positive(agbp[section]["images_per_s"])
    assert _positive(agbp["loading_over_step"])
    assert agbp["setup"]["batch_size"] == 4
    assert isinstance(agbp["aim"]["reached"], bool)
    assert (tmp_path / "scale_maps.png").stat().st_size > 0


def test_an_arm_pools_its_rounds_over_summed_time_and_keeps_its_largest_peak() -> None:
    rounds = [
        {"images": 100, "wall_s": 1.0, "images_per_s": 100.0, "peak_rss_mb": 500.0, "job": "a"},
        {"images": 100, "wall_s": 3.0, "images_per_s": 33.33, "peak_rss_mb": 520.0, "job": "b"},
    ]
    pooled = scale_maps._pooled(rounds)
    assert pooled["images_per_s"] == 50.0  # 200 images in 4 s, not the mean of the rates
    assert pooled["images"] == 100
    assert pooled["wall_s"] == 4.0
    assert pooled["rounds_images_per_s"] == [100.0, 33.33]
    assert pooled["peak_rss_mb"] == 520.0
    assert pooled["job"] == "a"
    assert "rounds_images_per_s" not in scale_maps._pooled(rounds[:1])
