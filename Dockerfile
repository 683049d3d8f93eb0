# syntax=docker/dockerfile:1
# One Dockerfile for every image of the suite; pick the image with --target:
#   anomaly-map-api   KeAD maps over HTTP (loads CLIP)          maps-worker      queues maps, default
#   pretrain-api      submits pretraining jobs (no torch)       pretrain-worker  queue pretrain
#   finetune-api      finetune jobs, model registry (no torch)  finetune-worker  queue finetune
#   inference-api     YOLOv8 detection with ONNX Runtime (no torch)
#   console           the web console: pages + a same-origin proxy to the four APIs (no torch)
#   pipeline-api      runs whole pipelines through the four APIs' public routes (no torch)
# e.g. docker build --target pretrain-worker --build-arg TORCH_VARIANT=cuda -t agssp/pretrain-worker .
# The targets share the stages below (base image, user, env, build helpers, weights) and differ
# only in the extras they install, the service folder they copy and their CMD.
# Build context is the repository root. Build arguments:
#   TORCH_VARIANT  cpu (default: torch from the PyTorch CPU wheel index) or cuda (PyPI's wheels,
#                  which bundle the CUDA runtime; the host needs the NVIDIA driver + toolkit)
#   TORCH_INDEX    a pip index URL for torch that overrides the one TORCH_VARIANT picks
#   BAKE_WEIGHTS   true = copy WEIGHTS_SRC (a folder inside the build context, default
#                  var/agssp/models, laid out like AGSSP_MODEL_DIR) into /models
ARG PYTHON_IMAGE=python:3.11-slim-bookworm
ARG BAKE_WEIGHTS=false

FROM ${PYTHON_IMAGE} AS base
# Nothing is downloaded when a container starts: weights come from /models, ultralytics is
# offline and never pip-installs (field-notes §0.4, §B2).
ENV PYTHONUNBUFFERED=1 \
    PYTHONDONTWRITEBYTECODE=1 \
    PYTHONPATH=/app \
    AGSSP_HOME=/var/lib/agssp \
    AGSSP_MODEL_DIR=/models \
    YOLO_OFFLINE=1 \
    YOLO_AUTOINSTALL=False \
    YOLO_CONFIG_DIR=/tmp/ultralytics
RUN groupadd --system --gid 10001 agssp \
 && useradd --system --uid 10001 --gid agssp --home-dir /var/lib/agssp --shell /usr/sbin/nologin agssp \
 && mkdir -p /app /models /var/lib/agssp \
 && chown agssp:agssp /models /var/lib/agssp
# Turns pyproject.toml extras into requirement lines, so dependencies install in a layer that
# only changes with pyproject.toml, before any code is copied.
COPY <<'EOF' /opt/agssp-build/requirements.py
"""Print the requirements of pyproject.toml extras, one per line.

usage: requirements.py PYPROJECT EXTRAS [PICKS] [--torch-only]
EXTRAS: comma-separated extras (base dependencies always included);
PICKS: comma-separated EXTRA:PACKAGE, single packages taken from other extras.
"""
import re
import sys
import tomllib

TORCH = {"torch", "torchvision"}


def dist(req):
    return re.split(r"[\s\[<>=!~;@]", req, maxsplit=1)[0].lower().replace("_", "-")


