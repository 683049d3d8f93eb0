"""Environment variable names of the suite's settings classes, found by introspection.

A settings class reads ``env_prefix + FIELD`` (upper case) for each plain field; a field whose
type is itself a ``BaseSettings`` (``common: CommonSettings``, ``s3: S3Settings``) is built by
its ``default_factory`` and reads its own prefix, so it is walked instead of named.
"""

from __future__ import annotations

import importlib
import importlib.util
import pkgutil
from dataclasses import dataclass

from pydantic import AliasChoices
from pydantic.fields import FieldInfo
from pydantic_settings import BaseSettings

import services

# Variables the manifests may set that are not settings of the suite, and why.
NON_SETTINGS = {
    # ultralytics' own switches: offline, no pip installs, a writable config dir (field-notes §B2)
    "YOLO_OFFLINE",
    "YOLO_AUTOINSTALL",
    "YOLO_CONFIG_DIR",
    # the Python interpreter in the images
    "PYTHONUNBUFFERED",
    "PYTHONDONTWRITEBYTECODE",
    "PYTHONPATH",
    # the MinIO server container's root user (taken from the S3_* credentials)
    "MINIO_ROOT_USER",
    "MINIO_ROOT_PASSWORD",
    # Celery: SIGTERM -> soft shutdown (set by `agssp worker`; allowed if a manifest repeats it)
    "REMAP_SIGTERM",
}


@dataclass(frozen=True)
class EnvField:
    env: str
    owner: type[BaseSettings]
    field: str
    required: bool


def settings_classes() -> dict[str, type[BaseSettings]]:
    """Every registered settings class, after importing each ``services.<svc>.config``."""
    from shared import config

    for module in pkgutil.iter_modules(services.__path__):
        if module.ispkg and importlib.util.find_spec(f"services.{module.name}.config"):
            importlib.import_module(f"services.{module.name}.config")
    return dict(config._SETTINGS_CLASSES)


def _names(prefix: str, name: str, info: FieldInfo) -> list[str]:
    alias = info.validation_alias
    if isinstance(alias, str):
        return [alias.upper()]
    if isinstance(alias, AliasChoices):
        return [c.upper() for c in alias.choices if isinstance(c, str)]
    return [(prefix + name).upper()]


def env_fields(cls: type[BaseSettings], _seen: frozenset[type] = frozenset()) -> list[EnvField]:
    """Every environment variable ``cls`` reads, nested settings classes included."""
    prefix = str(cls.model_config.get("env_prefix", ""))
    found: list[EnvField] = []
    for name, info in cls.model_fields.items():
        kind = info.annotation
        if isinstance(kind, type) and issubclass(kind, BaseSettings):
            if kind not in _seen:
                found.extend(env_fields(kind, _seen | {cls}))
            continue
        found.extend(
            EnvField(env, cls, name, info.is_required()) for env in _names(prefix, name, info)
        )
    return found


def known_env_names() -> set[str]:
    return {f.env for cls in settings_classes().values() for f in env_fields(cls)}


def service_settings(service: str) -> list[type[BaseSettings]]:
    """The settings classes defined in ``services/<service>/config.py``."""
    module = f"services.{service}.config"
    found = [cls for cls in settings_classes().values() if cls.__module__ == module]
    assert found, f"no settings class registered from {module}"
    return found


def missing_required(classes: list[type[BaseSettings]], env: dict[str, str]) -> list[str]:
    """Required fields (no default) of ``classes`` that ``env`` does not set."""
    missing = set()
    for cls in classes:
        for item in env_fields(cls):
            if item.required and item.env not in env:
                missing.add(f"{item.env} ({item.owner.__name__}.{item.field})")
    return sorted(missing)


def unknown(names: set[str]) -> list[str]:
    return sorted(names - known_env_names() - NON_SETTINGS)
