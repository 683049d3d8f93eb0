#!/usr/bin/env bash
# Run the whole suite on this machine with the embedded defaults: a local folder for storage,
# Celery on kombu's filesystem transport, one worker; no Redis or S3 server needed.
# Point REDIS_URL and S3_* at real servers to run the same suite on them.
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/setup.sh
export YOLO_OFFLINE=1 YOLO_AUTOINSTALL=False
export YOLO_CONFIG_DIR="${YOLO_CONFIG_DIR:-$PWD/var/agssp/ultralytics}"
exec .venv/bin/agssp up "$@"
