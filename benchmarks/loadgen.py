"""``python -m benchmarks.loadgen detect``: concurrent clients against a detection URL.

The run is bounded in count and time; it is a benchmark helper, so it lives beside the benchmarks
that import it rather than in the installed ``agssp`` command line.

Each client thread keeps one request in flight; the run stops after ``--requests`` requests or
``--duration-s`` seconds, whichever comes first. httpx and Pillow load inside the command.
"""

from __future__ import annotations

import io
import json
import math
import threading
import time
from collections import Counter
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Annotated, Any
from urllib.parse import urlsplit, urlunsplit

import numpy as np
import typer

bench_app = typer.Typer(help="Load generators for the suite's HTTP APIs.", no_args_is_help=True)

DEFAULT_DETECT_PATH = "/v1/detect"
_CONTENT_TYPES = {".jpg": "image/jpeg", ".jpeg": "image/jpeg", ".png": "image/png"}


@dataclass(frozen=True)
class LoadReport:
    """What a load run measured. Latencies are of successful requests, in milliseconds."""

    url: str
    concurrency: int
    requests: int
    ok: int
    elapsed_s: float
    throughput_rps: float
    latency_ms: dict[str, float]
    errors: dict[str, int] = field(default_factory=dict)
    samples_ms: list[float] = field(default_factory=list, repr=False)  # sorted, successes

    def to_dict(self) -> dict[str, Any]:
        """The report without the raw samples."""
        out = asdict(self)
        del out["samples_ms"]
        return out


def combine(reports: Sequence[LoadReport]) -> LoadReport:
    """One report over several runs against the same URL (e.g. interleaved rounds)."""
    if not reports:
        raise ValueError("nothing to combine")
    samples = sorted(s for r in reports for s in r.samples_ms)
    errors: Counter[str] = Counter()
    for r in reports:
        errors.update(r.errors)
    elapsed = sum(r.elapsed_s for r in reports)
    return LoadReport(
        url=reports[0].url,
        concurrency=reports[0].concurrency,
        requests=sum(r.requests for r in reports),
        ok=len(samples),
        elapsed_s=round(elapsed, 3),
        throughput_rps=round(len(samples) / max(elapsed, 1e-9), 3),
        latency_ms=_summary(samples),
        errors=dict(errors),
        samples_ms=samples,
    )


def _summary(sorted_ms: list[float]) -> dict[str, float]:
    summary = {f"p{q}": round(percentile(sorted_ms, q), 2) for q in (50, 90, 99)}
    summary["mean"] = round(sum(sorted_ms) / len(sorted_ms), 2) if sorted_ms else math.nan
    return summary


def percentile(sorted_values: list[float], q: float) -> float:
    """Nearest-rank percentile (``q`` in 0-100) of already sorted values; NaN when empty."""
    if not sorted_values:
        return math.nan
    rank = max(1, math.ceil(q / 100.0 * len(sorted_values)))
    return sorted_values[min(rank, len(sorted_values)) - 1]


class _Tally:
    """Claims request slots and records results for every client thread."""

    def __init__(self, max_requests: int, deadline: float) -> None:
        self._lock = threading.Lock()
        self._left = max_requests
        self._deadline = deadline
        self.latencies: list[float] = []
        self.errors: Counter[str] = Counter()
        self.last_done = time.perf_counter()

    def claim(self) -> bool:
        with self._lock:
            if self._left <= 0 or time.perf_counter() >= self._deadline:
                return False
            self._left -= 1
            return True

    def record(self, seconds: float, error: str | None) -> None:
        with self._lock:
            if error is None:
                self.latencies.append(seconds)
            else:
                self.errors[error] += 1
            self.last_done = time.perf_counter()


