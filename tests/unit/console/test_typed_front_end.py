"""The console's scripts type-check against the OpenAPI the services serve now.

``scripts/console_types.py`` writes each service's schema and its TypeScript types; the
scripts build every request body with a JSDoc type from them, so ``tsc --checkJs`` refuses a
body (or a query, or a field read from an answer) that no longer matches. The drift tests
rename a field in one schema, or answer a route with another one, and expect exactly that
refusal: the check can fail. ``api()`` answers the type of the route its path matches (the
``routes.d.ts`` the script writes), which a probe script checks route by route.
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
    sys.modules[spec.name] = module  # its dataclasses look their module up there
    spec.loader.exec_module(module)
    return module


@pytest.fixture(scope="module")
def served_types(tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("console-types")
    command = [sys.executable, str(SCRIPT), "--out", str(out)]
    subprocess.run(command, cwd=ROOT, check=True, capture_output=True, timeout=600)
    return out


def _tsc(
    types: Path, tmp_path: Path, extra: list[Path] | None = None
) -> subprocess.CompletedProcess[str]:
    """tsc with the repository's tsconfig.json, ``@api/*`` pointed at ``types``, and the
    console's scripts plus ``extra`` files checked."""
    config = tmp_path / "tsconfig.json"
    paths = {"@api/*": [f"{types}/*"]}
    include = [str(ROOT / "services/console/static/*.js"), *map(str, extra or [])]
    body = {"extends": str(ROOT / "tsconfig.json"), "compilerOptions": {"paths": paths}}
    config.write_text(json.dumps({**body, "include": include}))
    command = [str(TSC), "-p", str(config), "--pretty", "false"]
    return subprocess.run(command, cwd=ROOT, capture_output=True, text=True, timeout=300)


def test_the_console_scripts_match_the_schemas_the_services_serve(
    served_types: Path, tmp_path: Path
) -> None:
    # given
    assert {p.name for p in served_types.glob("*.d.ts")} == {
        f"{name}.d.ts"
        for name in ("anomaly_map", "pretrain", "finetune", "inference", "pipeline", "routes")
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


# Each `@ts-expect-error` line must fail (so the answer is not `any`); the others must pass
# (so the path picked the route it names).
PROBE = """// @ts-check
import { api } from "%s/services/console/static/console.js";
/** @typedef {import("@api/finetune").components["schemas"]} F */
/** @param {string} id */
export async function probe(id) {
  /** @type {F["ModelDetailResponse"]} */
  const detail = await api("finetune", `v1/models/${encodeURIComponent(id)}`);
  /** @type {F["ModelVersionDetail"]} */
  const version = await api("finetune", `v1/models/${id}/versions/${id}`);
  /** @type {F["EvaluationComparison"]} */
  const compare = await api("finetune", "v1/evaluations/compare", { query: {} });
  /** @type {F["JobRecord"]} */
  const canceled = await api("finetune", `v1/jobs/${id}/cancel`, { method: "POST" });
  /** @type {Blob} */
  const zip = await api("finetune", `v1/review-exports/${id}/zip`);
  /** @type {Blob} */
  const object = await api("pipeline", `v1/objects/${id}/${id}/map.png`);
  // @ts-expect-error: typed, not any
  /** @type {number} */ const models = await api("finetune", "v1/models");
  // @ts-expect-error: a path built at run time answers unknown, to be cast
  /** @type {number} */ const built = await api("finetune", id);
  // @ts-expect-error: no GET route has this path
  /** @type {number} */ const none = await api("finetune", `v1/models/${id}/versoins/${id}`);
  return [detail, version, compare, canceled, zip, object, models, built, none];
}
"""


def test_api_answers_the_type_of_the_route_its_path_matches(
    served_types: Path, tmp_path: Path
) -> None:
    # given a script calling literal and template paths
    probe = tmp_path / "probe.js"
    probe.write_text(PROBE % ROOT)
    # when
    result = _tsc(served_types, tmp_path, [probe])
    # then
    assert result.returncode == 0, result.stdout + result.stderr


def test_an_answer_that_drifts_from_what_a_page_reads_fails_the_check(
    served_types: Path, tmp_path: Path
) -> None:
    # given: the finetune API answers a saved evaluation with the model list instead
    drifted = tmp_path / "drifted"
    shutil.copytree(served_types, drifted)
    schema_path = drifted / "finetune.openapi.json"
    schema = json.loads(schema_path.read_text())
    route = schema["paths"]["/v1/models/{name}/versions/{version}/evaluation"]["get"]
    route["responses"]["200"]["content"]["application/json"]["schema"] = {
        "$ref": "#/components/schemas/ModelList"
    }
    schema_path.write_text(json.dumps(schema))
    _console_types().generate([schema_path])
    # when
    result = _tsc(drifted, tmp_path)
    # then: the pages that read it as an evaluation are refused, and no other
    assert result.returncode != 0
    errors = [line for line in result.stdout.splitlines() if "error TS" in line]
    files = {line.split("(", 1)[0] for line in errors}
    assert "services/console/static/evaluation.js" in files, errors
    assert files <= {
        "services/console/static/evaluation.js",
        "services/console/static/compare.js",
    }, errors
