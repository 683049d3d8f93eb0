#!/usr/bin/env bash
# The suite's main job on this machine, with the embedded defaults (a local folder for storage,
# Celery on kombu's filesystem transport, one worker; no Redis or S3 server needed):
#   1. start the suite (`agssp up`: four APIs, console, pipeline service, one worker),
#   2. run the AGSSP pipeline at the cpu-demo preset on NEU-DET from ../shared/data when it
#      is there, else on generated textured images with defects,
#   3. send the unlabelled images to the new detector's /detect and count the answers with
#      boxes, print the report's address and keep serving.
# `scripts/run.sh --serve-only` starts the suite without the demo. Point REDIS_URL and S3_* at
# real servers to run the same suite on them.
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/setup.sh
# No YOLO_* exports: every agssp command makes ultralytics offline itself (issue 27).
AGSSP=.venv/bin/agssp
BASE_PORT=${AGSSP_BASE_PORT:-8001}
PIPELINE_URL="http://127.0.0.1:$((BASE_PORT + 5))"
if [ "${1:-}" = "--serve-only" ]; then
  shift
  exec "$AGSSP" up --base-port "$BASE_PORT" "$@"
fi

mkdir -p var
LOG=${AGSSP_SUITE_LOG:-var/suite.log}
echo "run.sh: starting the suite (logs in $LOG)"
"$AGSSP" up --base-port "$BASE_PORT" "$@" >"$LOG" 2>&1 &
UP=$!
trap 'kill -INT "$UP" 2>/dev/null; wait "$UP"' INT TERM
for i in $(seq 0 5); do
  port=$((BASE_PORT + i))
  for _ in $(seq 1 240); do
    curl -fsS "http://127.0.0.1:$port/healthz" >/dev/null 2>&1 && break
    kill -0 "$UP" 2>/dev/null || { echo "run.sh: the suite stopped, see $LOG" >&2; tail -n 20 "$LOG" >&2; exit 1; }
    sleep 0.5
  done
done

DEMO=var/demo
"$AGSSP" demo data "$DEMO" --shared-data ../shared/data
started=$(date +%s)
"$AGSSP" pipeline run --url "$PIPELINE_URL" \
  --name demo-det --category demo-surface --describe "metal surface" \
  --images "$DEMO/unlabelled" --labelled "$DEMO/labelled" \
  --format voc --labelled-images images --annotations annotations \
  --preset cpu-demo --promote production
echo "run.sh: pipeline finished in $(( $(date +%s) - started )) s"
# The pool's images were never labelled: what the served detector finds there.
"$AGSSP" demo detect "$DEMO/unlabelled" --url "http://127.0.0.1:$((BASE_PORT + 3))"
cat <<EOF
The suite keeps serving the new detector on http://127.0.0.1:$((BASE_PORT + 3))/detect (Ctrl-C stops it).
Console: http://127.0.0.1:$((BASE_PORT + 4))   Suite log: $LOG
EOF
wait "$UP"
