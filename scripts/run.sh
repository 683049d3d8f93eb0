#!/usr/bin/env bash
# The suite's main job on this machine, with the embedded defaults (a local folder for storage,
# Celery on kombu's filesystem transport, one worker; no Redis or S3 server needed):
#   1. start the suite (`agssp up`: four APIs, console, pipeline service, one worker),
#   2. run the AGSSP pipeline at the cpu-demo preset on Magnetic-tile from ../shared/data
#      when it is there, else on generated textured images with defects,
#   3. print the report's address and keep serving the new detector on /detect.
# `scripts/run.sh --serve-only` starts the suite without the demo. Point REDIS_URL and S3_* at
# real servers to run the same suite on them.
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/setup.sh
export YOLO_OFFLINE=1 YOLO_AUTOINSTALL=False
export YOLO_CONFIG_DIR="${YOLO_CONFIG_DIR:-$PWD/var/agssp/ultralytics}"
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
  --format masks --labelled-images images --annotations masks \
  --preset cpu-demo --promote production
echo "run.sh: pipeline finished in $(( $(date +%s) - started )) s"
# A labelled defect image (a defect-free one would rightly come back empty).
SAMPLE=$(find "$DEMO/labelled/images" -type f ! -path '*/MT_Free/*' | sort | head -1)
cat <<EOF
The suite keeps serving (Ctrl-C stops it). Try the new detector on a defect image (a few
CPU minutes of training: on the generated set it finds the defects, on Magnetic-tile's 50
labels it is still too weak to report any, see the report's mAP):
  curl -s -F image=@$SAMPLE http://127.0.0.1:$((BASE_PORT + 3))/detect
Console: http://127.0.0.1:$((BASE_PORT + 4))   Suite log: $LOG
EOF
wait "$UP"
