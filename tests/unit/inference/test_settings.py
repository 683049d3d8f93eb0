"""Inference settings read from the environment: the spinning mode and its older booleans."""

from __future__ import annotations

from pathlib import Path

import pytest
from pydantic import ValidationError

from tests.unit.inference.serving import settings_for

pytestmark = pytest.mark.unit


@pytest.mark.parametrize(
    ("value", "mode"),
    [
        ("during_runs", "during_runs"),
        ("always", "always"),
        ("off", "off"),
        ("true", "always"),
        ("False", "off"),
        ("1", "always"),
        ("0", "off"),
    ],
)
def test_the_spinning_mode_is_read_from_the_environment(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, value: str, mode: str
) -> None:
    monkeypatch.setenv("INFERENCE_ORT_SPINNING", value)
    assert settings_for(tmp_path).ort_spinning == mode


def test_an_unknown_spinning_mode_is_a_settings_error(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("INFERENCE_ORT_SPINNING", "sometimes")
    with pytest.raises(ValidationError, match="ort_spinning"):
        settings_for(tmp_path)


def test_the_default_leaves_idle_threads_still_between_batches(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.delenv("INFERENCE_ORT_SPINNING", raising=False)
    assert settings_for(tmp_path).ort_spinning in ("off", "during_runs")
