#!/usr/bin/env bash
# Set up (if needed), lint (ruff, mypy, import-linter), then run the unit and integration
# tiers. Integration tests start their own redis-server and S3 server on free loopback ports.
# Tests run in a random order (pytest-randomly) so hidden coupling between them shows at once;
# the seed is printed, and AGSSP_TEST_SEED=<seed> scripts/test.sh replays that order.
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/setup.sh
source .venv/bin/activate
seed=${AGSSP_TEST_SEED:-$(( (RANDOM << 15) | RANDOM ))}
start=$(date +%s)
echo "== lint: ruff"
ruff check .
ruff format --check .
echo "== lint: import-linter"
lint-imports
echo "== lint: mypy (strict)"
mypy agssp shared services
echo "== lint: console (types from each service's OpenAPI, tsc --checkJs, Biome)"
if command -v node >/dev/null 2>&1 && [ -x node_modules/.bin/tsc ]; then
  python scripts/console_types.py
  node_modules/.bin/tsc -p tsconfig.json
  echo "tsc: no errors"
  node_modules/.bin/biome ci --error-on-warnings --colors=off
else
  echo "skipped: node/npm not found (scripts/setup.sh installs the console's checks where npm is)"
fi
echo "== tests (random order, seed $seed: replay with AGSSP_TEST_SEED=$seed scripts/test.sh)"
python -m pytest tests/unit tests/integration -q --timeout=900 -p randomly --randomly-seed="$seed" "$@"
echo "test.sh: done in $(( $(date +%s) - start )) s"
