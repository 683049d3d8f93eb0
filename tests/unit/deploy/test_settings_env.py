"""Every variable the deploy files set is a setting; required settings are set; values validate."""

from __future__ import annotations

from collections.abc import Iterator

import pytest
from pydantic import Field
from pydantic_settings import BaseSettings, SettingsConfigDict

from agssp import services as service_table
from shared.config import CommonSettings, load_settings
from tests.unit.deploy.manifests import (
    APP_IMAGE_PREFIX,
    ENV_EXAMPLE,
    ROOT,
    Doc,
    Dockerfile,
    command_role,
    compose_env,
    containers,
    dotenv_keys,
    k8s_yaml_files,
    load_all,
    parse_dockerfile,
    pod_spec,
)
from tests.unit.deploy.settings_env import (
    NON_SETTINGS,
    env_fields,
    known_env_names,
    missing_required,
    service_settings,
    unknown,
)


def _services_of(argv: list[str]) -> list[str]:
    role, names = command_role(argv)
    if role == "api":
        return names
    # queue -> the service whose worker module serves it ("services.<svc>.worker.tasks")
    modules = [service_table.task_modules()[q].split(".") for q in names]
    return sorted({parts[1] for parts in modules if parts[0] == "services"})


def _classes(argv: list[str]) -> list[type[BaseSettings]]:
    classes: list[type[BaseSettings]] = [CommonSettings]
    for service in _services_of(argv):
        classes += service_settings(service)
    return classes


def _image_env(compose_services: dict[str, Doc], image: str) -> dict[str, str]:
    """ENV of the Dockerfile target that compose builds ``image`` from."""
    builds = [s["build"] for s in compose_services.values() if s.get("image") == image]
    build = builds[0]
    assert all(b == build for b in builds), f"{image} is built two ways"
    dockerfile: Dockerfile = parse_dockerfile(ROOT / build["dockerfile"])
    return dockerfile.env(build["target"])


def _k8s_env_names() -> Iterator[tuple[str, str]]:
    """(file, variable) for every variable any k8s file sets: data, stringData, env."""
    for path in k8s_yaml_files():
        for doc in load_all(path):
            where = str(path.relative_to(ROOT))
            if doc.get("kind") in {"ConfigMap", "Secret"}:
                for key in {**(doc.get("data") or {}), **(doc.get("stringData") or {})}:
                    yield where, key
            for container in containers(doc) if pod_spec(doc) else []:
                for item in container.get("env") or []:
                    yield where, item["name"]


def _k8s_app_containers(docs: list[Doc]) -> Iterator[tuple[str, Doc, dict[str, str]]]:
    """(name, container, environment from envFrom + env) of every suite container."""
    config = next(d["data"] for d in docs if d["kind"] == "ConfigMap")
    secret = next(d["stringData"] for d in docs if d["kind"] == "Secret")
    for doc in docs:
        for c in containers(doc) if pod_spec(doc) else []:
            if c["image"].startswith(APP_IMAGE_PREFIX):
                env = {
                    **config,
                    **secret,
                    **{e["name"]: e.get("value", "") for e in c.get("env") or []},
                }
                yield (
                    f"{doc['metadata']['name']}/{c['name']}",
                    c,
                    {k: str(v) for k, v in env.items()},
                )


def test_introspection_names_prefixed_fields_and_walks_nested_settings() -> None:
    # given / when
    names = known_env_names()

    # then
    assert {"S3_ENDPOINT_URL", "REDIS_URL", "AGSSP_MODEL_DIR", "AUTH_API_KEYS"} <= names
    assert {
        "ANOMALY_MAP_CLIP_MODEL",
        "PRETRAIN_DEVICE",
        "FINETUNE_DEVICE",
        "INFERENCE_DEVICE",
    } <= names
    assert "ANOMALY_MAP_COMMON" not in names
    assert "S3" not in names


