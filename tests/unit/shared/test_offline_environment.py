"""Every entry point makes ultralytics offline before anything can import it (issue 27).

The variables are put into the process's own environment, so the children that ``agssp up``
starts inherit them; what the caller exported does not matter.
"""

from __future__ import annotations

import os
from pathlib import Path

import pytest
from typer.testing import CliRunner

from agssp.main import app
from shared.config import (
    ULTRALYTICS_OFFLINE_ENV,
    CommonSettings,
    PathSettings,
    configure_offline_environment,
)
from shared.jobs.celery_app import make_celery

_YOLO = ("YOLO_OFFLINE", "YOLO_AUTOINSTALL", "YOLO_CONFIG_DIR")


@pytest.fixture
def bare_env(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """No YOLO_* variable set (restored after the test); AGSSP_HOME in a temp folder."""
    for name in _YOLO:
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("AGSSP_HOME", str(tmp_path / "home"))
    return tmp_path / "home"


def _offline() -> dict[str, str | None]:
    return {name: os.environ.get(name) for name in ULTRALYTICS_OFFLINE_ENV}


def test_a_bare_environment_gets_the_offline_variables_and_a_config_dir(bare_env: Path) -> None:
    # when
    overridden = configure_offline_environment()
    # then
    assert overridden == {}
    assert _offline() == {"YOLO_OFFLINE": "1", "YOLO_AUTOINSTALL": "False"}
    assert os.environ["YOLO_CONFIG_DIR"] == str(bare_env.resolve() / "ultralytics")


def test_online_values_are_overridden_and_reported_and_a_config_dir_is_kept(
    bare_env: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # given a caller that exported ultralytics' online defaults and its own config folder
    monkeypatch.setenv("YOLO_OFFLINE", "0")
    monkeypatch.setenv("YOLO_AUTOINSTALL", "True")
    monkeypatch.setenv("YOLO_CONFIG_DIR", str(tmp_path / "mine"))
    # when
    overridden = configure_offline_environment(PathSettings(home=tmp_path / "elsewhere"))
    # then
    assert overridden == {"YOLO_OFFLINE": "0", "YOLO_AUTOINSTALL": "True"}
    assert _offline() == ULTRALYTICS_OFFLINE_ENV
    assert os.environ["YOLO_CONFIG_DIR"] == str(tmp_path / "mine")


def test_every_agssp_command_configures_offline_first(bare_env: Path) -> None:
    # when any command runs (a cheap one here), in a process started with no YOLO_* at all
    result = CliRunner().invoke(app, ["keys", "create", "cam", "--scope", "inspect"])
    # then the process (and so every child it starts) is offline
    assert result.exit_code == 0, result.output
    assert _offline() == ULTRALYTICS_OFFLINE_ENV
    assert os.environ["YOLO_CONFIG_DIR"] == str(bare_env.resolve() / "ultralytics")


def test_the_celery_app_factory_configures_offline_before_its_task_modules(
    bare_env: Path,
) -> None:
    # when a worker's Celery app is built (its task modules import later, at worker start)
    make_celery(CommonSettings(paths=PathSettings(home=bare_env)), name="offline-test")
    # then
    assert _offline() == ULTRALYTICS_OFFLINE_ENV
