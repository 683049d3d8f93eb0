"""Load generators for the serving benchmark: Debian's ``wrk`` in its own process, or the
Python threads of ``benchmarks.loadgen`` as a fallback.

``wrk`` is C with one event-loop thread, so at 64 connections it costs a small fraction of a
core; the Python clients share the server's cores (and its GIL-free time) with their own
HTTP work. Both report the same :class:`LoadResult`, with the generator's own CPU time, so a
result says how much of the machine the load itself took.

wrk has no request-count bound of its own: the Lua script below counts responses and prints
a marker line at the limit; this module then sends wrk SIGINT, which ends its timed sleep, so
wrk's elapsed time and its latency percentiles cover exactly the requests it counted.
"""

from __future__ import annotations

import json
import math
import os
import resource
import shutil
import signal
import subprocess
import tempfile
import threading
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

GENERATORS = ("auto", "wrk", "python")
QUANTILE_STEPS = 1000  # wrk prints its latency quantiles every 0.1 %
_LIMIT_MARK = "AGSSP_LIMIT"
_RESULT_MARK = "AGSSP_WRK "

# init() reads the body from a file (wrk's own -s script has no other way to get binary
# data in); response() counts; done() prints wrk's own quantiles as one JSON line.
WRK_SCRIPT = r"""
local limit, seen = 0, 0
function init(args)
  local f = assert(io.open(args[1], "rb"))
  wrk.body = f:read("*a")
  f:close()
  wrk.method = "POST"
  wrk.headers["Content-Type"] = args[2]
  limit = tonumber(args[3]) or 0
end
function response(status, headers, body)
  seen = seen + 1
  if limit > 0 and seen == limit then
    io.write("AGSSP_LIMIT\n")
    io.flush()
    wrk.thread:stop()
  end
end
function done(summary, latency, requests)
  local q = {}
  for i = 1, @STEPS@ - 1 do q[i] = latency:percentile(i * 100 / @STEPS@) end
  q[@STEPS@] = latency.max  -- percentile(100) reads past the last bucket and gives 0
  local e = summary.errors
  io.write(string.format('AGSSP_WRK {"requests": %d, "duration_us": %d, "errors": '
    .. '{"connect": %d, "read": %d, "write": %d, "status": %d, "timeout": %d}, '
    .. '"quantiles_us": [%s]}\n', summary.requests, summary.duration, e.connect, e.read,
    e.write, e.status, e.timeout, table.concat(q, ",")))
  io.flush()
end
""".replace("@STEPS@", str(QUANTILE_STEPS))


@dataclass(frozen=True)
class LoadResult:
    """One bounded load run. ``quantiles_ms[i]`` is the ``(i + 1) / 10`` th percentile."""

    generator: str
    concurrency: int
    requests: int
    ok: int
    elapsed_s: float
    errors: dict[str, int]
    loadgen_cpu_s: float
    quantiles_ms: list[float] = field(repr=False)

    @property
    def throughput_rps(self) -> float:
        """Successful requests per second."""
        return self.ok / max(self.elapsed_s, 1e-9)


def wrk_path() -> str | None:
    """The ``wrk`` executable on PATH, or None."""
    return shutil.which("wrk")


def resolve_generator(wanted: str) -> str:
    """``auto`` -> ``wrk`` when installed, else ``python``; ``wrk`` must be installed."""
    if wanted not in GENERATORS:
        raise ValueError(f"unknown load generator {wanted!r}; one of {GENERATORS}")
    if wanted == "python":
        return "python"
    if wrk_path() is None:
        if wanted == "wrk":
            raise RuntimeError("wrk is not installed (scripts/setup.sh installs it)")
        return "python"
    return "wrk"


def quantiles_from_samples(sorted_ms: Sequence[float]) -> list[float]:
    """Nearest-rank quantiles at every 0.1 % of sorted samples (empty -> empty)."""
    if not sorted_ms:
        return []
    n = len(sorted_ms)
    return [
        sorted_ms[min(n, max(1, math.ceil(i * n / QUANTILE_STEPS))) - 1]
        for i in range(1, QUANTILE_STEPS + 1)
    ]


def pooled_latency(results: Sequence[LoadResult]) -> dict[str, float]:
    """p50/p90/p99 and mean (ms) over several runs, each run weighted by its requests.

    Each run is represented by its 1,000 quantiles, each standing for ``requests / 1000``
    requests; for one run this gives back the run's own percentiles.
    """
    weighted = sorted(
        (q, r.requests / QUANTILE_STEPS) for r in results if r.quantiles_ms for q in r.quantiles_ms
    )
    total = sum(w for _, w in weighted)
    if not weighted:
        return {"p50": math.nan, "p90": math.nan, "p99": math.nan, "mean": math.nan}
    out: dict[str, float] = {}
    for q in (50, 90, 99):
        target, seen = q / 100.0 * total, 0.0
        out[f"p{q}"] = weighted[-1][0]
        for value, weight in weighted:
            seen += weight
            if seen >= target - 1e-9:
                out[f"p{q}"] = value
                break
    out["mean"] = sum(v * w for v, w in weighted) / total
    return {k: round(v, 2) for k, v in out.items()}


def run_load(
    generator: str,
    url: str,
    body: bytes,
    content_type: str,
    *,
    concurrency: int,
    max_requests: int,
    duration_s: float,
    timeout_s: float = 120.0,
) -> LoadResult:
    """POST ``body`` to ``url`` with ``concurrency`` connections until a bound is reached."""
    if concurrency < 1 or max_requests < 1 or duration_s <= 0:
        raise ValueError("concurrency, requests and duration must be positive")
    if generator == "wrk":
        return _run_wrk(url, body, content_type, concurrency, max_requests, duration_s, timeout_s)
    if generator == "python":
        return _run_python(url, body, content_type, concurrency, max_requests, duration_s)
    raise ValueError(f"unknown load generator {generator!r}")


