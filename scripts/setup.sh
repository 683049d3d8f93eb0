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

# Debian packages the integration tier drives for real: redis-server (broker), mosquitto (an
# MQTT broker for /detect result sinks) and chromium (headless browser tests of the console);
# wrk, the load generator of benchmarks/detect.py (C, in its own process: the load it makes
# costs the server's cores little).
need=()
command -v redis-server >/dev/null 2>&1 || need+=(redis-server)
command -v mosquitto >/dev/null 2>&1 || [ -x /usr/sbin/mosquitto ] || need+=(mosquitto)
command -v chromium >/dev/null 2>&1 || need+=(chromium)
command -v wrk >/dev/null 2>&1 || need+=(wrk)
if [ "${#need[@]}" -gt 0 ]; then
  echo "setup: installing ${need[*]} from Debian packages (tests and benchmarks need them)"
  SUDO=""; [ "$(id -u)" = 0 ] || SUDO=sudo
  $SUDO apt-get update -qq && $SUDO apt-get install -y -qq "${need[@]}" >/dev/null
fi
# The console's dev tools (TypeScript, openapi-typescript, Biome: package.json, pinned by
# package-lock.json) into ./node_modules, for the type and lint checks of scripts/test.sh.
# The console needs none of them to run: the browser loads its files as they are.
NODE_STAMP=node_modules/.agssp-installed
if command -v npm >/dev/null 2>&1; then
  want_node="$(cat package.json package-lock.json | sha256sum | cut -d' ' -f1)"
  if [ "$(cat "$NODE_STAMP" 2>/dev/null)" != "$want_node" ]; then
    echo "setup: installing the console's npm dev tools into node_modules (npm ci)"
    npm ci --no-audit --no-fund --loglevel=error
    echo "$want_node" > "$NODE_STAMP"
  fi
else
  echo "setup: npm not found: the console's type check (tsc) and linter (Biome) will be" \
    "skipped; install Node.js and npm (Debian: apt-get install nodejs npm), then rerun this"
fi
echo "setup: ready ($VENV)"
