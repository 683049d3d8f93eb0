"""The table of services: complete, its import paths real, and ``agssp up`` wired from it."""

from __future__ import annotations

import importlib
from pathlib import Path

import pytest

from agssp import main
from agssp import services as service_table
from agssp.services import Role
from shared.http.jobs import SERVICE_QUEUES
from shared.schemas.jobs import Queue

ROOT = Path(__file__).resolve().parents[3]


def _packages_with_an_api() -> set[str]:
    return {p.parent.parent.name for p in (ROOT / "services").glob("*/api/main.py")}


def test_the_table_lists_every_service_package_with_an_api() -> None:
    # given
    packages = _packages_with_an_api()

    # when
    listed = set(service_table.names())

    # then
    assert packages, "no services/<name>/api/main.py found"
    assert listed == packages
    assert len(listed) == len(service_table.SERVICES)  # no service listed twice


@pytest.mark.parametrize("service", service_table.SERVICES, ids=lambda s: s.name)
def test_each_factory_path_names_a_callable(service: service_table.Service) -> None:
    # given
    module_name, _, attr = service.factory.partition(":")

    # when
    factory = getattr(importlib.import_module(module_name), attr)

    # then
    assert module_name == f"services.{service.name}.api.main"
    assert callable(factory)


@pytest.mark.parametrize(
    "service", [s for s in service_table.SERVICES if s.task_module], ids=lambda s: s.name
)
def test_each_task_module_imports_and_consumes_its_queues(service: service_table.Service) -> None:
    # given
    assert service.task_module is not None

    # when
    module = importlib.import_module(service.task_module)

    # then
    assert module.__name__ == f"services.{service.name}.worker.tasks"
    assert service.queues
    assert all(service_table.task_modules()[q] == service.task_module for q in service.queues)


def test_every_queue_a_job_is_sent_to_is_consumed_by_a_worker_of_the_table() -> None:
    # given: producers send jobs only to the queues of the enum (submit_job's callers)
    sent_to = {q.value for q in Queue}

    # when
    consumed = set(service_table.task_modules())

    # then: none waits forever, and no worker listens on a queue nobody sends to
    assert consumed == sent_to
    assert consumed >= service_table.LIGHT_QUEUES


def test_review_exports_have_their_own_queue_on_the_finetune_worker() -> None:
    # given
    finetune = service_table.by_name("finetune")

    # when / then: `agssp up`'s one worker and `agssp worker finetune ...` still take them
    assert Queue.FINETUNE_EXPORTS.value in finetune.queues
    assert len(set(finetune.queues)) == 2
    assert service_table.task_modules()[Queue.FINETUNE_EXPORTS.value] == finetune.task_module


def test_a_service_train_key_may_cancel_the_jobs_of_each_of_its_queues() -> None:
    # given
    with_jobs = [s for s in service_table.SERVICES if s.task_module]

    # when
    cancellable = {s.name: SERVICE_QUEUES.get(s.name) for s in with_jobs}

    # then
    assert cancellable == {s.name: frozenset(s.queues) for s in with_jobs}


def test_console_and_pipeline_run_no_jobs() -> None:
    # given
    fronts = [service_table.only(Role.CONSOLE), service_table.only(Role.PIPELINE)]

    # when / then
    assert [(s.task_module, s.queues) for s in fronts] == [(None, ()), (None, ())]


def test_ports_and_queues_are_unique_and_the_selftest_queue_is_served() -> None:
    # given
    offsets = [s.port_offset for s in service_table.SERVICES]
    queues = [q for s in service_table.SERVICES for q in s.queues]

    # when
    modules = service_table.task_modules()

    # then
    assert sorted(offsets) == list(range(len(offsets)))
    assert len(queues) == len(set(queues))
    assert modules[service_table.SELFTEST_QUEUE] == service_table.SELFTEST_TASK_MODULE
    importlib.import_module(service_table.SELFTEST_TASK_MODULE)
    assert service_table.default_port("inference") == 8004


def test_up_points_the_console_at_the_pipeline_only_when_it_runs() -> None:
    # given
    apis = {"anomaly_map": 9001, "inference": 9004}

    # when
    with_pipeline = main._wiring("h", {**apis, "console": 9005, "pipeline": 9006})
    without = main._wiring("h", {**apis, "console": 9005})

    # then
    assert with_pipeline["CONSOLE_PIPELINE_URL"] == "http://h:9006"
    assert with_pipeline["PIPELINE_INFERENCE_URL"] == "http://h:9004"
    assert "CONSOLE_PIPELINE_URL" not in without
    assert not any(k.startswith("PIPELINE_") for k in without)
    assert without["CONSOLE_ANOMALY_MAP_URL"] == "http://h:9001"


def test_an_unknown_service_is_refused_with_the_known_ones() -> None:
    # when / then
    with pytest.raises(KeyError, match="anomaly_map"):
        service_table.by_name("nope")
