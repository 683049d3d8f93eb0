"""benchmarks.pyspy_shares: py-spy samples of the inference server turned into shares."""

from __future__ import annotations

from typing import Any

import pytest

from benchmarks.pyspy_shares import categorise, cpu_by_category, read_speedscope, wall_shares

ORT = ("Session.run", "/x/onnxruntime/capi/onnxruntime_inference_collection.py")
DETECT = ("OnnxDetector.detect", "/x/services/inference/ml/onnx_detector.py")
LETTERBOX = ("letterbox_into", "/x/services/inference/ml/letterbox.py")
WORKER = ("_worker", "/usr/lib/python3.11/concurrent/futures/thread.py")
DECODE = ("decode_image", "/x/shared/imaging/intake.py")
PIL = ("ImageFile.load", "/x/PIL/ImageFile.py")
RUNNER = ("Runner.run", "/usr/lib/python3.11/asyncio/runners.py")
ROUTE = ("detect", "/x/services/inference/api/routes.py")
PYDANTIC = ("BaseModel.__init__", "/x/pydantic/main.py")


def _speedscope(threads: dict[str, list[list[tuple[str, str]]]]) -> dict[str, Any]:
    frames: list[tuple[str, str]] = []
    profiles = []
    for name, samples in threads.items():
        stacks = []
        for stack in samples:
            for frame in stack:
                if frame not in frames:
                    frames.append(frame)
            stacks.append([frames.index(f) for f in stack])
        profiles.append({"name": name, "samples": stacks, "weights": [0.01] * len(stacks)})
    return {
        "shared": {"frames": [{"name": n, "file": f} for n, f in frames]},
        "profiles": profiles,
    }


def test_the_innermost_known_frame_decides() -> None:
    # a PIL call inside the service's decode is decoding; the runtime inside detect is forward
    assert categorise([DECODE, PIL], main=False) == "decode"
    assert categorise([DETECT, ORT], main=False) == "ort_forward"
    assert categorise([DETECT, LETTERBOX], main=False) == "letterbox_tensor"
    assert categorise([ROUTE, PYDANTIC], main=True) == "serialise"
    assert categorise([WORKER], main=False) == "idle"
    assert categorise([ROUTE], main=True) == "event_loop"


def test_cpu_is_spread_over_sampled_categories_and_the_loop_rest_is_c_work() -> None:
    # given a batcher thread half in the runtime, a quarter letterboxing, a quarter idle, and
    # an event loop sampled 10 times in a route handler, 90 times resting in uvloop (C)
    data = _speedscope(
        {
            'Thread 11 "batcher-m_0"': [[DETECT, ORT]] * 2 + [[DETECT, LETTERBOX], [WORKER]],
            'Thread 10 "MainThread"': [[RUNNER, ROUTE]] * 10 + [[RUNNER]] * 90,
        }
    )
    profiles = read_speedscope(data)
    # 1.5 s on the batcher, 0.5 s on the loop, 3 s on a thread py-spy cannot see (ORT's pool)
    cpu = {11: ("python", 1.5), 10: ("python", 0.5), 12: ("python", 3.0), 13: ("uv", 0.1)}

    # when
    seconds = cpu_by_category(profiles, cpu, rate=100.0)
    walls = wall_shares(profiles)

    # then
    assert seconds["ort_forward"] == pytest.approx(1.0 + 3.0)
    assert seconds["letterbox_tensor"] == pytest.approx(0.5)
    assert seconds["event_loop"] == pytest.approx(0.1 + 0.4)  # 10 samples at 100 Hz + C rest
    assert seconds["other"] == pytest.approx(0.1)
    assert walls["batcher"]["idle"] == pytest.approx(0.25)
    assert walls["event_loop"]["loop_c_or_idle"] == pytest.approx(0.9)
