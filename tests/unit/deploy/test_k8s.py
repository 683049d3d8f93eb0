"""k8s/: every file parses, overlays render, and the rendered resources keep our invariants."""

from __future__ import annotations

import tomllib
from urllib.parse import urlparse

import pytest
import yaml

from agssp import services as service_table
from shared.config import JobSettings
from tests.unit.deploy.manifests import (
    APP_IMAGE_PREFIX,
    OVERLAYS,
    ROOT,
    Doc,
    command_role,
    containers,
    find,
    k8s_yaml_files,
    load_all,
    pod_spec,
)

LABELS = ("app.kubernetes.io/name", "app.kubernetes.io/component", "app.kubernetes.io/part-of")
GPU = "nvidia.com/gpu"
ALL = ("base", *OVERLAYS)


def _workloads(docs: list[Doc]) -> list[Doc]:
    return [d for d in docs if pod_spec(d) is not None]


def _app_containers(docs: list[Doc]) -> list[tuple[Doc, Doc]]:
    return [
        (doc, c)
        for doc in _workloads(docs)
        for c in containers(doc)
        if c["image"].startswith(APP_IMAGE_PREFIX)
    ]


def _role(container: Doc) -> tuple[str, list[str]]:
    return command_role(container.get("args") or [])


def _light(container: Doc) -> bool:
    """A worker only on queues whose jobs load no model (no GPU, no model cache)."""
    role, queues = _role(container)
    return role == "worker" and set(queues) <= service_table.LIGHT_QUEUES


def _config(docs: list[Doc]) -> dict[str, str]:
    return dict(find(docs, "ConfigMap", "agssp-config")["data"])


def test_every_k8s_file_parses() -> None:
    # given
    files = k8s_yaml_files()

    # when
    parsed = {path: load_all(path) for path in files}

    # then
    assert files
    for path, docs in parsed.items():
        assert docs, f"{path} is empty"
        for doc in docs:
            assert isinstance(doc, dict), path
            assert "kind" in doc, path


@pytest.mark.parametrize("overlay", ALL)
def test_overlay_renders_uniquely_named_resources(
    rendered: dict[str, list[Doc]], overlay: str
) -> None:
    # given
    docs = rendered[overlay]

    # when
    keys = [(d["kind"], d["metadata"]["name"]) for d in docs]

    # then
    assert docs
    assert len(keys) == len(set(keys))
    assert all(d["apiVersion"] and d["metadata"]["name"] for d in docs)
    yaml.safe_dump_all(docs)  # round-trips as plain YAML


@pytest.mark.parametrize("overlay", ALL)
def test_every_container_has_cpu_and_memory_requests_and_limits(
    rendered: dict[str, list[Doc]], overlay: str
) -> None:
    # given
    workloads = _workloads(rendered[overlay])

    # when / then
    assert workloads
    for doc in workloads:
        for container in containers(doc):
            resources = container.get("resources") or {}
            for part in ("requests", "limits"):
                assert {"cpu", "memory"} <= set(resources.get(part) or {}), (
                    f"{doc['metadata']['name']}/{container['name']} lacks {part}"
                )


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_every_api_has_probes_and_a_service(rendered: dict[str, list[Doc]], overlay: str) -> None:
    # given
    docs = rendered[overlay]
    apis = [(d, c) for d, c in _app_containers(docs) if _role(c)[0] == "api"]
    services = [d for d in docs if d["kind"] == "Service"]

    # when / then
    assert {_role(c)[1][0] for _, c in apis} == set(service_table.names())  # + console, pipeline
    for doc, c in apis:
        name = doc["metadata"]["name"]
        port = next(p for p in c["ports"] if p["containerPort"] == 8000)
        startup, ready, live = c["startupProbe"], c["readinessProbe"], c["livenessProbe"]
        assert ready["httpGet"]["path"] == "/readyz", name
        assert live["httpGet"]["path"] == "/healthz", name
        assert startup["httpGet"]["path"] == "/healthz", name
        for probe in (startup, ready, live):
            assert probe["httpGet"]["port"] in {port["name"], 8000}, name
        # generous for model loading: kubelet waits period x failures before liveness counts
        assert startup["periodSeconds"] * startup["failureThreshold"] >= 120, name
        pod_labels = doc["spec"]["template"]["metadata"]["labels"]
        assert any(
            s["spec"]["selector"].items() <= pod_labels.items()
            and any(p["targetPort"] in {port["name"], 8000} for p in s["spec"]["ports"])
            for s in services
        ), f"no Service for {name}"


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_every_queue_has_a_worker_deployment(rendered: dict[str, list[Doc]], overlay: str) -> None:
    # given
    workers = [c for _, c in _app_containers(rendered[overlay]) if _role(c)[0] == "worker"]

    # when
    consumed = {queue for c in workers for queue in _role(c)[1]}

    # then
    assert consumed == set(service_table.task_modules())


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_worker_grace_period_exceeds_soft_shutdown_timeout(
    rendered: dict[str, list[Doc]], overlay: str
) -> None:
    # given
    docs = rendered[overlay]
    default = JobSettings.model_fields["soft_shutdown_timeout_s"].default
    soft = float(_config(docs).get("JOBS_SOFT_SHUTDOWN_TIMEOUT_S", default))

    # when
    workers = {
        d["metadata"]["name"]: d for d, c in _app_containers(docs) if _role(c)[0] == "worker"
    }

    # then
    assert workers
    for name, doc in workers.items():
        assert pod_spec(doc)["terminationGracePeriodSeconds"] > soft, name  # type: ignore[index]
        assert doc["spec"]["strategy"]["type"] == "Recreate", name


