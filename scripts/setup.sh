#!/usr/bin/env bash
# One-time (idempotent) set-up on a fresh machine: virtual environment, torch, the suite with
# every extra, and redis-server from Debian packages when missing. Safe to run repeatedly.
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-python3.11}
command -v "$PY" >/dev/null || PY=python3
VENV=${AGSSP_VENV:-.venv}
STAMP="$VENV/.agssp-installed"
want="$(sha256sum pyproject.toml | cut -d' ' -f1)"

if [ ! -x "$VENV/bin/python" ]; then
  echo "setup: creating $VENV with $($PY --version)"
  "$PY" -m venv "$VENV"
fi
if [ "$(cat "$STAMP" 2>/dev/null)" != "$want" ]; then
  echo "setup: installing torch and the suite into $VENV (first run takes a few minutes)"
  "$VENV/bin/python" -m pip install -q --upgrade pip
  # torch and torchvision are pinned to the pair that imports together on these machines.
  "$VENV/bin/python" -m pip install -q "torch==2.14.1" "torchvision==0.29.1"
  "$VENV/bin/python" -m pip install -q -e ".[all,test]"
  echo "$want" > "$STAMP"
fi

if ! command -v redis-server >/dev/null 2>&1; then
  echo "setup: installing redis-server from Debian packages (integration tests need it)"
  if [ "$(id -u)" = 0 ]; then apt-get update -qq && apt-get install -y -qq redis-server >/dev/null
  else sudo apt-get update -qq && sudo apt-get install -y -qq redis-server >/dev/null; fi
fi
echo "setup: ready ($VENV)"
