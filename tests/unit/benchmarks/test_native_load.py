"""The serving benchmark's load generators: wrk driven through its Lua script, the Python
fallback, and the pooling of latency quantiles over interleaved rounds."""

from __future__ import annotations

import http.server
import threading
import time
from collections.abc import Iterator
from typing import ClassVar

import pytest

from benchmarks import native_load
from benchmarks.native_load import LoadResult, pooled_latency, quantiles_from_samples

pytestmark = pytest.mark.unit


class _Recorder(http.server.BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    bodies: ClassVar[list[tuple[str, bytes]]] = []

    def do_POST(self) -> None:
        body = self.rfile.read(int(self.headers["content-length"]))
        _Recorder.bodies.append((self.headers["content-type"], body))
        time.sleep(0.005)
        answer = b'{"ok": true}'
        self.send_response(200 if self.path == "/detect" else 404)
        self.send_header("content-length", str(len(answer)))
        self.end_headers()
        self.wfile.write(answer)

    def log_message(self, *args: object) -> None:
        pass


@pytest.fixture
def server() -> Iterator[str]:
    http.server.ThreadingHTTPServer.daemon_threads = True
    httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), _Recorder)
    thread = threading.Thread(target=httpd.serve_forever, daemon=True)
    thread.start()
    _Recorder.bodies = []
    yield f"http://127.0.0.1:{httpd.server_address[1]}"
    httpd.shutdown()
    httpd.server_close()


def _result(samples: list[float], requests: int | None = None) -> LoadResult:
    return LoadResult(
        generator="python",
        concurrency=1,
        requests=len(samples) if requests is None else requests,
        ok=len(samples),
        elapsed_s=1.0,
        errors={},
        loadgen_cpu_s=0.0,
        mean_ms=sum(samples) / len(samples),
        quantiles_ms=quantiles_from_samples(sorted(samples)),
    )


def test_one_run_keeps_its_own_nearest_rank_percentiles() -> None:
    samples = [float(v) for v in range(1, 101)]
    assert pooled_latency([_result(samples)]) == {
        "p50": 50.0,
        "p90": 90.0,
        "p99": 99.0,
        "mean": 50.5,
    }


def test_runs_are_weighted_by_their_request_counts() -> None:
    fast = _result([10.0] * 90)
    slow = _result([1000.0] * 10)
    pooled = pooled_latency([fast, slow])
    assert (pooled["p50"], pooled["p90"], pooled["p99"]) == (10.0, 10.0, 1000.0)
    assert pooled["mean"] == pytest.approx(109.0)


def test_pooled_percentiles_are_those_of_all_requests_together() -> None:
    low = _result([float(v) for v in range(1, 101)])
    high = _result([float(v) for v in range(101, 201)])
    pooled = pooled_latency([low, high])
    assert (pooled["p50"], pooled["p90"], pooled["p99"]) == (100.0, 180.0, 198.0)
    assert pooled["mean"] == pytest.approx(100.5)


def test_the_wrk_result_line_is_parsed_into_milliseconds() -> None:
    line = (
        'AGSSP_WRK {"requests": 12, "duration_us": 2500000, "errors": {"connect": 0, '
        '"read": 0, "write": 0, "status": 2, "timeout": 1}, "mean_us": 2000.0, '
        '"quantiles_us": [1500, 2500]}'
    )
    result = native_load.parse_wrk_output(["Running 1s test", line], 4, 0.25)
    assert (result.requests, result.ok, result.elapsed_s) == (12, 10, 2.5)
    assert result.errors == {"status": 2, "timeout": 1}
    assert result.quantiles_ms == [1.5, 2.5]
    assert result.mean_ms == 2.0
    assert result.throughput_rps == pytest.approx(4.0)
    with pytest.raises(RuntimeError, match="no result line"):
        native_load.parse_wrk_output(["wrk: connection refused"], 4, 0.0)


def test_auto_falls_back_to_python_without_wrk(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(native_load, "wrk_path", lambda: None)
    assert native_load.resolve_generator("auto") == "python"
    with pytest.raises(RuntimeError, match="not installed"):
        native_load.resolve_generator("wrk")
    monkeypatch.setattr(native_load, "wrk_path", lambda: "/usr/bin/wrk")
    assert native_load.resolve_generator("auto") == "wrk"


@pytest.mark.parametrize("generator", ["wrk", "python"])
def test_a_run_stops_at_its_request_bound_and_posts_the_body(server: str, generator: str) -> None:
    if generator == "wrk" and native_load.wrk_path() is None:
        pytest.skip("wrk is not installed (scripts/setup.sh installs it)")
    body = bytes(range(256)) * 40
    started = time.monotonic()
    result = native_load.run_load(
        generator,
        f"{server}/detect",
        body,
        "image/jpeg",
        concurrency=4,
        max_requests=30,
        duration_s=20.0,
    )
    assert time.monotonic() - started < 10.0  # the request bound ended it, not the 20 s cap
    assert (result.generator, result.errors) == (generator, {})
    assert 30 <= result.ok <= 34  # wrk counts what completed while it was being stopped
    assert len(result.quantiles_ms) == len(native_load.QUANTILE_GRID)
    median = result.quantiles_ms[native_load.QUANTILE_GRID.index(50)]
    assert 5.0 <= median <= result.quantiles_ms[-1]  # the handler sleeps 5 ms
    assert 5.0 <= result.mean_ms <= result.quantiles_ms[-1]
    assert set(_Recorder.bodies) == {("image/jpeg", body)}


def test_non_200_answers_count_as_errors(server: str) -> None:
    result = native_load.run_load(
        "python",
        f"{server}/nowhere",
        b"x",
        "image/png",
        concurrency=2,
        max_requests=6,
        duration_s=5,
    )
    assert (result.ok, result.errors) == (0, {"404": 6})
    assert native_load.summary([result])["throughput_rps"] == 0.0