@pytest.mark.parametrize("overlay", ["base", "cpu"])
def test_no_gpu_outside_the_gpu_overlay(rendered: dict[str, list[Doc]], overlay: str) -> None:
    # given
    text = yaml.safe_dump_all(rendered[overlay])

    # when / then
    assert GPU not in text
    for doc in _workloads(rendered[overlay]):
        spec = pod_spec(doc) or {}
        assert not spec.get("nodeSelector")
        assert not spec.get("tolerations")
        assert all(not c["image"].endswith("-cuda") for c in containers(doc))


def test_gpu_overlay_gives_every_worker_one_gpu_on_a_gpu_node(
    rendered: dict[str, list[Doc]],
) -> None:
    # given
    docs = rendered["gpu"]

    # when
    with_gpu = [(d, c) for d in _workloads(docs) for c in containers(d) if GPU in str(c)]
    workers = [(d, c) for d, c in _app_containers(docs) if _role(c)[0] == "worker"]
    light = [(d, c) for d, c in workers if _light(c)]

    # then: every worker that runs a model has a GPU, the light ones (review exports) none
    assert workers
    assert light
    assert all(pair in with_gpu for pair in workers if pair not in light)
    assert not any(pair in with_gpu for pair in light)
    for doc, container in with_gpu:
        spec = pod_spec(doc) or {}
        assert container["resources"]["limits"][GPU] == 1
        assert spec["nodeSelector"], doc["metadata"]["name"]
        assert any(t["key"] == GPU for t in spec["tolerations"]), doc["metadata"]["name"]
        assert container["image"].endswith("-cuda"), "a GPU container needs the CUDA build"


@pytest.mark.parametrize("overlay", ALL)
def test_env_sources_exist(rendered: dict[str, list[Doc]], overlay: str) -> None:
    # given
    docs = rendered[overlay]
    secret = find(docs, "Secret", "agssp-secrets")

    # when / then
    for doc, c in _app_containers(docs):
        refs = c["envFrom"]
        assert {"configMapRef": {"name": "agssp-config"}} in refs, doc["metadata"]["name"]
        assert {"secretRef": {"name": "agssp-secrets"}} in refs, doc["metadata"]["name"]
    for doc in _workloads(docs):
        for c in containers(doc):
            for item in c.get("env") or []:
                ref = item.get("valueFrom", {}).get("secretKeyRef")
                if ref:
                    assert ref["name"] == "agssp-secrets"
                    assert ref["key"] in secret["stringData"]


