"""Each service's app built the way its own unit tests build it, with API keys configured."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from pathlib import Path

from fastapi import FastAPI

from shared.config import AuthSettings, CommonSettings, PathSettings
from shared.http.auth import create_key
from shared.storage.filesystem import FileObjectStore

AppFactory = Callable[[Path, CommonSettings], FastAPI]
SCOPES = ("inspect", "train", "admin")


def common_with_keys(tmp_path: Path, entries: Sequence[str]) -> CommonSettings:
    return CommonSettings(
        paths=PathSettings(home=tmp_path / "home"), auth=AuthSettings(api_keys=list(entries))
    )


def one_key_per_scope() -> tuple[dict[str, str], list[str]]:
    """A key per scope (``inspect``, ``train``, ``admin``) and their AUTH_API_KEYS entries."""
    made = {scope: create_key(f"{scope}-key", [scope]) for scope in SCOPES}
    return {scope: key for scope, (key, _) in made.items()}, [e for _, e in made.values()]


def _store(tmp_path: Path) -> FileObjectStore:
    return FileObjectStore(tmp_path / "store")


def anomaly_map_app(tmp_path: Path, common: CommonSettings) -> FastAPI:
    from services.anomaly_map.api.main import create_app
    from tests.unit.anomaly_map.test_service_support import make_engine, make_settings

    settings = make_settings(tmp_path, common=common)
    return create_app(settings, store=_store(tmp_path), load_engine=make_engine)


def pretrain_app(tmp_path: Path, common: CommonSettings) -> FastAPI:
    from services.pretrain.api.main import create_app
    from services.pretrain.config import PretrainSettings

    return create_app(PretrainSettings(common=common), store=_store(tmp_path))


def finetune_app(tmp_path: Path, common: CommonSettings) -> FastAPI:
    from services.finetune.api.main import create_app
    from services.finetune.config import FinetuneSettings

    return create_app(FinetuneSettings(common=common), store=_store(tmp_path))


def inference_app(tmp_path: Path, common: CommonSettings) -> FastAPI:
    from services.inference.api.main import create_app
    from services.inference.config import InferenceSettings
    from tests.unit.inference.serving import MODEL, FakeDetector

    settings = InferenceSettings(common=common, model_name=MODEL, poll_interval_s=3600.0)
    return create_app(settings, store=_store(tmp_path), detector_factory=lambda _: FakeDetector())


def pipeline_app(tmp_path: Path, common: CommonSettings) -> FastAPI:
    from services.pipeline.api.main import create_app
    from services.pipeline.config import PipelineSettings

    return create_app(PipelineSettings(common=common, driver=False), store=_store(tmp_path))


SERVICE_APPS: dict[str, AppFactory] = {
    "anomaly_map": anomaly_map_app,
    "pretrain": pretrain_app,
    "finetune": finetune_app,
    "inference": inference_app,
    "pipeline": pipeline_app,
}
