"""The one-call GPU check keeps working while no GPU is lent: its dry run goes through every
step on the CPU with tiny models and writes a report a person can read."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from benchmarks import gpu_check

pytestmark = pytest.mark.unit


def test_the_dry_run_goes_through_every_step(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    out = tmp_path / "gpu-check.json"
    gpu_check.main(["--dry-run", "--out", str(out)])
    report = json.loads(out.read_text())
    assert report["dry_run"] is True
    statuses = {name: step["status"] for name, step in report["steps"].items()}
    assert statuses == dict.fromkeys(gpu_check.STEPS, "ok"), report["steps"]
    assert report["steps"]["kead"]["fp32"]["kead_maps_per_s"] > 0
    assert all(
        v["images_per_s"] > 0 for k, v in report["steps"]["agbp"].items() if isinstance(v, dict)
    )
    service = report["steps"]["detect"]["service"]
    assert service["concurrency_1"]["errors"] == 0
    assert "gpu-check on" in capsys.readouterr().out
