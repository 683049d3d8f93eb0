"""``make_celery``: one Celery configuration for every queue (field-notes §C1).

Redis when ``REDIS_URL`` is set; otherwise kombu's filesystem transport under
``AGSSP_HOME/broker`` (the embedded default: real Celery, no server). Results are not kept in
a result backend: the durable job record in the object store is the source of truth.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from celery import Celery

from shared.config import CommonSettings, configure_offline_environment
from shared.schemas.jobs import Queue


def broker_options(settings: CommonSettings) -> tuple[str, dict[str, Any]]:
    """Broker URL and transport options for the configured backend."""
    if settings.redis.url:
        # field-notes §C1: the visibility timeout must exceed a checkpoint interval; jobs
        # checkpoint and re-enter, so a redelivery resumes instead of starting over.
        return settings.redis.url, {
            "visibility_timeout": settings.jobs.visibility_timeout_s,
            "socket_connect_timeout": 5,
            "socket_timeout": 30,
        }
    folder = settings.broker_dir() / "queue"
    processed = settings.broker_dir() / "processed"
    folder.mkdir(parents=True, exist_ok=True)
    processed.mkdir(parents=True, exist_ok=True)
    return "filesystem://", {
        "data_folder_in": str(folder),
        "data_folder_out": str(folder),
        "processed_folder": str(processed),
        "control_folder": str(settings.broker_dir() / "control"),
        "store_processed": False,
    }


def make_celery(
    settings: CommonSettings, *, name: str = "agssp", include: Sequence[str] = ()
) -> Celery:
    """A Celery app for producers (no ``include``) or workers (task modules in ``include``).

    ultralytics is made offline first (before ``include`` imports any task module), so a
    worker is offline however it was started.
    """
    configure_offline_environment(settings.paths)
    url, transport = broker_options(settings)
    app = Celery(name, broker=url, include=list(include))
    embedded = url.startswith("filesystem://")
    app.conf.update(
        broker_transport_options=transport,
        broker_connection_retry_on_startup=True,
        broker_connection_timeout=5,
        task_ignore_result=True,
        result_backend=None,
        task_serializer="json",
        accept_content=["json"],
        task_default_queue=Queue.DEFAULT.value,
        task_acks_late=True,  # jobs are idempotent (runner + checkpoints)
        task_reject_on_worker_lost=True,
        task_track_started=True,
        worker_prefetch_multiplier=1,
        task_soft_time_limit=settings.jobs.soft_time_limit_s,
        task_time_limit=settings.jobs.time_limit_s,
        worker_soft_shutdown_timeout=settings.jobs.soft_shutdown_timeout_s,
        worker_cancel_long_running_tasks_on_connection_loss=True,
        worker_hijack_root_logger=False,
        # The filesystem transport has no fan-out exchange, so no remote control there.
        worker_enable_remote_control=not embedded,
        worker_send_task_events=False,
        broker_pool_limit=4,
    )
    app.conf.agssp_settings = settings
    return app
