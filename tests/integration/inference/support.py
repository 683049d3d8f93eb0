"""Types shared by the inference integration fixtures and tests."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from tests.integration.suite import Proc


@dataclass(frozen=True)
class Exports:
    """Two ONNX files of one random-init YOLOv8n: v2 differs in metadata, so in bytes and hash."""

    v1: Path
    v2: Path


Publish = Callable[[str, Path], None]  # (version, onnx path): publish and promote to production
Serve = Callable[..., tuple[Proc, str]]  # INFERENCE_* overrides -> (process, base URL), ready
