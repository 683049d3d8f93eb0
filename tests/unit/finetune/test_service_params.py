"""Job parameters: config checks, frozen stages, artifact references."""

from __future__ import annotations

from typing import Any

import pytest
from pydantic import ValidationError

from services.finetune.params import (
    FinetuneJobParams,
    InitParams,
    check_train_config,
    frozen_layers,
    parse_ref,
)
from shared.errors import InvalidInputError
from shared.schemas.detector import AgdpConfig


def test_checked_config_keeps_only_the_given_keys_and_the_scale() -> None:
    # when
    checked = check_train_config("agdp", "n", {"epochs": 3, "lr0": 0.02})
    # then the worker still applies the ml defaults for everything else
    assert checked == {"epochs": 3, "lr0": 0.02, "scale": "n"}
    assert AgdpConfig(**checked).freeze == 10


def test_close_matches_are_suggested_for_unknown_keys() -> None:
    # when
    with pytest.raises(InvalidInputError) as caught:
        check_train_config("finetune", "s", {"imgsize": 320})
    # then
    assert caught.value.code == "unknown_config_keys"
    assert "did you mean 'imgsz'" in caught.value.message


@pytest.mark.parametrize(("frozen", "layers"), [("backbone", 10), (4, 10), (0, 1), (-1, 0), (2, 5)])
def test_frozen_stages_map_to_ultralytics_layers(frozen: Any, layers: int) -> None:
    # then (agssp-spec §5.2: frozen_stages 4 = stem + 4 stages = layers 0-9)
    assert frozen_layers(frozen) == layers


@pytest.mark.parametrize(
    ("spec", "parsed"),
    [("m", ("m", None)), ("m:latest", ("m", None)), ("m:2026-a", ("m", "2026-a"))],
)
def test_references_parse_to_name_and_version(spec: str, parsed: tuple[str, Any]) -> None:
    # then
    assert parse_ref(spec) == parsed


@pytest.mark.parametrize(
    "init",
    [
        {"kind": "scratch", "artifact": "a:b"},
        {"kind": "agdp"},
        {"kind": "checkpoint"},
        {"kind": "checkpoint", "artifact": "a:b", "path": "x.pt"},
        {"kind": "agbp", "path": "x.pt"},
        {"kind": "agbp", "artifact": "bad name"},
    ],
)
def test_inconsistent_inits_are_refused(init: dict[str, Any]) -> None:
    # then
    with pytest.raises(ValidationError):
        InitParams.model_validate(init)


def test_finetune_params_refuse_unknown_top_level_fields() -> None:
    # then
    with pytest.raises(ValidationError):
        FinetuneJobParams.model_validate({"dataset": "d", "model_name": "m", "epochs": 3})
