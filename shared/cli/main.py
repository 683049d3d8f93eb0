"""``agssp``: up, serve, worker, jobs, keys, settings."""

from __future__ import annotations

import importlib.util
import json
import logging
import os
from typing import Annotated

import typer

from shared.cli import processes
from shared.cli.anomaly import app as anomaly_app
from shared.cli.bench import bench_app
from shared.cli.demo import app as demo_app
from shared.cli.finetune import finetune_app
from shared.cli.follow import follow_command, wait_command
from shared.cli.models import app as models_app
from shared.cli.pipeline import app as pipeline_app
from shared.cli.store import app as store_app
from shared.config import get_common_settings
from shared.jobs.store import JobStore
from shared.logging import configure_logging

app = typer.Typer(help="AGSSP inspection suite.", no_args_is_help=True)
jobs_app = typer.Typer(help="Inspect and cancel jobs (reads the durable job records).")
keys_app = typer.Typer(help="API keys.")
app.add_typer(jobs_app, name="jobs")
app.add_typer(keys_app, name="keys")
app.add_typer(models_app, name="models")
app.add_typer(anomaly_app, name="maps")
app.add_typer(finetune_app, name="finetune")
app.add_typer(bench_app, name="bench")
app.add_typer(store_app, name="store")
app.add_typer(pipeline_app, name="pipeline")
app.add_typer(demo_app, name="demo")
jobs_app.command("wait")(wait_command)
jobs_app.command("follow")(follow_command)

QUEUE_MODULES = {
    "maps": "services.anomaly_map.worker.tasks",
    "pretrain": "services.pretrain.worker.tasks",
    "finetune": "services.finetune.worker.tasks",
    "default": "shared.jobs.selftest",
}


@app.command()
def up(
    host: str = "127.0.0.1",
    base_port: int = 8001,
    worker: bool = True,
    console: bool = True,
    pipeline: bool = True,
) -> None:
    """Run the whole suite on this machine: four APIs, console, pipeline, one worker."""
    settings = get_common_settings()
    configure_logging(settings.log)
    env = dict(os.environ, AGSSP_HOME=str(settings.paths.resolved_home()))
    ports = {name: base_port + i for i, name in enumerate(processes.SERVICES)}
    children = [
        processes.Child(name, processes.serve_argv(name, host, port))
        for name, port in ports.items()
    ]
    if console:  # the console forwards to the APIs at the ports chosen above
        pipeline_at = {processes.PIPELINE: base_port + len(processes.SERVICES) + 1}
        env.update(processes.console_env(host, {**ports, **(pipeline_at if pipeline else {})}))
        console_port = base_port + len(processes.SERVICES)
        argv = processes.serve_argv(processes.CONSOLE, host, console_port)
        children.append(processes.Child(processes.CONSOLE, argv))
    pipeline_port = base_port + len(processes.SERVICES) + 1
    if pipeline:  # the pipeline drives the four APIs at the ports chosen above
        env.update(processes.pipeline_env(host, ports))
        argv = processes.serve_argv(processes.PIPELINE, host, pipeline_port)
        children.append(processes.Child(processes.PIPELINE, argv))
    if worker:
        children.append(processes.Child("worker", processes.worker_argv(list(QUEUE_MODULES))))
    processes.start(children, env)
    for name, port in ports.items():
        typer.echo(f"{name:12s} http://{host}:{port}  (/healthz, /readyz, /docs)")
    if console:
        typer.echo(f"{processes.CONSOLE:12s} http://{host}:{console_port}  (web console)")
    if pipeline:
        typer.echo(f"{processes.PIPELINE:12s} http://{host}:{pipeline_port}  (/v1/pipelines)")
    typer.echo(
        f"storage: {settings.storage_backend()}  broker: "
        f"{'redis' if settings.redis.url else 'embedded filesystem'}  "
        f"home: {settings.paths.resolved_home()}"
    )
    raise typer.Exit(processes.supervise(children, env))


