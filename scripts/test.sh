#!/usr/bin/env bash
# Set up (if needed), lint (ruff, mypy, import-linter), then run the unit and integration
# tiers. Integration tests start their own redis-server and S3 server on free loopback ports.
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/setup.sh
source .venv/bin/activate
export YOLO_OFFLINE=1 YOLO_AUTOINSTALL=False
start=$(date +%s)
echo "== lint: ruff"
ruff check .
ruff format --check .
echo "== lint: import-linter"
lint-imports
echo "== lint: mypy (strict)"
mypy agssp shared services
echo "== tests"
python -m pytest tests/unit tests/integration -q --timeout=900 "$@"
echo "test.sh: done in $(( $(date +%s) - start )) s"
