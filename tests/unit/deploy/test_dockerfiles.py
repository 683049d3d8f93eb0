"""The root Dockerfile: one target per image; layer order, extras, offline env, non-root, weights."""

from __future__ import annotations

import json
from pathlib import Path

from agssp import services as service_table
from tests.unit.deploy.manifests import (
    DOCKERIGNORE,
    ROOT,
    Dockerfile,
    command_role,
    dockerfile_targets,
    image_cmd,
    install_calls,
    requirement_names,
)

TORCH_STACK = {"torch", "torchvision", "ultralytics", "open-clip-torch", "timm"}
NO_TORCH = {"pretrain-api", "finetune-api", "inference-api", "console", "pipeline-api"}
SERVICES = set(service_table.names())


def test_one_dockerfile_has_a_target_per_image_and_no_service_keeps_its_own(
    dockerfile: Dockerfile,
) -> None:
    # given
    targets = {target for target, _, _ in dockerfile_targets()}

    # when
    leftovers = sorted(str(p.relative_to(ROOT)) for p in (ROOT / "services").glob("*/Dockerfile"))

    # then
    assert targets <= set(dockerfile.stages), targets - set(dockerfile.stages)
    assert {svc for _, svc, _ in dockerfile_targets()} == SERVICES
    assert {svc for _, svc, _ in dockerfile_targets()} == {
        p.name for p in (ROOT / "services").iterdir() if (p / "__init__.py").is_file()
    }
    assert not leftovers, f"per-service Dockerfiles are back: {leftovers}"


def test_targets_share_one_base_stage(dockerfile: Dockerfile) -> None:
    for target, _, _ in dockerfile_targets():
        # given / when
        stages = _stage_chain(dockerfile, target)

        # then: every image derives from the same base, and user/env/helpers are set once
        assert stages[0] == "base", f"{target}: {stages}"
        assert not any(s in {t for t, _, _ in dockerfile_targets()} for s in stages[:-1]), stages
    for keyword in ("USER", "HEALTHCHECK", "CMD", "ENTRYPOINT"):
        assert not [i for i in dockerfile.stages["base"].instructions if i.keyword == keyword]


def test_dependencies_install_before_the_code_is_copied(dockerfile: Dockerfile) -> None:
    for target, svc, _ in dockerfile_targets():
        # given
        chain = dockerfile.chain(target)
        sources = [
            (i, ins.operands()[0])
            for i, ins in enumerate(chain)
            if ins.keyword == "COPY" and ins.heredoc is None and "from" not in ins.flags()
        ]
        installs = [i for i, ins in enumerate(chain) if "install-deps.sh" in ins.args]

        # when
        code = [i for i, src in sources if src.startswith(("agssp", "shared", "services"))]
        early = [src for i, src in sources if i < max(installs)]

        # then
        assert installs, target
        assert code, target
        assert max(installs) < min(code), target
        assert early == ["pyproject.toml"], f"{target} copies {early} before installing"
        allowed = {
            "pyproject.toml",
            "agssp/",
            "shared/",
            "services/__init__.py",
            f"services/{svc}/",
        }
        assert {src for _, src in sources} - {"${WEIGHTS_SRC}/"} == allowed, target


def test_images_run_as_a_non_root_user(dockerfile: Dockerfile) -> None:
    for target, _, _ in dockerfile_targets():
        # given / when
        user = dockerfile.last(target, "USER")

        # then
        assert user is not None, target
        assert user.args == "agssp", target


def test_commands_match_the_service_and_apis_have_a_python_healthcheck(
    dockerfile: Dockerfile,
) -> None:
    for target, svc, role in dockerfile_targets():
        # given
        entry = dockerfile.last(target, "ENTRYPOINT")
        health = dockerfile.last(target, "HEALTHCHECK")
        cmd = image_cmd(dockerfile, target)

        # when
        cmd_role, names = command_role(cmd)

        # then
        assert entry is not None, target
        assert json.loads(entry.args) == ["agssp"], target
        assert cmd_role == role, target
        if role == "api":
            assert names == [svc], target
            assert health is not None, target
            assert "/healthz" in health.args
            assert "python" in health.args
            assert "curl" not in health.args
            assert "--port" in cmd
            assert "8000" in cmd
        else:
            assert health is None, f"{target}: a worker is no server"
            assert {service_table.task_modules()[q].split(".")[1] for q in names} >= {svc}, names
            assert "--pool" in cmd
            assert "solo" in cmd


