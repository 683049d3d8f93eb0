"""Each image's entry points import with only the dependencies that image installs."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from agssp import services as service_table
from tests.unit.deploy.manifests import (
    ROOT,
    Dockerfile,
    command_role,
    dockerfile_targets,
    image_cmd,
    install_calls,
    requirement_names,
)

# Import names of the distributions whose name differs (others: name with "-" -> "_").
IMPORT_NAMES = {
    "open-clip-torch": "open_clip",
    "opencv-python-headless": "cv2",
    "scikit-learn": "sklearn",
    "pillow": "PIL",
    "python-multipart": "multipart",
}
TARGETS = [pytest.param(target, svc, id=target) for target, svc, _ in dockerfile_targets()]
# Entry points importing a dependency their image does not install: the image would not start.
KNOWN_BROKEN: dict[str, str] = {}

_IMPORT_CHECK = """
import importlib, importlib.util, sys
blocked, modules, app = sys.argv[1], sys.argv[2], sys.argv[3]
for name in filter(None, blocked.split(",")):
    sys.modules[name] = None  # looks uninstalled: import fails, find_spec returns None
for name in modules.split(","):
    try:  # like `agssp worker`: a queue whose task module is not written yet is skipped
        spec = importlib.util.find_spec(name)
    except ModuleNotFoundError:
        spec = None
    if spec is not None:
        importlib.import_module(name)
if app:
    importlib.import_module(app).app_factory()
"""


@pytest.mark.parametrize(("target", "svc"), TARGETS)
def test_entry_points_import_with_only_the_image_dependencies(
    dockerfile: Dockerfile, build_dir: Path, tmp_path: Path, target: str, svc: str
) -> None:
    # given: the distributions of every extra that this image does not install
    if target in KNOWN_BROKEN:
        pytest.xfail(KNOWN_BROKEN[target])
    df = dockerfile
    installed = set().union(*(requirement_names(build_dir, c) for c in install_calls(df, target)))
    missing = requirement_names(build_dir, ["all"]) - installed
    blocked = sorted(IMPORT_NAMES.get(d, d.replace("-", "_")) for d in missing)
    role, names = command_role(image_cmd(df, target))
    app = service_table.by_name(svc).factory.partition(":")[0] if role == "api" else ""
    modules = ["agssp.main", app or "shared.jobs.celery_app"]
    modules += [service_table.task_modules()[q] for q in names if role == "worker"]

    # when: the entry points import (and the API app builds) with those hidden
    result = subprocess.run(
        [sys.executable, "-c", _IMPORT_CHECK, ",".join(blocked), ",".join(modules), app],
        cwd=tmp_path,
        env={**os.environ, "PYTHONPATH": str(ROOT), "AGSSP_HOME": str(tmp_path)},
        capture_output=True,
        text=True,
        timeout=300,
    )

    # then
    assert result.returncode == 0, f"{target} without {blocked}:\n{result.stderr[-3000:]}"
