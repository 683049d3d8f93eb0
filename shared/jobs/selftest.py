"""``jobs.selftest``: a tiny checkpointing job that exercises the whole job path.

It sleeps through ``steps`` steps, checkpoints after each, honours cancel between steps and
publishes one artifact whose version is the job id. Used by ``agssp jobs
selftest`` and the integration tests (kill mid-job, cancel, exactly-once publishing).
"""

from __future__ import annotations

import json
import time
from typing import Any

from celery import Task, shared_task

from shared.jobs.context import JobContext
from shared.jobs.worker import run_in_worker
from shared.schemas.jobs import TaskName
from shared.storage.artifacts import ArtifactStore


def run_selftest(ctx: JobContext) -> list[str]:
    """Steps with checkpoints; resumes from the last completed step."""
    steps = int(ctx.params.get("steps", 5))
    step_s = float(ctx.params.get("step_s", 0.2))
    raw = ctx.load_checkpoint()
    state: dict[str, Any] = json.loads(raw) if raw else {"done": 0, "executed": []}
    for step in range(state["done"], steps):
        ctx.check_cancel()
        time.sleep(step_s)
        state["executed"].append(step)
        state["done"] = step + 1
        ctx.save_checkpoint(json.dumps(state).encode())
        ctx.progress(
            100.0 * (step + 1) / steps, f"step {step + 1}/{steps}", metrics={"step": step + 1}
        )
    name = f"selftest-{ctx.job_id}"
    ref = ArtifactStore(ctx.store).publish(
        name,
        {"result.json": json.dumps({"executed": state["executed"]}).encode()},
        version=ctx.job_id,
        metadata={"job_id": ctx.job_id},
    )
    ctx.set_outputs(executed=state["executed"])
    return [f"{ref.name}:{ref.version}"]


@shared_task(name=TaskName.SELFTEST.value, bind=True)
def selftest_task(self: Task, job_id: str) -> dict[str, Any]:
    """Celery entry point of the self-test job."""
    return run_in_worker(self, job_id, run_selftest)