@app.command()
def serve(
    service: Annotated[str, typer.Argument(help=", ".join(processes.SERVABLE))],
    host: str = "127.0.0.1",
    port: int = 0,
) -> None:
    """Serve one service's HTTP API with uvicorn."""
    import uvicorn

    if service not in processes.SERVABLE:
        raise typer.BadParameter(f"unknown service {service!r}; one of {processes.SERVABLE}")
    settings = get_common_settings()
    configure_logging(settings.log)
    uvicorn.run(
        f"services.{service}.api.main:app_factory",
        factory=True,
        host=host,
        port=port or processes.DEFAULT_PORTS[service],
        log_config=None,
        timeout_graceful_shutdown=20,
    )


@app.command()
def worker(
    queues: Annotated[list[str], typer.Argument(help="maps pretrain finetune default")],
    pool: str = "solo",
    concurrency: int = 1,
    hostname: str = "",
) -> None:
    """Run a Celery worker on the given queues (solo pool: one process per GPU)."""
    from shared.jobs.celery_app import make_celery

    unknown = set(queues) - set(QUEUE_MODULES)
    if unknown:
        raise typer.BadParameter(f"unknown queues {sorted(unknown)}; one of {list(QUEUE_MODULES)}")
    settings = get_common_settings()
    configure_logging(settings.log)
    modules = {QUEUE_MODULES["default"]} | {QUEUE_MODULES[q] for q in queues}
    include = sorted(m for m in modules if importlib.util.find_spec(m) is not None)
    celery_app = make_celery(settings, name="agssp-worker", include=include)
    argv = [
        "worker",
        "-Q",
        ",".join(queues),
        "--pool",
        pool,
        "--concurrency",
        str(concurrency),
        "--loglevel",
        settings.log.level,
        "--without-gossip",
        "--without-mingle",
    ]
    if hostname:
        argv += ["--hostname", hostname]
    os.environ.setdefault("REMAP_SIGTERM", "SIGQUIT")  # soft shutdown: re-queue late-ack jobs
    celery_app.worker_main(argv)


def _job_store() -> JobStore:
    from shared.storage.factory import create_store

    return JobStore(create_store(get_common_settings()))


@jobs_app.command("list")
def jobs_list(kind: str = "", limit: int = 20) -> None:
    """Newest jobs first; jobs that look stuck are flagged ``STUCK (why)``."""
    from shared.jobs.reaper import stuck_reason

    settings = get_common_settings().jobs
    for record in _job_store().list(kind=kind or None, limit=limit):
        why = stuck_reason(
            record, lease_ttl_s=settings.lease_ttl_s, pending_after_s=settings.pending_requeue_s
        )
        flag = f"  STUCK ({why})" if why else ""
        typer.echo(
            f"{record.id}  {record.kind:20s} {record.state:10s} "
            f"{record.progress:5.1f}%  {record.message}{flag}"
        )


@jobs_app.command("show")
def jobs_show(job_id: str) -> None:
    """One job record as JSON."""
    typer.echo(_job_store().get(job_id).model_dump_json(indent=2))


@jobs_app.command("cancel")
def jobs_cancel(job_id: str) -> None:
    """Request a cooperative cancel."""
    record = _job_store().request_cancel(job_id)
    typer.echo(f"{record.id} {record.state} cancel_requested={record.cancel_requested}")


@jobs_app.command("selftest")
def jobs_selftest(steps: int = 5, step_s: float = 0.2) -> None:
    """Submit the self-test job (exercises broker, worker, store and publishing)."""
    from shared.jobs.celery_app import make_celery
    from shared.jobs.producer import submit_job
    from shared.schemas.jobs import Queue, TaskName

    record = submit_job(
        make_celery(get_common_settings()),
        _job_store(),
        kind="selftest",
        task_name=TaskName.SELFTEST,
        queue=Queue.DEFAULT,
        params={"steps": steps, "step_s": step_s},
    )
    typer.echo(record.id)


@keys_app.command("create")
def keys_create(
    name: str, scope: Annotated[list[str], typer.Option(help="inspect/train/admin")]
) -> None:
    """Print a new API key (shown once) and the hashed entry for AUTH_API_KEYS."""
    from shared.http.auth import create_key

    key, entry = create_key(name, scope)
    typer.echo(f"key (give to the client, not stored): {key}")
    typer.echo(f"AUTH_API_KEYS entry: {json.dumps([entry])}")


def main() -> None:
    logging.basicConfig(level=logging.INFO)
    app()


if __name__ == "__main__":
    app()
