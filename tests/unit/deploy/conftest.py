"""Fixtures for the deploy checks: parsed compose file, rendered k8s overlays, the Dockerfile."""

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
    load_dockerfile,
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
def dockerfile() -> Dockerfile:
    """The parsed root Dockerfile (every image is one of its targets)."""
    return load_dockerfile()


@pytest.fixture
def build_dir(dockerfile: Dockerfile, tmp_path: Path) -> Path:
    """The build helpers the Dockerfile writes inline, next to a copy of pyproject.toml."""
    inline = dockerfile.heredocs()
    for name in ("requirements.py", "install-deps.sh"):
        (tmp_path / name).write_text(inline[f"{BUILD_DIR}/{name}"])
    shutil.copy(ROOT / "pyproject.toml", tmp_path / "pyproject.toml")
    return tmp_path
