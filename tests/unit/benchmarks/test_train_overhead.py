"""The training-overhead benchmark's quick mode runs every arm through the suite's real job
runner and the bare libraries, and writes a report whose ratios can be read."""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any

import pytest

from benchmarks import train_overhead

pytestmark = pytest.mark.unit


def test_arms_alternate_so_drift_hits_both() -> None:
    calls: list[str] = []

    def arm(name: str) -> Any:
        def run(index: int) -> dict[str, Any]:
            calls.append(f"{name}{index}")
            return {"round": index}

        return run

    rounds = train_overhead._alternate(arm("job"), arm("bare"), 3)
    assert calls == ["job0", "bare0", "bare1", "job1", "job2", "bare2"]
    assert [r["first"]["arm"] for r in rounds] == ["job", "bare", "job"]
    assert [r["bare"]["round"] for r in rounds] == [0, 1, 2]


def _positive(value: float) -> bool:
    return math.isfinite(value) and value > 0


def test_quick_mode_measures_every_section(tmp_path: Path) -> None:
    out = tmp_path / "overhead.json"
    train_overhead.main(["--quick", "--threads", "1", "--out", str(out)])
    report = json.loads(out.read_text())
    assert report["quick"] is True
    assert report["command"].endswith(f"--out {out}")
    assert len(report["loadavg_start"]) == len(report["loadavg_end"]) == 3
    sections = report["sections"]
    assert set(sections) == {"finetune", "agbp", "agbp_long", "maps"}
    for section in sections.values():
        assert [r["first"]["arm"] for r in section["rounds"]] == ["job"]  # one round
        assert all(_positive(v) for v in section["ratios"].values() if isinstance(v, float))

    finetune = sections["finetune"]
    for row in finetune["rounds"]:
        assert row["job"]["epochs"] == row["bare"]["epochs"] == 1
        assert row["bare"]["torch_threads"] == report["machine"]["torch_threads"] == 1
        assert _positive(row["job"]["mean_epoch_s"])
        assert _positive(row["bare"]["mean_epoch_s"])
        assert row["job"]["job"]  # a real job record ran it
    assert finetune["data"].startswith("synthetic rectangles")
    assert len(finetune["ratios"]["map50_best_pt"]["job"]) == 1

    agbp = sections["agbp"]
    for row in agbp["rounds"]:
        assert row["job"]["steps"] == row["bare"]["steps"] == 2  # 8 images, batch 4, 1 epoch
        assert row["bare"]["in_memory_batch"]["steps"] == 2
        assert _positive(row["bare"]["in_memory_batch"]["images_per_s"])
    assert set(agbp["ratios"]) == {
        "job_over_bare_images_per_s",
        "job_over_bare_steady_state",
        "job_over_in_memory_batch_images_per_s",
        "job_over_in_memory_batch_steady_state",
    }
    for row in sections["agbp_long"]["rounds"]:
        assert row["job"]["steps"] == row["bare"]["steps"] == 4  # 16 images, batch 4, 1 epoch
    assert set(sections["agbp_long"]["ratios"]) == set(agbp["ratios"])
    for row in sections["maps"]["rounds"]:
        assert row["job"]["images"] == row["bare"]["images"] == 6
    assert set(report["aims_met"]) == set(train_overhead.AIMS)
