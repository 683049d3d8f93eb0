"""``agssp``: up, serve, worker, jobs, keys, settings."""

from __future__ import annotations

import importlib.util
import json
import logging
import os
from typing import Annotated

import typer

from agssp import processes
from agssp import services as table
from agssp.anomaly import app as anomaly_app
from agssp.demo import app as demo_app
from agssp.finetune import datasets_app, finetune_app
from agssp.follow import follow_command, wait_command
from agssp.models import app as models_app
from agssp.pipeline import app as pipeline_app
from agssp.services import Role
from agssp.store import app as store_app
from shared.config import configure_offline_environment, get_common_settings
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
app.add_typer(datasets_app, name="data", help="Labelled data sets: import any layout, list.")
app.add_typer(store_app, name="store")
app.add_typer(pipeline_app, name="pipeline")
app.add_typer(demo_app, name="demo")
jobs_app.command("wait")(wait_command)
jobs_app.command("follow")(follow_command)
log = logging.getLogger(__name__)


@app.callback()
def _offline_first() -> None:
    # Runs before every command, so ultralytics is offline in this process and in every child
    # it starts (up, worker, serve) whatever the caller exported; no docstring: it would
    # replace the app's help text.
    for name, value in configure_offline_environment().items():
        log.warning("%s=%s ignored: the suite runs ultralytics offline", name, value)


_WHAT = {
    Role.API: "(/healthz, /readyz, /docs)",
    Role.CONSOLE: "(web console)",
    Role.PIPELINE: "(/v1/pipelines)",
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
    roles = {Role.API, *([Role.CONSOLE] if console else []), *([Role.PIPELINE] if pipeline else [])}
    ports = {s.name: base_port + s.port_offset for s in table.SERVICES if s.role in roles}
    env.update(_wiring(host, ports))
    children = [processes.Child(n, processes.serve_argv(n, host, p)) for n, p in ports.items()]
    if worker:
        queues = list(table.task_modules())
        children.append(processes.Child("worker", processes.worker_argv(queues)))
    processes.start(children, env)
    for name, port in ports.items():
        typer.echo(f"{name:12s} http://{host}:{port}  {_WHAT[table.by_name(name).role]}")
    typer.echo(
        f"storage: {settings.storage_backend()}  broker: "
        f"{'redis' if settings.redis.url else 'embedded filesystem'}  "
        f"home: {settings.paths.resolved_home()}"
    )
    raise typer.Exit(processes.supervise(children, env))


def _wiring(host: str, ports: dict[str, int]) -> dict[str, str]:
    """Point the console at the APIs and the pipeline, the pipeline at the APIs (if started)."""
    apis = {name: port for name, port in ports.items() if table.by_name(name).role is Role.API}
    console, pipeline = table.only(Role.CONSOLE).name, table.only(Role.PIPELINE).name
    env: dict[str, str] = {}
    if console in ports:
        pipeline_at = {pipeline: ports[pipeline]} if pipeline in ports else {}
        env.update(processes.console_env(host, {**apis, **pipeline_at}))
    if pipeline in ports:
        env.update(processes.pipeline_env(host, apis))
    return env


@app.command()
def serve(
    service: Annotated[str, typer.Argument(help=", ".join(table.names()))],
    host: str = "127.0.0.1",
    port: int = 0,
) -> None:
    """Serve one service's HTTP API with uvicorn."""
    import uvicorn

    if service not in table.names():
        raise typer.BadParameter(f"unknown service {service!r}; one of {table.names()}")
    from shared.http.slow_clients import guarded_protocol

    settings = get_common_settings()
    configure_logging(settings.log)
    uvicorn.run(
        table.by_name(service).factory,
        factory=True,
        host=host,
        port=port or table.default_port(service),
        log_config=None,
        timeout_graceful_shutdown=20,
        http=guarded_protocol(settings.http.header_timeout_s, settings.http.body_idle_s),
    )


@app.command()
def worker(
    queues: Annotated[list[str], typer.Argument(help=" ".join(table.task_modules()))],
    pool: str = "solo",
    concurrency: int = 1,
    hostname: str = "",
) -> None:
    """Run a Celery worker on the given queues (solo pool: one process per GPU)."""
    from shared.jobs.celery_app import make_celery

    by_queue = table.task_modules()
    unknown = set(queues) - set(by_queue)
    if unknown:
        raise typer.BadParameter(f"unknown queues {sorted(unknown)}; one of {list(by_queue)}")
    settings = get_common_settings()
    configure_logging(settings.log)
    modules = {by_queue[table.SELFTEST_QUEUE]} | {by_queue[q] for q in queues}
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
