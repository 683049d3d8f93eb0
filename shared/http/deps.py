"""Helpers for ``Annotated`` dependencies that read objects the lifespan put on app.state."""

from __future__ import annotations

from typing import Any

from fastapi import Request

from shared.errors import UnavailableError


def state_object(request: Request, name: str) -> Any:
    """``request.app.state.<name>`` or a 503 naming what is not loaded."""
    value = getattr(request.app.state, name, None)
    if value is None:
        problems = getattr(request.app.state, "not_ready", {})
        reason = problems.get(name) if isinstance(problems, dict) else None
        raise UnavailableError(
            f"{name} is not available: {reason or 'still loading'}", code=f"{name}_unavailable"
        )
    return value
