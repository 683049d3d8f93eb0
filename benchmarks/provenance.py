"""What every benchmark result records beside its figures: the command, the machine, the
load average before and after, and when it ran (the developers' guide: figures are only
comparable with their machine and its load)."""

from __future__ import annotations

import os
import platform
import sys
import time
from pathlib import Path
from typing import Any


def command(module: str, argv: list[str] | None = None) -> str:
    """The command line that reproduces this run."""
    return " ".join(["python -m", module, *(sys.argv[1:] if argv is None else argv)])


def machine() -> dict[str, Any]:
    """Platform, processor, the CPU's model and whether it has VNNI (INT8 dot products: the
    int8 rows depend on it), CPU count and Python version. Every benchmark's machine record
    starts here; a run's CPU model is what tells two machines of one platform apart."""
    model, flags = _cpuinfo()
    return {
        "platform": platform.platform(),
        "processor": platform.processor() or platform.machine(),
        "cpu": model,
        "vnni": bool(flags & {"avx512_vnni", "avx_vnni"}) if flags else None,
        "cpu_count": os.cpu_count(),
        "python": platform.python_version(),
    }


def _cpuinfo() -> tuple[str | None, set[str]]:
    """The first CPU's model name and flags from /proc/cpuinfo (None and empty elsewhere)."""
    try:
        text = Path("/proc/cpuinfo").read_text()
    except OSError:
        return None, set()
    fields: dict[str, str] = {}
    for line in text.splitlines():
        name, _, value = line.partition(":")
        fields.setdefault(name.strip(), value.strip())
    return fields.get("model name"), set(fields.get("flags", "").split())


def load_average() -> list[float]:
    """The 1, 5 and 15 minute load averages, rounded."""
    return [round(v, 2) for v in os.getloadavg()]


def stamp(module: str, started_load: list[float]) -> dict[str, Any]:
    """Command, machine, load at start and end, and the UTC time, as one dict."""
    return {
        "command": command(module),
        "machine": machine(),
        "load_average": {"start": started_load, "end": load_average()},
        "created_at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
    }
