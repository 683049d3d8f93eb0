"""services/*/Dockerfile: layer order, extras per role, offline env, non-root, weights."""

from __future__ import annotations

import json
import re
from pathlib import Path

from shared.cli.main import QUEUE_MODULES
from tests.unit.deploy.manifests import (
    DOCKERIGNORE,
    Dockerfile,
    command_role,
    dockerfile_targets,
    image_cmd,
    install_calls,
    requirement_names,
)

COMMON = re.compile(r"# ---- common part.*?# ---- end of common part ----\n", re.S)
TORCH_STACK = {"torch", "torchvision", "ultralytics", "open-clip-torch", "timm"}


def test_every_service_has_a_dockerfile_with_the_same_common_part(
    dockerfiles: dict[str, Dockerfile],
) -> None:
    # given
    commons = {svc: COMMON.findall(df.text) for svc, df in dockerfiles.items()}

    # when / then
    assert set(dockerfiles) == {"anomaly_map", "pretrain", "finetune", "inference"}
    assert all(len(found) == 1 for found in commons.values()), "markers missing"
    assert len({found[0] for found in commons.values()}) == 1, "common parts differ"


def test_dependencies_install_before_the_code_is_copied(dockerfiles: dict[str, Dockerfile]) -> None:
    for svc, target, df in dockerfile_targets(dockerfiles):
        # given
        chain = df.chain(target)
        sources = [
            (i, ins.operands()[0])
            for i, ins in enumerate(chain)
            if ins.keyword == "COPY" and ins.heredoc is None and "from" not in ins.flags()
        ]
        installs = [i for i, ins in enumerate(chain) if "install-deps.sh" in ins.args]

        # when
        code = [i for i, src in sources if src.startswith(("shared", "services"))]
        early = [src for i, src in sources if i < max(installs)]

        # then
        assert installs, f"{svc}:{target}"
        assert code, f"{svc}:{target}"
        assert max(installs) < min(code), f"{svc}:{target}"
        assert early == ["pyproject.toml"], f"{svc}:{target} copies {early} before installing"
        allowed = {"pyproject.toml", "shared/", "services/__init__.py", f"services/{svc}/"}
        assert {src for _, src in sources} - {"${WEIGHTS_SRC}/"} == allowed, f"{svc}:{target}"


def test_images_run_as_a_non_root_user(dockerfiles: dict[str, Dockerfile]) -> None:
    for svc, target, df in dockerfile_targets(dockerfiles):
        # given / when
        user = df.last(target, "USER")

        # then
        assert user is not None, f"{svc}:{target}"
        assert user.args not in {"root", "0", "0:0"}, f"{svc}:{target}"


def test_commands_match_the_service_and_apis_have_a_python_healthcheck(
    dockerfiles: dict[str, Dockerfile],
) -> None:
    for svc, target, df in dockerfile_targets(dockerfiles):
        # given
        entry = df.last(target, "ENTRYPOINT")
        health = df.last(target, "HEALTHCHECK")

        # when
        role, names = command_role(image_cmd(df, target))

        # then
        assert entry is not None
        assert json.loads(entry.args) == ["agssp"]
        assert role == target, f"{svc}:{target}"
        if role == "api":
            assert names == [svc]
            assert health is not None
            assert "/healthz" in health.args
            assert "python" in health.args
            assert "curl" not in health.args
            assert "--port" in image_cmd(df, target)
            assert "8000" in image_cmd(df, target)
        else:
            assert {QUEUE_MODULES[q].split(".")[1] for q in names} >= {svc}, names
            assert "--pool" in image_cmd(df, target)
            assert "solo" in image_cmd(df, target)


def test_containers_start_offline_with_weights_from_the_model_dir(
    dockerfiles: dict[str, Dockerfile],
) -> None:
    for svc, target, df in dockerfile_targets(dockerfiles):
        # given / when
        env = df.env(target)

        # then
        assert env["YOLO_OFFLINE"] == "1", f"{svc}:{target}"
        assert env["YOLO_AUTOINSTALL"] == "False"
        assert env["YOLO_CONFIG_DIR"] == "/tmp/ultralytics"
        assert env["AGSSP_MODEL_DIR"] == "/models"
        assert env["PYTHONUNBUFFERED"] == "1"


def test_each_role_installs_only_the_extras_it_needs(
    dockerfiles: dict[str, Dockerfile], build_dir: Path
) -> None:
    for svc, target, df in dockerfile_targets(dockerfiles):
        # given
        calls = install_calls(df, target)

        # when
        names = set().union(*(requirement_names(build_dir, call) for call in calls))

        # then
        label = f"{svc}:{target}"
        assert {"pydantic-settings", "typer", "celery", "minio"} <= names, label
        if target == "api":
            assert {"fastapi", "uvicorn"} <= names, label
        if (svc, target) in {("pretrain", "api"), ("finetune", "api"), ("inference", "api")}:
            assert not names & TORCH_STACK, f"{label} would install {names & TORCH_STACK}"
        else:
            assert "torch" in names, label
        if svc == "inference":
            assert "onnxruntime" in names
        if target == "worker" and svc in {"pretrain", "finetune"}:
            assert "ultralytics" in names, label
        if svc == "anomaly_map":
            assert "open-clip-torch" in names, label


def test_weights_are_baked_only_when_asked(dockerfiles: dict[str, Dockerfile]) -> None:
    # given
    df = dockerfiles["anomaly_map"]
    ignore = DOCKERIGNORE.read_text().split()

    # when
    baked = [i for i in df.stages["weights-true"].instructions if i.keyword == "COPY"]
    source = next(i for i in df.stages["weights-true"].instructions if i.keyword == "ARG")

    # then
    assert df.global_args["BAKE_WEIGHTS"] == "false"
    assert df.stages["weights"].base == "weights-${BAKE_WEIGHTS}"
    assert not df.stages["weights-false"].instructions
    assert [b.operands() for b in baked] == [["${WEIGHTS_SRC}/", "/models/"]]
    assert f"!{source.args.partition('=')[2]}/" in ignore  # the default source is sent
    for svc, target, other in dockerfile_targets(dockerfiles):
        copies = [i for i in other.chain(target) if i.flags().get("from") == "weights"]
        if target == "worker" or svc in {"anomaly_map", "inference"}:  # they read /models
            assert copies, f"{svc}:{target} cannot use baked weights"


def test_dockerignore_sends_only_what_the_images_copy() -> None:
    # given
    lines = [line for line in DOCKERIGNORE.read_text().splitlines() if line and line[0] != "#"]

    # when
    included = {line[1:] for line in lines if line.startswith("!")}

    # then: everything is excluded first, then only the build inputs come back
    assert lines[0] == "*"
    assert {"pyproject.toml", "shared/", "services/"} <= included
    assert not included & {".env", ".venv/", "tests/", "var/"}
