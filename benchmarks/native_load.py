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
# Percentiles each run reports (100 = the maximum). wrk computes one by walking its
# microsecond histogram up to it, so a fine grid costs seconds of CPU at second-long
# latencies; 1 % steps plus the tail pool rounds well enough and cost little.
QUANTILE_GRID: tuple[float, ...] = (*range(1, 100), 99.5, 99.9, 100)
_LIMIT_MARK = "AGSSP_LIMIT"
_DONE_MARK = "AGSSP_DONE"
_RESULT_MARK = "AGSSP_WRK "

# init() reads the body from a file (wrk's own -s script has no other way to get binary
# data in); response() counts; done() marks its start (the timed window is over: the CPU
# wrk used in it is read then), then prints wrk's own percentiles as one JSON line.
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
  io.write("AGSSP_DONE\n")
  io.flush()
  local grid, q = {@GRID@}, {}
  for i, p in ipairs(grid) do
    -- percentile(100) reads past the last bucket and gives 0
    if p >= 100 then q[i] = latency.max else q[i] = latency:percentile(p) end
  end
  local e = summary.errors
  io.write(string.format('AGSSP_WRK {"requests": %d, "duration_us": %d, "mean_us": %.1f, '
    .. '"errors": {"connect": %d, "read": %d, "write": %d, "status": %d, "timeout": %d}, '
    .. '"quantiles_us": [%s]}\n', summary.requests, summary.duration, latency.mean,
    e.connect, e.read, e.write, e.status, e.timeout, table.concat(q, ",")))
  io.flush()
end
""".replace("@GRID@", ", ".join(str(p) for p in QUANTILE_GRID))


@dataclass(frozen=True)
class LoadResult:
    """One bounded load run. ``quantiles_ms[i]`` is the ``QUANTILE_GRID[i]`` th percentile."""

    generator: str
    concurrency: int
    requests: int
    ok: int
    elapsed_s: float
    errors: dict[str, int]
    loadgen_cpu_s: float
    mean_ms: float
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
    """Nearest-rank percentiles of sorted samples at ``QUANTILE_GRID`` (empty -> empty)."""
    if not sorted_ms:
        return []
    n = len(sorted_ms)
    return [sorted_ms[min(n, max(1, math.ceil(p / 100.0 * n))) - 1] for p in QUANTILE_GRID]


def _mixture_cdf(value: float, results: Sequence[LoadResult], total: int) -> float:
    """Share of all requests at or under ``value``, each run's CDF read off its grid."""
    share = 0.0
    for r in results:
        below = [p for p, q in zip(QUANTILE_GRID, r.quantiles_ms, strict=True) if q <= value]
        share += r.requests / total * (max(below) / 100.0 if below else 0.0)
    return share


def pooled_latency(results: Sequence[LoadResult]) -> dict[str, float]:
    """p50/p90/p99 and mean (ms) over several runs, each weighted by its requests.

    The pooled percentile is the smallest grid value at which the request-weighted mix of
    the runs' distributions reaches it; for one run these are the run's own percentiles.
    """
    runs = [r for r in results if r.quantiles_ms and r.requests]
    total = sum(r.requests for r in runs)
    if not runs:
        return {"p50": math.nan, "p90": math.nan, "p99": math.nan, "mean": math.nan}
    values = sorted({q for r in runs for q in r.quantiles_ms})
    out: dict[str, float] = {}
    for q in (50, 90, 99):
        out[f"p{q}"] = next(
            (v for v in values if _mixture_cdf(v, runs, total) >= q / 100.0 - 1e-9), values[-1]
        )
    out["mean"] = sum(r.requests / total * r.mean_ms for r in runs)
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
        "60s",  # wrk sizes its latency histogram by it: one slot per microsecond
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
    """Run wrk, SIGINT it at the Lua limit marker; its output lines and the CPU seconds it
    used up to the end of the timed window (read at the done() marker)."""
    proc = subprocess.Popen(argv, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    assert proc.stdout is not None
    watchdog = threading.Timer(kill_after_s, proc.kill)  # a wrk that hangs past every bound
    watchdog.start()
    lines, window_cpu = [], None
    try:
        for line in proc.stdout:
            lines.append(line.rstrip("\n"))
            if line.startswith(_LIMIT_MARK):
                proc.send_signal(signal.SIGINT)  # ends wrk's sleep: it reports what it counted
            elif line.startswith(_DONE_MARK):
                window_cpu = process_cpu_s(proc.pid)
        _, status, usage = os.wait4(proc.pid, 0)
    finally:
        watchdog.cancel()
    proc.returncode = os.waitstatus_to_exitcode(status)
    if proc.returncode != 0:
        raise RuntimeError(f"wrk exited with {proc.returncode}: {' '.join(lines[-5:])}")
    return lines, usage.ru_utime + usage.ru_stime if window_cpu is None else window_cpu


def process_cpu_s(pid: int) -> float | None:
    """User + system CPU of a live process from /proc (None where it cannot be read)."""
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except OSError:
        return None
    # After the command name: state is field 3 of stat(5), utime 14 and stime 15.
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


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
        mean_ms=round(float(data["mean_us"]) / 1000.0, 3),
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
        mean_ms=report.latency_ms["mean"],
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
