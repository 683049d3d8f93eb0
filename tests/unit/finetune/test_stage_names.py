"""Stage names are validated, not free-form (issue 15, finding 6)."""

from __future__ import annotations

import pytest
from pydantic import ValidationError

from services.finetune.api.schemas import PromoteRequest


@pytest.mark.parametrize("stage", ["production", "staging", "archived", "canary-2", "a_b"])
def test_ordinary_stage_names_are_accepted(stage: str) -> None:
    assert PromoteRequest(stage=stage).stage == stage


@pytest.mark.parametrize(
    "stage", ["", "Production", "prod uction", "../latest", "x" * 33, "prod=1", "-prod", "é"]
)
def test_other_stage_names_are_refused(stage: str) -> None:
    with pytest.raises(ValidationError):
        PromoteRequest(stage=stage)