def main(args):
    torch_only = "--torch-only" in args
    path, extras, picks = ([a for a in args if a != "--torch-only"] + ["", ""])[:3]
    with open(path, "rb") as fh:
        project = tomllib.load(fh)["project"]
    optional = project.get("optional-dependencies", {})
    reqs, todo, done = list(project.get("dependencies", [])), extras.split(","), set()
    while todo:
        extra = todo.pop().strip()
        if not extra or extra in done:
            continue
        if extra not in optional:
            sys.exit(f"unknown extra {extra!r}; pyproject.toml has {sorted(optional)}")
        done.add(extra)
        for req in optional[extra]:
            own = re.fullmatch(re.escape(project["name"]) + r"\[(.+)\]", req.replace(" ", ""))
            if own:  # a self-reference such as agssp-suite[api,storage]
                todo.extend(own.group(1).split(","))
            else:
                reqs.append(req)
    for pick in filter(None, picks.split(",")):
        extra, _, name = pick.partition(":")
        found = [r for r in optional.get(extra, []) if dist(r) == name.lower()]
        if not found:
            sys.exit(f"no {name!r} in extra {extra!r} of pyproject.toml")
        reqs.extend(found)
    keep = [r for r in dict.fromkeys(reqs) if not torch_only or dist(r) in TORCH]
    sys.stdout.write("".join(line + "\n" for line in keep))


main(sys.argv[1:])
EOF
COPY <<'EOF' /opt/agssp-build/install-deps.sh
#!/bin/sh
# usage: install-deps.sh EXTRAS [PICKS]; env TORCH_VARIANT (cpu|cuda), TORCH_INDEX, PIP.
# torch/torchvision first from the index TORCH_VARIANT picks, then everything from PyPI;
# pip keeps the torch build already installed because it satisfies every other requirement.
set -eu
here=$(dirname "$0")
pip=${PIP:-pip}
tmp=$(mktemp -d)
python "$here/requirements.py" "$here/pyproject.toml" "$1" "${2:-}" > "$tmp/all.txt"
python "$here/requirements.py" "$here/pyproject.toml" "$1" "${2:-}" --torch-only > "$tmp/torch.txt"
variant=${TORCH_VARIANT:-cpu}
case "$variant" in
  cpu) index=${TORCH_INDEX:-https://download.pytorch.org/whl/cpu} ;;
  cuda) index=${TORCH_INDEX:-} ;;
  *) echo "TORCH_VARIANT must be cpu or cuda, not '$variant'" >&2; exit 2 ;;
esac
if [ -s "$tmp/torch.txt" ]; then
  if [ -n "$index" ]; then
    $pip install --disable-pip-version-check --index-url "$index" -r "$tmp/torch.txt"
  else
    $pip install --disable-pip-version-check -r "$tmp/torch.txt"
  fi
fi
$pip install --disable-pip-version-check -r "$tmp/all.txt"
rm -rf "$tmp"
EOF
# The `agssp` console script, run from the sources in /app (PYTHONPATH) rather than a wheel.
COPY --chmod=755 <<'EOF' /usr/local/bin/agssp
#!/bin/sh
exec python -m agssp.main "$@"
EOF
COPY pyproject.toml /opt/agssp-build/pyproject.toml
WORKDIR /app

# /models stays an empty mount point unless BAKE_WEIGHTS=true.
FROM base AS weights-false
FROM base AS weights-true
ARG WEIGHTS_SRC=var/agssp/models
COPY --chown=agssp:agssp ${WEIGHTS_SRC}/ /models/
FROM weights-${BAKE_WEIGHTS} AS weights

# ======== dependency layers (only change with pyproject.toml; no code copied yet) ========

# HTTP front ends that only submit jobs: no torch. `docs`: local Swagger UI / ReDoc builds.
# The console and the pipeline API use the same layer (they add no dependency of their own).
FROM base AS jobs-api-deps
RUN --mount=type=cache,target=/root/.cache/pip \
    sh /opt/agssp-build/install-deps.sh api,storage,jobs,docs

