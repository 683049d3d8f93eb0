"""docker-compose.yml: health checks, start order, GPU profile, builds, volumes and env files."""

from __future__ import annotations

import pytest

from agssp import services as service_table
from shared.config import JobSettings
from tests.unit.deploy.manifests import (
    DOCKERFILE,
    IMAGE_TARGETS,
    ROOT,
    Doc,
    command_role,
    compose_env,
    option,
    parse_dockerfile,
    seconds,
)

API_PORT = "8000"


def _apps(services: dict[str, Doc]) -> dict[str, Doc]:
    return {name: svc for name, svc in services.items() if "build" in svc}


def _has_gpu(svc: Doc) -> bool:
    devices = svc.get("deploy", {}).get("resources", {}).get("reservations", {}).get("devices")
    return bool(devices) or "gpus" in svc or svc.get("runtime") == "nvidia"


def _healthcheck_text(svc: Doc) -> str:
    test = svc["healthcheck"]["test"]
    return " ".join(test) if isinstance(test, list) else str(test)


def test_compose_file_is_a_mapping_of_services(compose: Doc) -> None:
    # given / when: the parsed file (fixture)
    # then
    assert isinstance(compose["services"], dict)
    assert {"redis", "minio", "minio-init"} <= set(compose["services"])


def test_every_api_and_every_queue_runs_with_a_plain_up(compose_services: dict[str, Doc]) -> None:
    # given: the services `docker compose up` starts (no profile)
    plain = [svc for svc in _apps(compose_services).values() if not svc.get("profiles")]

    # when
    roles = [command_role(svc["command"]) for svc in plain]
    served = {names[0] for role, names in roles if role == "api"}
    consumed = {queue for role, queues in roles if role == "worker" for queue in queues}

    # then
    assert served == set(service_table.names())  # the four APIs, the console and the pipeline API
    assert consumed == set(service_table.task_modules())


def test_every_api_listens_on_8000_and_has_a_python_healthcheck(
    compose_services: dict[str, Doc],
) -> None:
    # given
    apis = {
        name: svc
        for name, svc in _apps(compose_services).items()
        if command_role(svc["command"])[0] == "api"
    }

    # when / then
    assert apis
    for name, svc in apis.items():
        assert option(svc["command"], "--port") == API_PORT, name
        assert option(svc["command"], "--host") == "0.0.0.0", name
        check = _healthcheck_text(svc)
        assert f":{API_PORT}/healthz" in check, name
        assert "python" in check, name
        assert "curl" not in check, name
        assert any(str(p).endswith(f":{API_PORT}") for p in svc.get("ports", [])), name


def test_servers_have_healthchecks_and_the_suite_waits_for_them(
    compose_services: dict[str, Doc],
) -> None:
    # given
    redis, minio, init = (compose_services[n] for n in ("redis", "minio", "minio-init"))

    # when / then: the servers report health
    assert "redis-cli ping" in _healthcheck_text(redis)
    assert "ready" in _healthcheck_text(minio)
    assert init["depends_on"]["minio"]["condition"] == "service_healthy"
    assert init.get("restart") == "no"
    assert "mb --ignore-existing" in " ".join(init["command"])
    # and every suite container starts after Redis is healthy and the bucket exists
    for name, svc in _apps(compose_services).items():
        deps = svc["depends_on"]
        assert deps["redis"]["condition"] == "service_healthy", name
        assert deps["minio-init"]["condition"] == "service_completed_successfully", name


def test_gpu_reservations_only_behind_the_gpu_profile(compose_services: dict[str, Doc]) -> None:
    # given
    gpu = {n: s for n, s in compose_services.items() if _has_gpu(s)}
    profiled = {n: s for n, s in compose_services.items() if "gpu" in (s.get("profiles") or [])}

    # when / then
    assert gpu
    assert gpu.keys() == profiled.keys()
    for name, svc in gpu.items():
        (device,) = svc["deploy"]["resources"]["reservations"]["devices"]
        assert (device["driver"], device["capabilities"]) == ("nvidia", ["gpu"]), name
        assert svc["build"]["args"]["TORCH_VARIANT"] == "cuda", name
        assert svc["image"].endswith("-cuda"), name
    for name, svc in _apps(compose_services).items():
        if name not in gpu:
            assert svc["build"].get("args", {}).get("TORCH_VARIANT", "cpu") == "cpu", name


