"""install-deps.sh (inline in the Dockerfiles): the torch wheel index follows TORCH_VARIANT."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

CPU_INDEX = "https://download.pytorch.org/whl/cpu"


def _fake_pip(tmp_path: Path) -> Path:
    log = tmp_path / "pip.log"
    fake = tmp_path / "fake-pip"
    fake.write_text(
        f"#!{sys.executable}\n"
        "import json, sys\n"
        "args = sys.argv[1:]\n"
        "req = open(args[args.index('-r') + 1]).read().split()\n"
        f"open({str(log)!r}, 'a').write(json.dumps({{'args': args, 'req': req}}) + '\\n')\n"
    )
    fake.chmod(0o755)
    return fake


def _install(build_dir: Path, extras: str, **env: str) -> tuple[int, list[dict[str, list[str]]]]:
    fake = _fake_pip(build_dir)
    path = f"{Path(sys.executable).parent}{os.pathsep}{os.environ.get('PATH', '')}"
    result = subprocess.run(
        ["sh", str(build_dir / "install-deps.sh"), extras],
        env={"PATH": path, "PIP": str(fake), **env},
        capture_output=True,
        text=True,
    )
    log = build_dir / "pip.log"
    calls = [json.loads(line) for line in log.read_text().splitlines()] if log.exists() else []
    return result.returncode, calls


def test_cpu_variant_takes_torch_from_the_cpu_wheel_index(build_dir: Path) -> None:
    # given / when
    code, calls = _install(build_dir, "ml", TORCH_VARIANT="cpu")

    # then: torch first, from the CPU index; then everything from PyPI
    assert code == 0
    torch_call, all_call = calls
    assert torch_call["args"][torch_call["args"].index("--index-url") + 1] == CPU_INDEX
    assert [r.split(">")[0] for r in torch_call["req"]] == ["torch", "torchvision"]
    assert "--index-url" not in all_call["args"]
    assert any("open_clip" in r for r in all_call["req"])


def test_cuda_variant_takes_torch_from_pypi_and_an_index_can_be_forced(build_dir: Path) -> None:
    # given / when
    code, calls = _install(build_dir, "ml", TORCH_VARIANT="cuda")
    forced_code, forced = _install(
        build_dir, "ml", TORCH_VARIANT="cuda", TORCH_INDEX="https://mirror.invalid/cu124"
    )

    # then
    assert code == 0
    assert all("--index-url" not in call["args"] for call in calls)
    assert forced_code == 0
    assert "https://mirror.invalid/cu124" in forced[-2]["args"]


def test_unknown_torch_variant_fails_the_build(build_dir: Path) -> None:
    # given / when
    code, calls = _install(build_dir, "ml", TORCH_VARIANT="rocm")

    # then
    assert code == 2
    assert calls == []


def test_api_extras_install_no_torch_at_all(build_dir: Path) -> None:
    # given / when
    code, calls = _install(build_dir, "api,storage,jobs", TORCH_VARIANT="cpu")

    # then: one pip call, and no torch in it
    assert code == 0
    assert len(calls) == 1
    assert not any(r.startswith("torch") for r in calls[0]["req"])