def run_load(
    url: str,
    body: bytes,
    content_type: str,
    *,
    concurrency: int = 16,
    max_requests: int = 200,
    duration_s: float = 60.0,
    headers: dict[str, str] | None = None,
    timeout_s: float = 60.0,
) -> LoadReport:
    """POST ``body`` to ``url`` from ``concurrency`` threads until a bound is reached."""
    import httpx

    if concurrency < 1 or max_requests < 1 or duration_s <= 0:
        raise ValueError("concurrency, requests and duration must be positive")
    started = time.perf_counter()
    tally = _Tally(max_requests, started + duration_s)
    sent_headers = {"content-type": content_type, **(headers or {})}

    def client() -> None:
        with httpx.Client(timeout=timeout_s) as http:
            while tally.claim():
                begin = time.perf_counter()
                try:
                    response = http.post(url, content=body, headers=sent_headers)
                    error = None if response.status_code == 200 else str(response.status_code)
                except httpx.HTTPError as exc:
                    error = type(exc).__name__
                tally.record(time.perf_counter() - begin, error)

    threads = [threading.Thread(target=client, daemon=True) for _ in range(concurrency)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    elapsed = max(tally.last_done - started, 1e-9)
    latencies = sorted(s * 1000.0 for s in tally.latencies)
    return LoadReport(
        url=url,
        concurrency=concurrency,
        requests=len(latencies) + sum(tally.errors.values()),
        ok=len(latencies),
        elapsed_s=round(elapsed, 3),
        throughput_rps=round(len(latencies) / elapsed, 3),
        latency_ms=_summary(latencies),
        errors=dict(tally.errors),
        samples_ms=latencies,
    )


def synthetic_image(width: int, height: int, *, seed: int = 0) -> bytes:
    """A JPEG of random 16-pixel colour blocks (edges and flat areas, like a real scene)."""
    from PIL import Image

    rng = np.random.default_rng(seed)
    blocks = rng.integers(0, 256, (max(height // 16, 1), max(width // 16, 1), 3), dtype=np.uint8)
    image = Image.fromarray(blocks).resize((width, height), Image.Resampling.NEAREST)
    out = io.BytesIO()
    image.save(out, format="JPEG", quality=90)
    return out.getvalue()


def parse_size(text: str) -> tuple[int, int]:
    """``"640x480"`` -> (640, 480)."""
    try:
        width, height = (int(part) for part in text.lower().split("x"))
    except ValueError as exc:
        raise typer.BadParameter(f"expected WIDTHxHEIGHT such as 640x480, got {text!r}") from exc
    if not (0 < width <= 16384 and 0 < height <= 16384):
        raise typer.BadParameter(f"size {text!r} out of range (1-16384 per side)")
    return width, height


def detect_url(url: str) -> str:
    """The URL as given, or with ``/v1/detect`` appended when it names only a server."""
    parts = urlsplit(url)
    if parts.scheme not in ("http", "https") or not parts.netloc:
        raise typer.BadParameter(f"expected an http(s) URL, got {url!r}")
    if parts.path in ("", "/"):
        parts = parts._replace(path=DEFAULT_DETECT_PATH)
    return urlunsplit(parts)


def _payload(image: Path | None, synthetic: str | None) -> tuple[bytes, str]:
    if (image is None) == (synthetic is None):
        raise typer.BadParameter("give exactly one of --image PATH or --synthetic WxH")
    if image is not None:
        content_type = _CONTENT_TYPES.get(image.suffix.lower(), "application/octet-stream")
        return image.read_bytes(), content_type
    assert synthetic is not None
    return synthetic_image(*parse_size(synthetic)), "image/jpeg"


@bench_app.callback()
def bench() -> None:
    """Measure a running service from the outside (nothing here starts a server)."""


@bench_app.command("detect")
def detect(
    url: Annotated[str, typer.Option(help="Server or detect URL, e.g. http://127.0.0.1:8004")],
    concurrency: Annotated[int, typer.Option(min=1, max=1024)] = 16,
    requests: Annotated[int, typer.Option(min=1, help="Stop after this many requests.")] = 200,
    duration_s: Annotated[float, typer.Option(min=0.1, help="...or after this long.")] = 60.0,
    image: Annotated[Path | None, typer.Option(exists=True, dir_okay=False)] = None,
    synthetic: Annotated[str | None, typer.Option(help="A generated JPEG, WxH.")] = None,
    api_key: Annotated[str, typer.Option(envvar="AGSSP_API_KEY", help="Bearer key.")] = "",
    as_json: Annotated[bool, typer.Option("--json", help="Print the report as JSON.")] = False,
) -> None:
    """Throughput and p50/p90/p99 latency of concurrent clients POSTing one image."""
    body, content_type = _payload(image, synthetic)
    headers = {"authorization": f"Bearer {api_key}"} if api_key else {}
    report = run_load(
        detect_url(url),
        body,
        content_type,
        concurrency=concurrency,
        max_requests=requests,
        duration_s=duration_s,
        headers=headers,
    )
    if as_json:
        typer.echo(json.dumps(report.to_dict(), indent=2))
        return
    lat = report.latency_ms
    typer.echo(f"url          {report.url}")
    typer.echo(f"requests     {report.requests} ({report.ok} ok) in {report.elapsed_s:.2f} s")
    typer.echo(f"throughput   {report.throughput_rps:.2f} req/s with {concurrency} clients")
    typer.echo(
        f"latency ms   p50 {lat['p50']:.1f}  p90 {lat['p90']:.1f}  p99 {lat['p99']:.1f}  "
        f"mean {lat['mean']:.1f}"
    )
    errors = ", ".join(f"{k}: {v}" for k, v in sorted(report.errors.items())) or "none"
    typer.echo(f"errors       {errors}")


if __name__ == "__main__":
    bench_app()
