"""Celery task bodies delegate to their use cases with the process's engine (use cases patched)."""

from __future__ import annotations

from typing import Any

import pytest

from services.anomaly_map.worker import tasks


class Recorder:
    def __init__(self) -> None:
        self.calls: list[tuple[str, tuple[Any, ...]]] = []

    def __call__(self, name: str) -> Any:
        def record(*args: Any) -> list[str]:
            self.calls.append((name, args))
            return [f"{name}-artifact"]

        return record


@pytest.fixture
def recorder(monkeypatch: pytest.MonkeyPatch) -> Recorder:
    recorder = Recorder()
    monkeypatch.setattr(tasks, "worker_engine", lambda: "engine")
    monkeypatch.setattr(tasks, "get_settings", lambda: "settings")
    for name in ("run_dataset_maps", "run_evaluation", "run_tocoad_fit"):
        monkeypatch.setattr(tasks, name, recorder(name))
    return recorder


@pytest.mark.parametrize(
    ("handler", "expected"),
    [
        (tasks._dataset_maps, ("run_dataset_maps", ("ctx", "engine", "settings"))),
        (tasks._evaluate, ("run_evaluation", ("ctx", "engine", "settings"))),
        (tasks._tocoad_fit, ("run_tocoad_fit", ("ctx", "engine"))),
    ],
)
def test_handler_calls_its_use_case(recorder: Recorder, handler: Any, expected: Any) -> None:
    # when
    artifacts = handler("ctx")
    # then
    assert recorder.calls == [expected]
    assert artifacts == [f"{expected[0]}-artifact"]


def test_tasks_are_registered_under_the_shared_names() -> None:
    # then
    assert tasks.dataset_maps_task.name == "anomaly_map.dataset_maps"
    assert tasks.evaluate_task.name == "anomaly_map.evaluate"
    assert tasks.tocoad_fit_task.name == "anomaly_map.tocoad_fit"