def test_checker_catches_unknown_variables_and_missing_required_settings() -> None:
    # given: a settings class with a required field, nesting a shared one
    class ProbeSettings(BaseSettings):
        model_config = SettingsConfigDict(env_prefix="PROBE_")
        common: CommonSettings = Field(default_factory=CommonSettings)
        licence_key: str
        level: int = 1

    # when
    fields = {f.env: f.required for f in env_fields(ProbeSettings)}
    missing = missing_required([ProbeSettings], {"PROBE_LEVEL": "2"})

    # then
    assert fields["PROBE_LICENCE_KEY"] is True
    assert fields["PROBE_LEVEL"] is False
    assert "S3_BUCKET" in fields
    assert missing == ["PROBE_LICENCE_KEY (ProbeSettings.licence_key)"]
    assert unknown({"S3_BUCKET", "S3_BUKET", "YOLO_OFFLINE"}) == ["S3_BUKET"]


def test_every_variable_set_by_compose_and_env_example_is_a_setting(compose: Doc) -> None:
    # given
    names = {f"x-common-env:{k}" for k in compose["x-common-env"]}
    for name, svc in compose["services"].items():
        names |= {f"{name}:{k}" for k in compose_env(svc)}
    names |= {f".env.example:{k}" for k in dotenv_keys(ENV_EXAMPLE)}

    # when
    bad = [n for n in sorted(names) if unknown({n.split(":", 1)[1]})]

    # then
    assert not bad, f"not a field of any settings class (or NON_SETTINGS): {bad}"


def test_every_variable_set_by_k8s_is_a_setting() -> None:
    # given
    names = sorted(set(_k8s_env_names()))

    # when
    bad = [f"{where}:{name}" for where, name in names if unknown({name})]

    # then
    assert names
    assert not bad, f"not a field of any settings class (or NON_SETTINGS): {bad}"


def test_every_variable_set_by_the_dockerfile_is_a_setting(dockerfile: Dockerfile) -> None:
    # given
    names = {f"{stage}:{key}" for stage in dockerfile.stages for key in dockerfile.env(stage)}

    # when
    bad = [n for n in sorted(names) if unknown({n.split(":", 1)[1]})]

    # then
    assert names
    assert not bad, f"not a field of any settings class (or NON_SETTINGS): {bad}"
    assert NON_SETTINGS.isdisjoint(known_env_names())


def test_compose_sets_every_required_setting(compose_services: dict[str, Doc]) -> None:
    for name, svc in compose_services.items():
        if "build" not in svc:
            continue
        # given: what a plain `up` gives the container (image ENV + environment; .env optional)
        env = {**_image_env(compose_services, svc["image"]), **compose_env(svc)}

        # when
        missing = missing_required(_classes(svc["command"]), env)

        # then
        assert not missing, f"{name} lacks required settings {missing}"


@pytest.mark.parametrize("overlay", ["cpu", "gpu"])
def test_k8s_sets_every_required_setting(
    rendered: dict[str, list[Doc]], compose_services: dict[str, Doc], overlay: str
) -> None:
    for name, container, env in _k8s_app_containers(rendered[overlay]):
        # given
        full = {**_image_env(compose_services, container["image"]), **env}

        # when
        missing = missing_required(_classes(container["args"]), full)

        # then
        assert not missing, f"{name} lacks required settings {missing}"


def _validate(monkeypatch: pytest.MonkeyPatch, argv: list[str], env: dict[str, str]) -> None:
    for known in known_env_names():
        monkeypatch.delenv(known, raising=False)
    for key, value in env.items():
        monkeypatch.setenv(key, value)
    for cls in _classes(argv):
        load_settings(cls)  # raises SettingsError naming the variable and the accepted values


def test_compose_values_are_valid_settings(
    compose_services: dict[str, Doc], monkeypatch: pytest.MonkeyPatch
) -> None:
    # given: the example .env copied as is, under each container's environment
    example = dotenv_keys(ENV_EXAMPLE)

    for svc in (s for s in compose_services.values() if "build" in s):
        env = {**_image_env(compose_services, svc["image"]), **example, **compose_env(svc)}
        # when / then
        with monkeypatch.context() as patch:
            _validate(patch, svc["command"], env)


@pytest.mark.parametrize("overlay", ["cpu", "gpu"])
def test_k8s_values_are_valid_settings(
    rendered: dict[str, list[Doc]],
    compose_services: dict[str, Doc],
    monkeypatch: pytest.MonkeyPatch,
    overlay: str,
) -> None:
    for _, container, env in _k8s_app_containers(rendered[overlay]):
        # given
        full = {**_image_env(compose_services, container["image"]), **env}

        # when / then
        with monkeypatch.context() as patch:
            _validate(patch, container["args"], full)
