"""benchmarks.detect's --spinning rows: which servers they add and the ratios read from them."""

from __future__ import annotations

import argparse

import pytest

from benchmarks import detect
from benchmarks.detect_rows import spin_rows

pytestmark = pytest.mark.unit


def test_spinning_rows_are_one_per_mode_and_ort_runtime() -> None:
    args = argparse.Namespace(runtimes=["ort_fp32", "openvino", "ort_int8"], spinning=["always"])
    assert spin_rows(args) == {
        "ort_fp32_spin_always": "ort_fp32",
        "ort_int8_spin_always": "ort_int8",
    }
    assert spin_rows(argparse.Namespace(runtimes=["ort_fp32"], spinning=[])) == {}


def test_spinning_ratios_set_each_row_beside_its_bare_runtime_and_default_service() -> None:
    row = {
        "service_ort_fp32": {"throughput_rps": 10.0, "latency_ms": {"p99": 120.0}},
        "service_ort_fp32_spin_during_runs": {"throughput_rps": 12.0, "latency_ms": {"p99": 95.0}},
        "bare_ort_fp32": {"images_per_s": 15.0},
    }
    found = detect._spinning({"1": row}, {"ort_fp32_spin_during_runs": "ort_fp32"})
    assert found["1"]["ort_fp32_spin_during_runs"] == {
        "service_over_bare": 0.8,
        "over_default_mode": 1.2,
        "p99_ms": 95.0,
    }


def test_the_command_line_takes_only_known_modes() -> None:
    assert detect.parse_args(["--spinning", "off", "during_runs"]).spinning == [
        "off",
        "during_runs",
    ]
    with pytest.raises(SystemExit):
        detect.parse_args(["--spinning", "sometimes"])
