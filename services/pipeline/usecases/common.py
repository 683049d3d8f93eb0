"""Shared by the pipeline's use cases: the one failure a step reports (a call that did not
succeed, and whether to retry)."""

from __future__ import annotations


class StepCallError(Exception):
    """A call a step made did not succeed; ``transient`` says whether to try again."""

    def __init__(self, message: str, code: str, transient: bool) -> None:
        super().__init__(message)
        self.message = message
        self.code = code
        self.transient = transient