@pytest.mark.parametrize("overlay", ALL)
def test_every_resource_and_pod_carries_the_standard_labels(
    rendered: dict[str, list[Doc]], overlay: str
) -> None:
    # given
    docs = rendered[overlay]

    # when / then
    for doc in docs:
        labelled = [doc["metadata"]]
        if pod_spec(doc) is not None:
            labelled.append(doc["spec"]["template"]["metadata"])
        for meta in labelled:
            labels = meta.get("labels") or {}
            assert all(labels.get(k) for k in LABELS), f"{doc['kind']}/{doc['metadata']['name']}"
            assert labels["app.kubernetes.io/part-of"] == "agssp"


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_inference_is_autoscaled(rendered: dict[str, list[Doc]], overlay: str) -> None:
    # given
    docs = rendered[overlay]

    # when
    hpas = [d for d in docs if d["kind"] == "HorizontalPodAutoscaler"]

    # then
    (hpa,) = hpas
    target = find(
        docs, hpa["spec"]["scaleTargetRef"]["kind"], hpa["spec"]["scaleTargetRef"]["name"]
    )
    (container,) = containers(target)
    assert _role(container) == ("api", ["inference"])
    assert "replicas" not in target["spec"], "the HPA owns replicas"
    assert hpa["spec"]["minReplicas"] <= hpa["spec"]["maxReplicas"]


@pytest.mark.parametrize("overlay", ALL)
def test_model_cache_is_mounted_at_the_model_dir(
    rendered: dict[str, list[Doc]], overlay: str
) -> None:
    # given
    docs = rendered[overlay]
    model_dir = _config(docs)["AGSSP_MODEL_DIR"]
    ml = {"anomaly_map", "inference"}

    # when
    chosen = [
        (d, c)
        for d, c in _app_containers(docs)
        if (_role(c)[0] == "worker" and not _light(c)) or set(_role(c)[1]) & ml
    ]

    # then
    assert chosen
    for doc, container in chosen:
        (mount,) = [m for m in container["volumeMounts"] if m["mountPath"] == model_dir]
        (volume,) = [v for v in pod_spec(doc)["volumes"] if v["name"] == mount["name"]]  # type: ignore[index]
        claim = volume["persistentVolumeClaim"]["claimName"]
        assert find(docs, "PersistentVolumeClaim", claim)
        assert mount.get("readOnly") is True


def test_redis_and_minio_are_a_replaceable_component(rendered: dict[str, list[Doc]]) -> None:
    # given
    base = {(d["kind"], d["metadata"]["name"]) for d in rendered["base"]}

    # when / then: the base has no servers of its own
    assert not any("redis" in name or "minio" in name for _, name in base)
    for overlay in OVERLAYS:
        docs = rendered[overlay]
        config = _config(docs)
        # and the overlays' servers are what the settings point at
        for url in (config["REDIS_URL"], config["S3_ENDPOINT_URL"]):
            parsed = urlparse(url)
            service = find(docs, "Service", str(parsed.hostname))
            assert parsed.port in {p["port"] for p in service["spec"]["ports"]}, url
        job = find(docs, "Job", "agssp-minio-init")
        assert "mb --ignore-existing" in " ".join(containers(job)[0]["args"])


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_suite_images_are_the_ones_compose_builds_for_the_same_role(
    rendered: dict[str, list[Doc]], compose_services: dict[str, Doc], overlay: str
) -> None:
    # given
    built = {s["image"] for s in compose_services.values() if "build" in s}
    # Roles per repository: one image runs in several (finetune's two workers), and the gpu
    # overlay's retag reaches the exports worker, which compose runs from the CPU build only.
    roles: dict[str, list[tuple[str, list[str]]]] = {}
    for svc in compose_services.values():
        if "build" in svc:
            repository = svc["image"].partition(":")[0]
            roles.setdefault(repository, []).append(command_role(svc["command"]))
    with (ROOT / "pyproject.toml").open("rb") as fh:
        version = tomllib.load(fh)["project"]["version"]

    # when
    used = _app_containers(rendered[overlay])

    # then
    assert used
    for doc, container in used:
        image = container["image"]
        assert image in built, f"{doc['metadata']['name']}: compose builds no {image}"
        assert _role(container) in roles[image.partition(":")[0]], image
        assert image.partition(":")[2].split("-")[0] == version, f"{image} is not {version}"
