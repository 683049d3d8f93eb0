"""``agssp jobs wait|follow``: poll a job record until it ends, with progress and an ETA.

The job record in the object store is the source of truth, so following works the same on
the embedded default and on Redis + S3, and survives a worker restart mid-job.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from datetime import datetime

import typer

from agssp.store import describe_store
from shared.config import get_common_settings
from shared.errors import SuiteError
from shared.jobs.store import JobStore
from shared.schemas.jobs import JobRecord, JobState, utcnow

# Exit codes of `agssp jobs wait`: 0 succeeded, 1 failed or canceled, 124 timed out (as timeout(1)).
EXIT_SUCCEEDED, EXIT_FAILED, EXIT_TIMEOUT = 0, 1, 124
_BAR_WIDTH = 30


def eta_s(record: JobRecord, now: datetime | None = None) -> float | None:
    """Seconds left: the job's own estimate (``metrics.eta_s``) or a linear extrapolation.

    None until the job has started and reported some progress, and once it has ended.
    """
    if record.terminal or record.started_at is None:
        return None
    own = record.metrics.get("eta_s")
    if isinstance(own, int | float) and own >= 0:
        return float(own)
    if record.progress <= 0:
        return None
    elapsed = ((now or utcnow()) - record.started_at).total_seconds()
    return max(0.0, elapsed * (100.0 - record.progress) / record.progress)


def format_duration(seconds: float) -> str:
    """``1h02m``, ``4m05s`` or ``12s``."""
    total = round(seconds)
    hours, rest = divmod(total, 3600)
    minutes, secs = divmod(rest, 60)
    if hours:
        return f"{hours}h{minutes:02d}m"
    return f"{minutes}m{secs:02d}s" if minutes else f"{secs}s"


def render_line(record: JobRecord, now: datetime | None = None) -> str:
    """One status line: state, a text progress bar, percent, ETA and the phase message."""
    filled = round(_BAR_WIDTH * record.progress / 100.0)
    bar = "#" * filled + "-" * (_BAR_WIDTH - filled)
    left = eta_s(record, now)
    eta = f"  eta {format_duration(left)}" if left is not None else ""
    text = f"{record.kind} {record.id} {record.state.value:9s} [{bar}] {record.progress:5.1f}%{eta}"
    if record.message:
        text += f"  {record.message}"
    if record.state is JobState.FAILED:
        text += f"  error {record.error_code or 'unknown'}: {record.error or ''}"
    return text


def exit_code(record: JobRecord) -> int:
    """The ``wait`` exit code of an ended record."""
    return EXIT_SUCCEEDED if record.state is JobState.SUCCEEDED else EXIT_FAILED


def follow(
    jobs: JobStore,
    job_id: str,
    emit: Callable[[str], None],
    interval_s: float = 2.0,
    timeout_s: float | None = None,
    quiet: bool = False,
    clock: Callable[[], float] = time.monotonic,
    sleep: Callable[[float], None] = time.sleep,
) -> int:
    """Poll until the job ends or ``timeout_s`` passes; returns the exit code.

    A line is emitted whenever the state, progress or message changes (only the last one
    when ``quiet``).
    """
    start = clock()
    last: tuple[object, ...] = ()
    while True:
        record = jobs.get(job_id)
        line = render_line(record)
        seen = (record.state, record.progress, record.message)
        if not quiet and seen != last:
            emit(line)
        last = seen
        if record.terminal:
            if quiet:
                emit(line)
            return exit_code(record)
        if timeout_s is not None and clock() - start >= timeout_s:
            emit(f"timed out after {format_duration(timeout_s)}: {line}")
            return EXIT_TIMEOUT
        sleep(interval_s)


def wait_command(
    job_id: str,
    timeout: float = 0.0,
    interval: float = 2.0,
) -> None:
    """Block until the job ends; exit 0 succeeded, 1 failed/canceled, 124 timed out.

    Prints only the final line; ``--timeout 0`` waits for ever.
    """
    raise_exit(_run(job_id, interval, timeout, quiet=True))


def follow_command(
    job_id: str,
    timeout: float = 0.0,
    interval: float = 2.0,
) -> None:
    """Follow a job: a progress bar, ETA and phase message on every change, until it ends."""
    raise_exit(_run(job_id, interval, timeout, quiet=False))


def _run(job_id: str, interval: float, timeout: float, quiet: bool) -> int:
    from shared.storage.factory import create_store

    settings = get_common_settings()
    broker = "redis" if settings.redis.url else "embedded filesystem"
    typer.echo(f"{describe_store(settings)}  broker: {broker}", err=True)
    jobs = JobStore(create_store(settings))
    try:
        return follow(jobs, job_id, typer.echo, interval, timeout or None, quiet)
    except SuiteError as exc:
        typer.echo(f"error: {exc}", err=True)
        return 2


def raise_exit(code: int) -> None:
    """End the command with ``code`` (typer's way)."""
    if code:
        raise typer.Exit(code)
