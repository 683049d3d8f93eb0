"""Every module of every service sits in exactly one layer of its service's layers contract.

import-linter checks the arrows between the layers it is told about and says nothing of a
module that no layer names; this test closes that gap by walking the source tree.
"""

from __future__ import annotations

import re
import tomllib
from pathlib import Path
from typing import Any

import pytest

ROOT = Path(__file__).resolve().parents[3]
SERVICES = sorted(p.parent.name for p in (ROOT / "services").glob("*/__init__.py"))


def _contracts() -> list[dict[str, Any]]:
    doc = tomllib.loads((ROOT / "pyproject.toml").read_text())
    contracts: list[dict[str, Any]] = doc["tool"]["importlinter"]["contracts"]
    return contracts


def layer_names(layers: list[str]) -> list[set[str]]:
    """Names of each layer entry: ``"(api) | (worker)"`` -> {"api", "worker"}."""
    return [{n.strip("() ") for n in re.split(r"[|:]", entry)} for entry in layers]


def modules_of(service: str) -> list[str]:
    """Dotted names below ``services.<service>``, packages included, the root itself not."""
    base = ROOT / "services" / service
    names = []
    for path in sorted(base.rglob("*.py")):
        parts = path.relative_to(base).with_suffix("").parts
        if parts == ("__init__",):
            continue
        if parts[-1] == "__init__":
            parts = parts[:-1]
        names.append(".".join(parts))
    return names


def _layers_of(service: str) -> list[set[str]]:
    found = [
        c
        for c in _contracts()
        if c["type"] == "layers" and f"services.{service}" in c.get("containers", [])
    ]
    assert len(found) == 1, f"services.{service} needs exactly one layers contract"
    return layer_names(found[0]["layers"])


def test_every_service_package_is_found() -> None:
    assert {"anomaly_map", "pretrain", "finetune", "inference", "pipeline"} <= set(SERVICES)


@pytest.mark.parametrize("service", SERVICES)
def test_every_module_is_in_exactly_one_layer(service: str) -> None:
    layers = _layers_of(service)
    unlayered, doubled = [], []
    for module in modules_of(service):
        top = module.split(".")[0]
        hits = sum(top in names for names in layers)
        if hits == 0:
            unlayered.append(module)
        elif hits > 1:
            doubled.append(module)
    assert not unlayered, f"services.{service}: modules in no layer: {unlayered}"
    assert not doubled, f"services.{service}: modules in two layers: {doubled}"


def test_layer_names_parse_the_contract_syntax() -> None:
    assert layer_names(["(api) | (worker)", "usecases", "a : b", "ml"]) == [
        {"api", "worker"},
        {"usecases"},
        {"a", "b"},
        {"ml"},
    ]


def test_the_walk_sees_packages_root_and_nested_modules() -> None:
    """A loose root module is visible to the check above, so that check can fail."""
    mods = modules_of("pipeline")
    assert any("." in m for m in mods)
    assert any("." not in m for m in mods)
    assert "api" in mods
    assert "api.main" in mods
