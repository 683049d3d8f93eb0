"""What this CPU runs exactly: its flags (``/proc/cpuinfo``) and the INT8 schemes that need VNNI.

ONNX Runtime's quantization guide: on x86-64 CPUs with AVX2 or AVX-512 but without VNNI, the
U8S8 integer kernels (``vpmaddubsw``) add pairs of products in saturating int16, so a model
quantised with full-range int8 weights (``U8S8``) can be far off its FP32 source there. With
VNNI (``vpdpbusd``, 32-bit accumulation) or on other architectures it is exact. Torch-free.
"""

from __future__ import annotations

import platform
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path

from shared.schemas.detector_artifact import NEEDS_VNNI, UNRECORDED

# Linux names AVX512-VNNI ``avx512_vnni`` and AVX-VNNI ``avx_vnni`` (older kernels: avxvnni).
VNNI_FLAGS = ("avx512_vnni", "avx_vnni", "avxvnni")
CPUINFO = Path("/proc/cpuinfo")
_X86_MACHINES = ("x86_64", "amd64", "i386", "i686")


@dataclass(frozen=True)
class CpuFeatures:
    """A CPU as far as INT8 kernels care.

    Attributes:
        flags: Its feature flags (``/proc/cpuinfo`` ``flags``), lower case.
        x86_64: An x86 CPU (the saturation concerns x86 kernels only).
        model: Its model name, for messages and benchmark records.
    """

    flags: frozenset[str]
    x86_64: bool = True
    model: str = "unknown"

    @classmethod
    def of(
        cls, flags: Iterable[str], *, x86_64: bool = True, model: str = "unknown"
    ) -> CpuFeatures:
        """Features from a flag list (tests pass the flags of a host they do not run on)."""
        return cls(frozenset(f.lower() for f in flags), x86_64, model)

    @property
    def vnni(self) -> bool:
        """Has AVX512-VNNI or AVX-VNNI."""
        return any(flag in self.flags for flag in VNNI_FLAGS)


def parse_cpuinfo(text: str, machine: str) -> CpuFeatures:
    """Features from the text of ``/proc/cpuinfo`` (the first processor's entry)."""
    fields: dict[str, str] = {}
    for line in text.splitlines():
        key, sep, value = line.partition(":")
        if sep:
            fields.setdefault(key.strip().lower(), value.strip())
    flags = fields.get("flags") or fields.get("features") or ""
    return CpuFeatures.of(
        flags.split(),
        x86_64=machine.lower() in _X86_MACHINES,
        model=fields.get("model name") or fields.get("cpu model") or "unknown",
    )


def host_cpu(path: Path = CPUINFO) -> CpuFeatures:
    """This machine's CPU; no flags (so no VNNI) when ``path`` cannot be read."""
    try:
        text = path.read_text(errors="replace")
    except OSError:
        text = ""
    return parse_cpuinfo(text, platform.machine())


def int8_problem(scheme: str | None, cpu: CpuFeatures) -> str | None:
    """Why an INT8 model of ``scheme`` would not compute what it was validated to here.

    Args:
        scheme: The version's INT8 scheme (``shared.schemas.detector_artifact``), None for FP32.
        cpu: The CPU that would run it.

    Returns:
        A message naming the missing CPU feature, or None when the scheme is exact on ``cpu``.
    """
    if scheme not in NEEDS_VNNI or not cpu.x86_64 or cpu.vnni:
        return None
    what = (
        "an INT8 version with no recorded scheme (quantised as u8s8, full-range weights)"
        if scheme == UNRECORDED
        else f"INT8 scheme {scheme!r} (full-range weights)"
    )
    return (
        f"{what} needs a CPU with VNNI (flag avx512_vnni or avx_vnni); this CPU "
        f"({cpu.model}) has neither, and ONNX Runtime's U8S8 kernels saturate without it: "
        "re-quantise the model (the job now uses u8s8-rr7) or serve its FP32 version"
    )
