"""The job store's cost as history grows, side by side with its bare parts, in one run.

For each history size N (finished job records spread over a year, plus a handful of live
ones), written directly through ``JobStore`` into a fresh local-folder store:

- ``page_ms``: ``GET /v1/jobs?limit=50`` as the API serves it (``JobStore.list``), and the
  next page through its cursor;
- ``running_ms``: ``state=RUNNING`` (served from the live index);
- ``reaper``: record reads and wall time of one reaper pass (``find_orphans``), against the
  control ``list(limit=10_000)`` that the reaper read before the live index;
- ``bare_list_ms``: the store's own listing of ``jobs/`` (the floor a page cannot go below).

Writes ``benchmarks/results/scale.json`` (machine, command, load average) and a PNG of the
curves beside it. Run alone on a quiet machine::

    .venv/bin/python -m benchmarks.scale --sizes 1000 10000 100000
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

from benchmarks import provenance
from shared.jobs.reaper import find_orphans
from shared.jobs.store import JobStore
from shared.schemas.jobs import JobRecord, JobState
from shared.storage.filesystem import FileObjectStore

RESULTS = Path(__file__).resolve().parent / "results"
LIVE = 5
HISTORY_S = 365 * 86_400  # the finished jobs span a year, as a plant's would
PAGE = 50


class CountingStore(FileObjectStore):
    """Counts reads of job records."""

    record_reads = 0

    def get_bytes(self, key: str) -> bytes:
        if key.endswith("/job.json"):
            self.record_reads += 1
        return super().get_bytes(key)


def _fill(jobs: JobStore, finished: int) -> None:
    """``finished`` SUCCEEDED jobs spread evenly over the past year, then a few RUNNING."""
    start = datetime(2025, 12, 1, tzinfo=UTC)
    for index in range(finished):
        at = start + timedelta(seconds=index * HISTORY_S / max(1, finished))
        record = JobRecord(
            id=f"{at:%Y%m%dT%H%M%S}-{index:08x}",
            kind="finetune", task_name="t", queue="finetune", params={},
        )  # fmt: skip
        record.state = JobState.SUCCEEDED
        jobs.save(record)
    for _ in range(LIVE):
        live = jobs.create(kind="finetune", task_name="t", queue="finetune", params={})
        live.state = JobState.RUNNING
        jobs.save(live)


def _timed(call: Callable[[], Any], repeats: int = 3) -> tuple[Any, float]:
    best, result = float("inf"), None
    for _ in range(repeats):
        started = time.perf_counter()
        result = call()
        best = min(best, time.perf_counter() - started)
    return result, round(1000 * best, 2)


def measure(size: int, root: Path) -> dict[str, Any]:
    store = CountingStore(root / f"store-{size}")
    jobs = JobStore(store)
    started = time.perf_counter()
    _fill(jobs, size)
    fill_s = time.perf_counter() - started
    page, page_ms = _timed(lambda: jobs.list(limit=PAGE))
    _, next_ms = _timed(lambda: jobs.list(limit=PAGE, before=page[-1].id))
    _, running_ms = _timed(lambda: jobs.list(state=JobState.RUNNING, limit=PAGE))
    _, bare_ms = _timed(lambda: store.list("jobs/"))
    store.record_reads = 0
    orphans, reaper_ms = _timed(lambda: find_orphans(jobs, 3600.0, ["finetune"]), repeats=1)
    reaper_reads = store.record_reads
    store.record_reads = 0
    _, control_ms = _timed(lambda: jobs.list(limit=10_000), repeats=1)
    return {
        "records": size + LIVE,
        "fill_s": round(fill_s, 1),
        "page_ms": page_ms,
        "next_page_ms": next_ms,
        "running_ms": running_ms,
        "bare_list_ms": bare_ms,
        "page_over_bare": round(page_ms / bare_ms, 2) if bare_ms else None,
        "reaper": {"record_reads": reaper_reads, "ms": reaper_ms, "orphans": len(orphans)},
        "control_full_scan": {"record_reads": store.record_reads, "ms": control_ms},
    }


def machine() -> dict[str, Any]:
    return provenance.machine()


def _plot(rows: list[dict[str, Any]], out: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    sizes = [r["records"] for r in rows]
    fig, (left, right) = plt.subplots(1, 2, figsize=(10, 4))
    for key, label in (("page_ms", "page of 50"), ("running_ms", "state=RUNNING"),
                       ("bare_list_ms", "bare listing")):  # fmt: skip
        left.plot(sizes, [r[key] for r in rows], marker="o", label=label)
    left.set(xscale="log", yscale="log", xlabel="job records", ylabel="ms", title="listing")
    left.legend()
    right.plot(sizes, [r["reaper"]["record_reads"] for r in rows], marker="o", label="reaper")
    right.plot(sizes, [r["control_full_scan"]["record_reads"] for r in rows], marker="o",
               label="control: scan of 10,000")  # fmt: skip
    right.set(xscale="log", xlabel="job records", ylabel="record reads per pass", title="reaper")
    right.legend()
    fig.tight_layout()
    fig.savefig(out, dpi=100)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sizes", type=int, nargs="+", default=[1000, 10_000, 100_000])
    parser.add_argument("--out", type=Path, default=RESULTS / "scale.json")
    args = parser.parse_args(argv)
    load_start = os.getloadavg()
    rows = []
    with tempfile.TemporaryDirectory(prefix="agssp-scale-") as tmp:
        for size in args.sizes:
            rows.append(measure(size, Path(tmp)))
            print(json.dumps(rows[-1]), flush=True)
    first, last = rows[0], rows[-1]
    report = {
        "benchmark": "scale",
        "command": " ".join(["python -m benchmarks.scale", *(argv or sys.argv[1:])]),
        "machine": machine(),
        "load_average": {"start": list(load_start), "end": list(os.getloadavg())},
        "store": "local folder (FileObjectStore)",
        "rows": rows,
        "ratios": {
            "page_ms_last_over_first": round(last["page_ms"] / first["page_ms"], 2),
            "running_ms_last_over_first": round(last["running_ms"] / first["running_ms"], 2),
            "reaper_reads_last_over_first": last["reaper"]["record_reads"]
            / max(1, first["reaper"]["record_reads"]),
        },
        "created_at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    # parts (b) and (c) (benchmarks.scale_maps) keep their sections in the same file
    kept = json.loads(args.out.read_text()) if args.out.is_file() else {}
    report |= {k: kept[k] for k in ("maps", "agbp_loading") if k in kept}
    args.out.write_text(json.dumps(report, indent=1) + "\n")
    _plot(rows, args.out.with_suffix(".png"))
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