def test_containers_start_offline_with_weights_from_the_model_dir(dockerfile: Dockerfile) -> None:
    for target, _, _ in dockerfile_targets():
        # given / when
        env = dockerfile.env(target)

        # then
        assert env["YOLO_OFFLINE"] == "1", target
        assert env["YOLO_AUTOINSTALL"] == "False", target
        assert env["YOLO_CONFIG_DIR"] == "/tmp/ultralytics", target
        assert env["AGSSP_MODEL_DIR"] == "/models", target
        assert env["PYTHONUNBUFFERED"] == "1", target


def test_each_role_installs_only_the_extras_it_needs(
    dockerfile: Dockerfile, build_dir: Path
) -> None:
    for target, svc, role in dockerfile_targets():
        # given
        calls = install_calls(dockerfile, target)

        # when
        names = set().union(*(requirement_names(build_dir, call) for call in calls))

        # then
        assert {"pydantic-settings", "typer", "celery", "minio"} <= names, target
        if role == "api":
            assert {"fastapi", "uvicorn"} <= names, target
        else:
            assert not {"fastapi", "uvicorn"} & names, target
        if target in NO_TORCH:
            assert not names & TORCH_STACK, f"{target} would install {names & TORCH_STACK}"
        else:
            assert "torch" in names, target
        if svc == "inference":
            assert "onnxruntime" in names
        if role == "worker" and svc in {"pretrain", "finetune"}:
            assert "ultralytics" in names, target
        if svc == "anomaly_map":
            assert "open-clip-torch" in names, target


def test_torch_targets_pick_the_torch_build_by_build_argument(dockerfile: Dockerfile) -> None:
    for target, _, _ in dockerfile_targets():
        # given
        chain = dockerfile.chain(target)
        installs = [i for i, ins in enumerate(chain) if "install-deps.sh" in ins.args]

        # when
        args = {
            ins.args.partition("=")[0] for ins in chain[: max(installs)] if ins.keyword == "ARG"
        }

        # then: every stage that may install torch declares the variant (default cpu)
        if target not in NO_TORCH:
            assert {"TORCH_VARIANT", "TORCH_INDEX"} <= args, target
            defaults = [i.args for i in chain if i.keyword == "ARG" and "TORCH_VARIANT" in i.args]
            assert set(defaults) == {"TORCH_VARIANT=cpu"}, target


def test_weights_are_baked_only_when_asked(dockerfile: Dockerfile) -> None:
    # given
    df = dockerfile
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
    for target, svc, role in dockerfile_targets():
        copies = [i for i in df.chain(target) if i.flags().get("from") == "weights"]
        if role == "worker" or svc in {"anomaly_map", "inference"}:  # they read /models
            assert copies, f"{target} cannot use baked weights"


def test_dockerignore_sends_only_what_the_images_copy() -> None:
    # given
    lines = [line for line in DOCKERIGNORE.read_text().splitlines() if line and line[0] != "#"]

    # when
    included = {line[1:] for line in lines if line.startswith("!")}

    # then: everything is excluded first, then only the build inputs come back
    assert lines[0] == "*"
    assert {"pyproject.toml", "agssp/", "shared/", "services/"} <= included
    assert not included & {".env", ".venv/", "tests/", "var/"}


def _stage_chain(df: Dockerfile, target: str) -> list[str]:
    """Stage names from the first stage up to ``target``, following FROM <stage>."""
    names = [target]
    while df.stages[names[0]].base in df.stages:
        names.insert(0, df.stages[names[0]].base)
    return names
