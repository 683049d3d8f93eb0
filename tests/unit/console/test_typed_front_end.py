"""The console's scripts type-check against the OpenAPI the services serve now.

``scripts/console_types.py`` writes each service's schema and its TypeScript types; the
scripts build every request body with a JSDoc type from them, so ``tsc --checkJs`` refuses a
body (or a query, or a field read from an answer) that no longer matches. The second test
renames a field in one schema and expects exactly that refusal: the check can fail.
"""

from __future__ import annotations

import importlib.util
import json
import shutil
import subprocess
import sys
from pathlib import Path
from types import ModuleType

import pytest

ROOT = Path(__file__).resolve().parents[3]
TSC = ROOT / "node_modules" / ".bin" / "tsc"
SCRIPT = ROOT / "scripts" / "console_types.py"

pytestmark = pytest.mark.skipif(
    not TSC.exists(), reason="npm dev tools missing: scripts/setup.sh installs them where npm is"
)


def _console_types() -> ModuleType:
    spec = importlib.util.spec_from_file_location("console_types", SCRIPT)
    assert spec
    assert spec.loader
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.fixture(scope="module")
def served_types(tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("console-types")
    command = [sys.executable, str(SCRIPT), "--out", str(out)]
    subprocess.run(command, cwd=ROOT, check=True, capture_output=True, timeout=600)
    return out


def _tsc(types: Path, tmp_path: Path) -> subprocess.CompletedProcess[str]:
    """tsc with the repository's tsconfig.json, ``@api/*`` pointed at ``types``."""
    config = tmp_path / "tsconfig.json"
    paths = {"@api/*": [f"{types}/*"]}
    config.write_text(
        json.dumps({"extends": str(ROOT / "tsconfig.json"), "compilerOptions": {"paths": paths}})
    )
    command = [str(TSC), "-p", str(config), "--pretty", "false"]
    return subprocess.run(command, cwd=ROOT, capture_output=True, text=True, timeout=300)


def test_the_console_scripts_match_the_schemas_the_services_serve(
    served_types: Path, tmp_path: Path
) -> None:
    # given
    assert {p.name for p in served_types.glob("*.d.ts")} == {
        f"{name}.d.ts" for name in ("anomaly_map", "pretrain", "finetune", "inference", "pipeline")
    }
    # when
    result = _tsc(served_types, tmp_path)
    # then
    assert result.returncode == 0, result.stdout + result.stderr


def test_a_request_body_that_drifts_from_its_schema_fails_the_check(
    served_types: Path, tmp_path: Path
) -> None:
    # given: the finetune API renames a required field of POST /v1/evaluations
    drifted = tmp_path / "drifted"
    shutil.copytree(served_types, drifted)
    schema_path = drifted / "finetune.openapi.json"
    schema = json.loads(schema_path.read_text())
    request = schema["components"]["schemas"]["EvaluationRequest"]
    request["properties"]["dataset_ref"] = request["properties"].pop("dataset")
    request["required"] = ["dataset_ref" if r == "dataset" else r for r in request["required"]]
    schema_path.write_text(json.dumps(schema))
    _console_types().generate([schema_path])
    # when
    result = _tsc(drifted, tmp_path)
    # then: the body evaluation.js builds is refused, for the old name and the missing new one
    assert result.returncode != 0
    errors = [line for line in result.stdout.splitlines() if "error TS" in line]
    assert errors, result.stdout
    assert all(line.startswith("services/console/static/evaluation.js") for line in errors), errors
    assert any("'dataset'" in line for line in errors), errors
