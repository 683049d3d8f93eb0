"""The two sides of a serving comparison: the real inference service in its own process, and
the bare runtime it wraps, timed on a ready tensor in the benchmark process.

Importing this module is cheap; the runtimes load inside the classes.
"""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import httpx
import numpy as np

from benchmarks.native_load import process_cpu_s

ROOT = Path(__file__).resolve().parents[1]
IMGSZ = 640


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


class Server:
    """``agssp serve inference`` on a loopback port, serving one local ONNX file.

    ``root`` runs the server from another checkout of the suite (a ``git worktree`` of an
    older commit: before/after rows in one interleaved run); its packages come first on the
    server's ``PYTHONPATH``, ahead of the editable install.
    """

    def __init__(
        self,
        onnx: Path,
        home: Path,
        *,
        max_batch: int,
        delay_ms: float,
        device: str = "cpu",
        root: Path = ROOT,
        **extra: str,
    ) -> None:
        self.port = _free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        env = {k: v for k, v in os.environ.items() if not k.startswith(("S3_", "REDIS_", "AUTH_"))}
        env.update(
            AGSSP_HOME=str(home),
            STORAGE_BACKEND="file",
            LOG_LEVEL="WARNING",
            INFERENCE_LOCAL_MODEL_PATH=str(onnx),
            INFERENCE_MAX_BATCH_SIZE=str(max_batch),
            INFERENCE_MAX_QUEUE_DELAY_MS=str(delay_ms),
            INFERENCE_MAX_QUEUE="512",
            INFERENCE_DEVICE=device,
            **{f"INFERENCE_{k.upper()}": v for k, v in extra.items()},
        )
        if root != ROOT:
            env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(root), env.get("PYTHONPATH")]))
        argv = [sys.executable, "-m", "agssp.main", "serve", "inference"]
        self.log = (home / f"serve-{self.port}.log").open("wb")
        self.proc = subprocess.Popen(
            [*argv, "--port", str(self.port)],
            env=env,
            cwd=root,
            stdout=self.log,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )

    def wait_ready(self, timeout_s: float = 180.0) -> None:
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"the server exited; see {self.log.name}")
            try:
                if httpx.get(f"{self.url}/readyz", timeout=5).status_code == 200:
                    return
            except httpx.HTTPError:
                pass
            time.sleep(0.5)
        raise RuntimeError(f"the server was not ready after {timeout_s} s; see {self.log.name}")

    def resident(self) -> dict[str, Any]:
        (model,) = httpx.get(f"{self.url}/v1/models", timeout=30).json()["resident"]
        return dict(model)

    def batch_sizes(self) -> dict[int, int]:
        return {int(k): int(v) for k, v in self.resident()["batch_sizes"].items()}

    def cpu_seconds(self) -> float:
        """User + system CPU of the server process (all its threads) so far."""
        return process_cpu_s(self.proc.pid) or 0.0

    def drain(self, timeout_s: float = 120.0) -> None:
        """Wait until nothing is queued or running: a load generator stopped at its bound
        leaves requests behind, and they must not run during the next row."""
        deadline, idle = time.monotonic() + timeout_s, 0
        while time.monotonic() < deadline and idle < 2:
            model = self.resident()
            idle = idle + 1 if model["queue_depth"] == 0 and model["in_flight"] == 0 else 0
            time.sleep(0.2)

    def stop(self) -> None:
        if self.proc.poll() is None:
            os.killpg(self.proc.pid, signal.SIGTERM)
            try:
                self.proc.wait(timeout=30)
            except subprocess.TimeoutExpired:
                os.killpg(self.proc.pid, signal.SIGKILL)
                self.proc.wait(timeout=30)
        self.log.close()


def batch_diff(after: dict[int, int], before: dict[int, int]) -> dict[int, int]:
    """Batch-size counts formed between two readings of ``Server.batch_sizes``."""
    return {k: v - before.get(k, 0) for k, v in sorted(after.items()) if v - before.get(k, 0)}


def mean_batch(sizes: dict[int, int]) -> float:
    """Images per batch call (0 when no batch ran)."""
    calls = sum(sizes.values())
    return sum(k * v for k, v in sizes.items()) / calls if calls else 0.0


class BareSession:
    """A runtime timed on a ready (B, 3, 640, 640) tensor: no HTTP, decode, letterbox or NMS.

    ONNX Runtime with the service's session options (full graph optimisation, default
    intra-op threads, CPU, its default spinning), or the service's own OpenVINO session.
    """

    def __init__(self, onnx: Path, runtime: str) -> None:
        if runtime == "openvino":
            from services.inference.ml.openvino_session import OpenVinoSession

            self._session: Any = OpenVinoSession(onnx, hint="throughput")
        else:
            import onnxruntime as ort

            options = ort.SessionOptions()
            options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
            options.log_severity_level = 3
            self._session = ort.InferenceSession(
                str(onnx), options, providers=["CPUExecutionProvider"]
            )
        self._input = self._session.get_inputs()[0].name
        self._rng = np.random.default_rng(0)

    def run_ms(self, batch: int, images: int, cap_s: float = 600.0) -> list[float]:
        """Milliseconds of ``max(1, images // batch)`` runs at ``batch`` (one warm-up run
        first), fewer when ``cap_s`` runs out (at least one)."""
        feed = {self._input: self._rng.random((batch, 3, IMGSZ, IMGSZ), dtype=np.float32)}
        self._session.run(None, feed)
        samples: list[float] = []
        deadline = time.monotonic() + cap_s
        for _ in range(max(1, images // batch)):
            if samples and time.monotonic() > deadline:
                break
            start = time.perf_counter()
            self._session.run(None, feed)
            samples.append((time.perf_counter() - start) * 1000.0)
        return samples
