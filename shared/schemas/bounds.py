"""Finite ranges for job configs: every number a job accepts has a lower and an upper bound.

A config with ``epochs`` 1e30 or a learning rate of ``1e400`` (JSON for infinity, stored as
``null``) must be refused at submission, not discovered by a worker hours later. Models set
``FINITE`` (no inf/nan) and give every numeric field ``ge``/``gt`` and ``le``/``lt``;
:func:`unbounded_numeric_fields` finds the ones that do not (a unit test runs it over every
job model), and :func:`refuse_non_finite` checks free-form ``config`` dicts.
"""

from __future__ import annotations

import math
from collections.abc import Iterator
from typing import Any

from pydantic import BaseModel, ConfigDict

from shared.errors import InvalidInputError

FINITE = ConfigDict(extra="forbid", allow_inf_nan=False)
SEED_MAX = 2**32 - 1

_LOW = ("minimum", "exclusiveMinimum")
_HIGH = ("maximum", "exclusiveMaximum")


def _numeric_leaves(schema: dict[str, Any], defs: dict[str, Any]) -> Iterator[dict[str, Any]]:
    """Every number/integer sub-schema of one property (through unions, arrays, refs)."""
    if "$ref" in schema:
        yield from _numeric_leaves(defs[schema["$ref"].rsplit("/", 1)[-1]], defs)
        return
    if schema.get("type") in ("number", "integer"):
        yield schema
    for key in ("anyOf", "oneOf", "allOf", "prefixItems"):
        for sub in schema.get(key, ()):
            yield from _numeric_leaves(sub, defs)
    if isinstance(schema.get("items"), dict):
        yield from _numeric_leaves(schema["items"], defs)


def unbounded_numeric_fields(model: type[BaseModel]) -> list[str]:
    """Names of numeric fields of ``model`` (nested models included) lacking a bound."""
    schema = model.model_json_schema()
    defs = schema.get("$defs", {})
    found = []
    for owner in [schema, *defs.values()]:
        if owner.get("type") != "object":
            continue
        for name, prop in owner.get("properties", {}).items():
            for leaf in _numeric_leaves(prop, defs):
                if not any(k in leaf for k in _LOW) or not any(k in leaf for k in _HIGH):
                    found.append(f"{owner.get('title', '?')}.{name}")
                    break
    return sorted(set(found))


def non_finite_paths(value: Any, path: str = "") -> list[str]:
    """Paths of inf/nan numbers anywhere in a JSON-like value."""
    if isinstance(value, float) and not math.isfinite(value):
        return [path or "value"]
    if isinstance(value, dict):
        return [p for k, v in value.items() for p in non_finite_paths(v, f"{path}.{k}".lstrip("."))]
    if isinstance(value, (list, tuple)):
        return [p for i, v in enumerate(value) for p in non_finite_paths(v, f"{path}[{i}]")]
    return []


def refuse_non_finite(value: Any, what: str = "config") -> None:
    """Raise ``InvalidInputError`` ('non_finite_number') naming the first few bad paths."""
    bad = non_finite_paths(value)
    if bad:
        shown = ", ".join(bad[:5]) + (f" and {len(bad) - 5} more" if len(bad) > 5 else "")
        raise InvalidInputError(
            f"{what} holds numbers that are not finite (inf or nan, e.g. 1e400): {shown}",
            code="non_finite_number",
        )