def test_gpu_profile_covers_every_torch_worker_queue(compose_services: dict[str, Doc]) -> None:
    # given
    def queues(services: list[Doc]) -> set[str]:
        roles = [command_role(s["command"]) for s in services]
        return {q for role, qs in roles if role == "worker" for q in qs}

    apps = _apps(compose_services).values()

    # when
    cpu = queues([s for s in apps if not s.get("profiles")])
    gpu = queues([s for s in apps if "gpu" in (s.get("profiles") or [])])

    # then
    assert cpu == gpu


def test_every_build_names_a_target_of_the_root_dockerfile(
    compose_services: dict[str, Doc],
) -> None:
    # given
    builds = {name: svc["build"] for name, svc in _apps(compose_services).items()}
    stages = parse_dockerfile(DOCKERFILE).stages

    # when
    targets = {build["target"] for build in builds.values()}

    # then
    assert builds
    for name, build in builds.items():
        assert build["context"] == ".", name
        assert ROOT / build["dockerfile"] == DOCKERFILE, f"{name}: {build['dockerfile']}"
        assert build["target"] in stages, f"{name}: no target {build['target']!r}"
        assert build["target"] in IMAGE_TARGETS, f"{name}: {build['target']} is not an image"
        assert compose_services[name]["image"].startswith("agssp/"), name
    assert targets == set(IMAGE_TARGETS), f"never built: {set(IMAGE_TARGETS) - targets}"


def test_each_build_runs_the_role_its_target_was_made_for(
    compose_services: dict[str, Doc],
) -> None:
    for name, svc in _apps(compose_services).items():
        # given
        service, role = IMAGE_TARGETS[svc["build"]["target"]]

        # when
        kind, names = command_role(svc["command"])

        # then
        assert kind == role, name
        if role == "api":
            assert names == [service], name
        else:
            assert {service_table.task_modules()[q].split(".")[1] for q in names} >= {service}, name


def test_third_party_images_are_pinned(compose_services: dict[str, Doc]) -> None:
    # given
    images = {n: s["image"] for n, s in compose_services.items() if "build" not in s}

    # when / then
    for name, image in images.items():
        tag = image.rpartition(":")[2]
        assert ":" in image, f"{name}: {image} has no tag"
        assert tag != "latest", f"{name}: {image} is not pinned"
    assert images["minio"].startswith("minio/minio:RELEASE.")


def test_workers_stop_grace_exceeds_soft_shutdown(compose_services: dict[str, Doc]) -> None:
    # given
    workers = {
        n: s
        for n, s in _apps(compose_services).items()
        if command_role(s["command"])[0] == "worker"
    }
    default = JobSettings.model_fields["soft_shutdown_timeout_s"].default

    # when / then
    for name, svc in workers.items():
        soft = float(compose_env(svc).get("JOBS_SOFT_SHUTDOWN_TIMEOUT_S", default))
        assert seconds(svc["stop_grace_period"]) > soft, name
        assert svc.get("init") is True, name


def test_api_keys_come_from_an_optional_git_ignored_env_file(
    compose_services: dict[str, Doc],
) -> None:
    # given
    ignored = (ROOT / ".gitignore").read_text().splitlines()

    # when / then
    assert ".env" in ignored
    assert (ROOT / ".env.example").is_file()
    for name, svc in _apps(compose_services).items():
        assert {"path": ".env", "required": False} in svc["env_file"], name
        assert "AUTH_API_KEYS" not in compose_env(svc), f"{name}: keys belong in .env"


def test_common_env_reaches_every_suite_container(compose: Doc) -> None:
    # given
    common = compose["x-common-env"]

    # when / then
    assert {"S3_ENDPOINT_URL", "REDIS_URL", "AGSSP_MODEL_DIR"} <= set(common)
    for name, svc in _apps(compose["services"]).items():
        env = svc["environment"]
        assert {k: env.get(k) for k in common} == common, name


@pytest.mark.parametrize("role", ["worker", "ml-api"])
def test_ml_containers_mount_the_model_cache_at_the_model_dir(compose: Doc, role: str) -> None:
    # given
    model_dir = compose["x-common-env"]["AGSSP_MODEL_DIR"]
    ml_apis = {"anomaly_map", "inference"}

    # when
    chosen = []
    for name, svc in _apps(compose["services"]).items():
        kind, names = command_role(svc["command"])
        if (role == "worker" and kind == "worker") or (role == "ml-api" and set(names) & ml_apis):
            chosen.append((name, svc))

    # then
    assert chosen
    assert "model-cache" in compose["volumes"]
    for name, svc in chosen:
        mounts = [str(v).split(":") for v in svc["volumes"]]
        assert ["model-cache", model_dir, "ro"] in mounts, name
