"""Fixtures for the deploy checks: parsed compose file, rendered k8s overlays, Dockerfiles."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest

from tests.unit.deploy.kustomize import render
from tests.unit.deploy.manifests import (
    BUILD_DIR,
    K8S,
    OVERLAYS,
    ROOT,
    Doc,
    Dockerfile,
    load_compose,
    parse_dockerfile,
    service_dockerfiles,
)


@pytest.fixture(scope="session")
def compose() -> Doc:
    return load_compose()


@pytest.fixture(scope="session")
def compose_services(compose: Doc) -> dict[str, Doc]:
    return dict(compose["services"])


@pytest.fixture(scope="session")
def rendered() -> dict[str, list[Doc]]:
    """The rendered base and overlays, by name ('base', 'cpu', 'gpu')."""
    folders: dict[str, Path] = {"base": K8S / "base"}
    folders.update({name: K8S / "overlays" / name for name in OVERLAYS})
    return {name: render(folder) for name, folder in folders.items()}


@pytest.fixture(scope="session")
def dockerfiles() -> dict[str, Dockerfile]:
    """Parsed services/<svc>/Dockerfile by service name."""
    return {svc: parse_dockerfile(path) for svc, path in service_dockerfiles().items()}


@pytest.fixture
def build_dir(dockerfiles: dict[str, Dockerfile], tmp_path: Path) -> Path:
    """The build helpers the Dockerfiles write inline, next to a copy of pyproject.toml."""
    inline = next(iter(dockerfiles.values())).heredocs()
    for name in ("requirements.py", "install-deps.sh"):
        (tmp_path / name).write_text(inline[f"{BUILD_DIR}/{name}"])
    shutil.copy(ROOT / "pyproject.toml", tmp_path / "pyproject.toml")
    return tmp_path