# anomaly_map worker: CLIP (open-clip-torch) on the torch build TORCH_VARIANT picks.
FROM base AS anomaly-map-worker-deps
ARG TORCH_VARIANT=cpu
ARG TORCH_INDEX=
RUN apt-get update \
 && apt-get install -y --no-install-recommends libglib2.0-0 \
 && rm -rf /var/lib/apt/lists/*
RUN --mount=type=cache,target=/root/.cache/pip \
    sh /opt/agssp-build/install-deps.sh storage,jobs,imaging,ml

# The anomaly_map API adds the HTTP extras on top of the worker's dependencies (same torch build).
FROM anomaly-map-worker-deps AS anomaly-map-api-deps
ARG TORCH_VARIANT=cpu
ARG TORCH_INDEX=
RUN --mount=type=cache,target=/root/.cache/pip \
    sh /opt/agssp-build/install-deps.sh api,storage,jobs,imaging,ml,docs

# pretrain (AGBP/AGDP) and finetune (YOLOv8) workers: torch + ultralytics.
FROM base AS yolo-worker-deps
ARG TORCH_VARIANT=cpu
ARG TORCH_INDEX=
# ultralytics pulls in opencv-python (not headless), which needs libGL at import.
RUN apt-get update \
 && apt-get install -y --no-install-recommends libgl1 libglib2.0-0 \
 && rm -rf /var/lib/apt/lists/*
RUN --mount=type=cache,target=/root/.cache/pip \
    sh /opt/agssp-build/install-deps.sh storage,jobs,imaging,ml,yolo

# inference: onnxruntime only, picked out of the `yolo` extra: ultralytics would drag in torch,
# and the service runs exported ONNX models. (.pt checkpoints need torch: not in this image.)
FROM base AS inference-api-deps
RUN apt-get update \
 && apt-get install -y --no-install-recommends libglib2.0-0 \
 && rm -rf /var/lib/apt/lists/*
RUN --mount=type=cache,target=/root/.cache/pip \
    sh /opt/agssp-build/install-deps.sh api,storage,jobs,imaging,docs yolo:onnxruntime

# ======== images (one target per role) ========

# ---- anomaly_map ----
FROM anomaly-map-api-deps AS anomaly-map-api
COPY --from=weights /models/ /models/
COPY agssp/ /app/agssp/
COPY shared/ /app/shared/
COPY services/__init__.py /app/services/__init__.py
COPY services/anomaly_map/ /app/services/anomaly_map/
USER agssp
EXPOSE 8000
# Generous start period: the lifespan loads the CLIP encoder before /healthz answers.
HEALTHCHECK --interval=30s --timeout=5s --start-period=300s --retries=3 \
    CMD ["python", "-c", "import urllib.request; urllib.request.urlopen('http://127.0.0.1:8000/healthz', timeout=4)"]
ENTRYPOINT ["agssp"]
CMD ["serve", "anomaly_map", "--host", "0.0.0.0", "--port", "8000"]

FROM anomaly-map-worker-deps AS maps-worker
COPY --from=weights /models/ /models/
COPY agssp/ /app/agssp/
COPY shared/ /app/shared/
COPY services/__init__.py /app/services/__init__.py
COPY services/anomaly_map/ /app/services/anomaly_map/
USER agssp
# A worker is no server: no HEALTHCHECK. Solo pool, one process per GPU (field-notes §C2).
ENTRYPOINT ["agssp"]
CMD ["worker", "maps", "default", "--pool", "solo"]

# ---- pretrain ----
FROM jobs-api-deps AS pretrain-api
COPY agssp/ /app/agssp/
COPY shared/ /app/shared/
COPY services/__init__.py /app/services/__init__.py
COPY services/pretrain/ /app/services/pretrain/
USER agssp
EXPOSE 8000
HEALTHCHECK --interval=30s --timeout=5s --start-period=60s --retries=3 \
    CMD ["python", "-c", "import urllib.request; urllib.request.urlopen('http://127.0.0.1:8000/healthz', timeout=4)"]
ENTRYPOINT ["agssp"]
CMD ["serve", "pretrain", "--host", "0.0.0.0", "--port", "8000"]

FROM yolo-worker-deps AS pretrain-worker
COPY --from=weights /models/ /models/
COPY agssp/ /app/agssp/
COPY shared/ /app/shared/
COPY services/__init__.py /app/services/__init__.py
COPY services/pretrain/ /app/services/pretrain/
USER agssp
# A worker is no server: no HEALTHCHECK. Solo pool, one process per GPU (field-notes §C2).
ENTRYPOINT ["agssp"]
CMD ["worker", "pretrain", "--pool", "solo"]

# ---- finetune ----
FROM jobs-api-deps AS finetune-api
# The gallery makes its thumbnails with OpenCV (the headless wheel; still no torch).
RUN --mount=type=cache,target=/root/.cache/pip \
    sh /opt/agssp-build/install-deps.sh api imaging:opencv-python-headless
COPY agssp/ /app/agssp/
COPY shared/ /app/shared/
COPY services/__init__.py /app/services/__init__.py
COPY services/finetune/ /app/services/finetune/
USER agssp
EXPOSE 8000
HEALTHCHECK --interval=30s --timeout=5s --start-period=60s --retries=3 \
    CMD ["python", "-c", "import urllib.request; urllib.request.urlopen('http://127.0.0.1:8000/healthz', timeout=4)"]
ENTRYPOINT ["agssp"]
CMD ["serve", "finetune", "--host", "0.0.0.0", "--port", "8000"]

FROM yolo-worker-deps AS finetune-worker
COPY --from=weights /models/ /models/
COPY agssp/ /app/agssp/
COPY shared/ /app/shared/
COPY services/__init__.py /app/services/__init__.py
COPY services/finetune/ /app/services/finetune/
USER agssp
# A worker is no server: no HEALTHCHECK. Solo pool, one process per GPU (field-notes §C2).
ENTRYPOINT ["agssp"]
CMD ["worker", "finetune", "--pool", "solo"]

# ---- inference ----
FROM inference-api-deps AS inference-api
COPY --from=weights /models/ /models/
COPY agssp/ /app/agssp/
COPY shared/ /app/shared/
COPY services/__init__.py /app/services/__init__.py
COPY services/inference/ /app/services/inference/
USER agssp
EXPOSE 8000
HEALTHCHECK --interval=30s --timeout=5s --start-period=120s --retries=3 \
    CMD ["python", "-c", "import urllib.request; urllib.request.urlopen('http://127.0.0.1:8000/healthz', timeout=4)"]
ENTRYPOINT ["agssp"]
CMD ["serve", "inference", "--host", "0.0.0.0", "--port", "8000"]

# ---- console ----
# Pages and static assets of its own, API calls forwarded to the four APIs (CONSOLE_*_URL);
# it reads no store and runs no jobs.
FROM jobs-api-deps AS console
COPY agssp/ /app/agssp/
COPY shared/ /app/shared/
COPY services/__init__.py /app/services/__init__.py
COPY services/console/ /app/services/console/
USER agssp
EXPOSE 8000
HEALTHCHECK --interval=30s --timeout=5s --start-period=30s --retries=3 \
    CMD ["python", "-c", "import urllib.request; urllib.request.urlopen('http://127.0.0.1:8000/healthz', timeout=4)"]
ENTRYPOINT ["agssp"]
CMD ["serve", "console", "--host", "0.0.0.0", "--port", "8000"]

# ---- pipeline ----
# Drives maps -> boxes -> AGBP -> AGDP -> finetune through the four APIs (PIPELINE_*_URL);
# its records live in the store, its steps run on the other services' workers.
FROM jobs-api-deps AS pipeline-api
COPY agssp/ /app/agssp/
COPY shared/ /app/shared/
COPY services/__init__.py /app/services/__init__.py
COPY services/pipeline/ /app/services/pipeline/
USER agssp
EXPOSE 8000
HEALTHCHECK --interval=30s --timeout=5s --start-period=30s --retries=3 \
    CMD ["python", "-c", "import urllib.request; urllib.request.urlopen('http://127.0.0.1:8000/healthz', timeout=4)"]
ENTRYPOINT ["agssp"]
CMD ["serve", "pipeline", "--host", "0.0.0.0", "--port", "8000"]
