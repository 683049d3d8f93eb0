#!/usr/bin/env bash
# One-call GPU check (issue 25): on a lent GPU machine, after scripts/setup.sh, measure in a few
# minutes what the suite does on the device (KeAD maps/s at fp32 and fp16, AGBP steps/s for
# YOLOv8s and ResNet-50 at batch 64 with AMP, /detect against bare ONNX Runtime CUDA and
# TensorRT, the slow-marked tests) into benchmarks/results/gpu-check-<device>.json, with a
# one-screen summary. No network; installs nothing beyond the suite's own set-up.
#   scripts/gpu-check.sh            # the real check (CUDA)
#   scripts/gpu-check.sh --dry-run  # the same code on the CPU with tiny sizes (run by the tests)
set -euo pipefail
cd "$(dirname "$0")/.."
[ -x .venv/bin/python ] || scripts/setup.sh
exec .venv/bin/python -m benchmarks.gpu_check "$@"
