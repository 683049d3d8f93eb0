"""``agssp up`` supervision: a crashed child is restarted with back-off, the others stay up."""

from __future__ import annotations

import subprocess
import sys
import time
from collections.abc import Iterator

import pytest

from agssp import processes
from agssp.processes import Backoff, Child, _check_child, _Restarts

CRASH = [sys.executable, "-c", "import sys; sys.exit(3)"]
SLEEP = [sys.executable, "-c", "import time; time.sleep(60)"]


@pytest.fixture
def children() -> Iterator[list[Child]]:
    kids = [Child("worker", CRASH), Child("inference", SLEEP)]
    yield kids
    processes.stop(kids, grace_s=5)


def _wait_exit(child: Child) -> None:
    assert child.proc is not None
    child.proc.wait(timeout=30)


def test_a_crashed_child_is_restarted_after_its_delay_and_the_others_are_left(
    children: list[Child],
) -> None:
    # given a worker that exits at once and an API that keeps running
    env: dict[str, str] = {}
    processes.start(children, env)
    worker, api = children
    api_pid = api.proc.pid if api.proc else None
    _wait_exit(worker)
    backoff, state, now = Backoff(first_s=1.0, max_s=4.0, stable_s=100.0), _Restarts(), 0.0
    # when the supervisor notices the exit, then it schedules a restart, not a stop
    _check_child(worker, env, backoff, state, now)
    first = worker.proc
    assert state.due_at["worker"] == pytest.approx(1.0)
    _check_child(worker, env, backoff, state, now + 0.5)
    assert worker.proc is first  # still waiting out the back-off
    _check_child(worker, env, backoff, state, now + 1.0)
    assert worker.proc is not first
    assert state.count["worker"] == 1
    # and the next crash waits twice as long
    _wait_exit(worker)
    _check_child(worker, env, backoff, state, now + 2.0)
    assert state.due_at["worker"] == pytest.approx(4.0)
    _check_child(api, env, backoff, state, now + 2.0)
    assert api.proc is not None
    assert api.proc.pid == api_pid
    assert api.proc.poll() is None


def test_the_delay_is_capped_and_resets_after_a_stable_run(children: list[Child]) -> None:
    # given a back-off that has grown to its cap
    env: dict[str, str] = {}
    worker = children[0]
    state = _Restarts(delay_s={"worker": 64.0}, started_at={"worker": 0.0})
    backoff = Backoff(first_s=1.0, max_s=8.0, stable_s=10.0)
    worker.proc = subprocess.Popen(SLEEP)
    # when the child stays up longer than stable_s, then the delay is forgotten
    _check_child(worker, env, backoff, state, 11.0)
    assert "worker" not in state.delay_s
    worker.proc.kill()
    worker.proc.wait(timeout=10)
    t0 = time.monotonic()
    _check_child(worker, env, backoff, state, t0)
    assert state.due_at["worker"] == pytest.approx(t0 + 1.0)
    assert state.delay_s["worker"] == 2.0