def wrk_command(
    script: Path, body: Path, url: str, content_type: str, concurrency: int, limit: int, cap_s: int
) -> list[str]:
    """One event-loop thread, ``concurrency`` keep-alive connections, bounded by ``cap_s``."""
    return [
        wrk_path() or "wrk",
        "-t1",
        f"-c{concurrency}",
        f"-d{cap_s}s",
        "--timeout",
        "120s",
        "-s",
        str(script),
        url,
        "--",
        str(body),
        content_type,
        str(limit),
    ]


def _run_wrk(
    url: str,
    body: bytes,
    content_type: str,
    concurrency: int,
    max_requests: int,
    duration_s: float,
    timeout_s: float,
) -> LoadResult:
    with tempfile.TemporaryDirectory(prefix="wrk-") as tmp:
        script, body_file = Path(tmp) / "post.lua", Path(tmp) / "body"
        script.write_text(WRK_SCRIPT)
        body_file.write_bytes(body)
        argv = wrk_command(
            script, body_file, url, content_type, concurrency, max_requests, math.ceil(duration_s)
        )
        lines, cpu_s = _drive_wrk(argv, duration_s + timeout_s)
    return parse_wrk_output(lines, concurrency, cpu_s)


def _drive_wrk(argv: list[str], kill_after_s: float) -> tuple[list[str], float]:
    """Run wrk, SIGINT it at the Lua limit marker; its output lines and its CPU seconds."""
    proc = subprocess.Popen(argv, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    assert proc.stdout is not None
    watchdog = threading.Timer(kill_after_s, proc.kill)  # a wrk that hangs past every bound
    watchdog.start()
    lines = []
    try:
        for line in proc.stdout:
            lines.append(line.rstrip("\n"))
            if line.startswith(_LIMIT_MARK):
                proc.send_signal(signal.SIGINT)  # ends wrk's sleep: it reports what it counted
        _, status, usage = os.wait4(proc.pid, 0)
    finally:
        watchdog.cancel()
    proc.returncode = os.waitstatus_to_exitcode(status)
    if proc.returncode != 0:
        raise RuntimeError(f"wrk exited with {proc.returncode}: {' '.join(lines[-5:])}")
    return lines, usage.ru_utime + usage.ru_stime


def parse_wrk_output(lines: Sequence[str], concurrency: int, cpu_s: float) -> LoadResult:
    """The result line printed by the Lua ``done()`` hook, as a :class:`LoadResult`."""
    found = [line[len(_RESULT_MARK) :] for line in lines if line.startswith(_RESULT_MARK)]
    if not found:
        raise RuntimeError("wrk printed no result line: " + " | ".join(lines[-5:]))
    data: dict[str, Any] = json.loads(found[-1])
    errors = {k: int(v) for k, v in data["errors"].items() if v}
    requests = int(data["requests"])
    return LoadResult(
        generator="wrk",
        concurrency=concurrency,
        requests=requests,
        ok=requests - errors.get("status", 0),
        elapsed_s=round(int(data["duration_us"]) / 1e6, 3),
        errors=errors,
        loadgen_cpu_s=round(cpu_s, 3),
        quantiles_ms=[round(float(v) / 1000.0, 3) for v in data["quantiles_us"]],
    )


def _run_python(
    url: str,
    body: bytes,
    content_type: str,
    concurrency: int,
    max_requests: int,
    duration_s: float,
) -> LoadResult:
    from benchmarks.loadgen import run_load as threads_load

    before = resource.getrusage(resource.RUSAGE_SELF)
    report = threads_load(
        url,
        body,
        content_type,
        concurrency=concurrency,
        max_requests=max_requests,
        duration_s=duration_s,
    )
    after = resource.getrusage(resource.RUSAGE_SELF)
    cpu = after.ru_utime + after.ru_stime - before.ru_utime - before.ru_stime
    return LoadResult(
        generator="python",
        concurrency=concurrency,
        requests=report.requests,
        ok=report.ok,
        elapsed_s=report.elapsed_s,
        errors=dict(report.errors),
        loadgen_cpu_s=round(cpu, 3),
        quantiles_ms=quantiles_from_samples(report.samples_ms),
    )


def summary(results: Sequence[LoadResult]) -> dict[str, Any]:
    """Rounds of one row pooled: throughput, latency, errors and the generator's CPU."""
    elapsed = sum(r.elapsed_s for r in results)
    ok = sum(r.ok for r in results)
    errors: dict[str, int] = {}
    for r in results:
        for key, count in r.errors.items():
            errors[key] = errors.get(key, 0) + count
    cpu = sum(r.loadgen_cpu_s for r in results)
    return {
        "generator": results[0].generator,
        "concurrency": results[0].concurrency,
        "requests": sum(r.requests for r in results),
        "ok": ok,
        "elapsed_s": round(elapsed, 3),
        "throughput_rps": round(ok / max(elapsed, 1e-9), 3),
        "latency_ms": pooled_latency(results),
        "errors": errors,
        "rounds_rps": [round(r.throughput_rps, 3) for r in results],
        "loadgen_cpu": {"cpu_s": round(cpu, 3), "cores_busy": round(cpu / max(elapsed, 1e-9), 3)},
    }
