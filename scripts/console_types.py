"""Types of the console's request and response bodies, from each service's own OpenAPI.

Builds every API of the table of services (``agssp.services``) with its factory, as
``agssp serve`` does, but starts none: an app's store, broker and models are made in its
lifespan, which never runs here, so no server is needed. It writes ``<service>.openapi.json``
and, with npm's ``openapi-typescript`` (installed by ``scripts/setup.sh``), ``<service>.d.ts``
into ``build/console-types/`` (ignored). The console's scripts name them in JSDoc as
``import("@api/<service>")`` (``tsconfig.json`` maps ``@api/*`` there), so ``tsc --checkJs``
refuses a request body that no longer matches its schema.

    .venv/bin/python scripts/console_types.py [--out DIR]
"""

from __future__ import annotations

import argparse
import importlib
import json
import logging
import subprocess
import sys
from pathlib import Path
from typing import Any

from agssp.services import SERVICES, Role

ROOT = Path(__file__).resolve().parent.parent
DEFAULT_OUT = ROOT / "build" / "console-types"
GENERATOR = ROOT / "node_modules" / ".bin" / "openapi-typescript"
# A field with a default is optional, as the schema's `required` lists say: a request body
# may leave it out (openapi-typescript would otherwise make it required).
GENERATOR_FLAGS = ("--default-non-nullable", "false")


def api_services() -> list[str]:
    """Every service whose routes the console calls: all but the console itself."""
    return [s.name for s in SERVICES if s.role is not Role.CONSOLE]


def schema_of(name: str) -> dict[str, Any]:
    """The OpenAPI document ``name`` serves at ``/openapi.json``, built without serving."""
    (service,) = (s for s in SERVICES if s.name == name)
    module, _, factory = service.factory.partition(":")
    app = getattr(importlib.import_module(module), factory)()
    schema: dict[str, Any] = app.openapi()
    return schema


def write_schemas(out: Path, names: list[str]) -> list[Path]:
    """``<out>/<name>.openapi.json`` for each service; the paths written."""
    out.mkdir(parents=True, exist_ok=True)
    written = []
    for name in names:
        path = out / f"{name}.openapi.json"
        path.write_text(json.dumps(schema_of(name), indent=1, sort_keys=True), encoding="utf-8")
        written.append(path)
    return written


def generate(schemas: list[Path]) -> list[Path]:
    """``<name>.d.ts`` beside each ``<name>.openapi.json``, by openapi-typescript."""
    if not GENERATOR.exists():
        raise SystemExit(
            f"console_types: {GENERATOR.relative_to(ROOT)} is missing: run scripts/setup.sh "
            "(it installs the npm dev tools when npm is present)"
        )
    typed = []
    for schema in schemas:
        target = schema.with_name(schema.name.replace(".openapi.json", ".d.ts"))
        subprocess.run(
            [str(GENERATOR), str(schema), *GENERATOR_FLAGS, "--output", str(target)],
            check=True,
            capture_output=True,
            text=True,
        )
        typed.append(target)
    return typed


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", type=Path, default=DEFAULT_OUT, help="folder for the files")
    args = parser.parse_args(argv)
    # The apps say at build time that auth is off; that is not news here.
    logging.disable(logging.WARNING)
    typed = generate(write_schemas(args.out, api_services()))
    sys.stdout.write(f"console_types: {len(typed)} services typed into {args.out}\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
