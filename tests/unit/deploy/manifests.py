"""Readers for the deploy files: compose, k8s YAML, .env files and Dockerfiles (no Docker needed)."""

from __future__ import annotations

import json
import re
import shlex
import subprocess
import sys
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

ROOT = Path(__file__).resolve().parents[3]
COMPOSE_FILE = ROOT / "docker-compose.yml"
ENV_EXAMPLE = ROOT / ".env.example"
DOCKERIGNORE = ROOT / ".dockerignore"
DOCKERFILE = ROOT / "Dockerfile"  # one multi-stage file, one target per image
K8S = ROOT / "k8s"
OVERLAYS = ("cpu", "gpu")
APP_IMAGE_PREFIX = "agssp/"
BUILD_DIR = "/opt/agssp-build"  # where the Dockerfile writes their inline build helpers

Doc = dict[str, Any]

# The image targets of the root Dockerfile: target -> (service folder, role).
IMAGE_TARGETS: dict[str, tuple[str, str]] = {
    "anomaly-map-api": ("anomaly_map", "api"),
    "maps-worker": ("anomaly_map", "worker"),
    "pretrain-api": ("pretrain", "api"),
    "pretrain-worker": ("pretrain", "worker"),
    "finetune-api": ("finetune", "api"),
    "finetune-worker": ("finetune", "worker"),
    "inference-api": ("inference", "api"),
    "console": ("console", "api"),
    "pipeline-api": ("pipeline", "api"),
}


def load_all(path: Path) -> list[Any]:
    """Every document of a YAML file (safe loader: no tags, no code)."""
    with path.open(encoding="utf-8") as fh:
        return [doc for doc in yaml.safe_load_all(fh) if doc is not None]


def load_compose() -> Doc:
    (doc,) = load_all(COMPOSE_FILE)
    assert isinstance(doc, dict)
    return doc


def k8s_yaml_files() -> list[Path]:
    return sorted(K8S.rglob("*.yaml")) + sorted(K8S.rglob("*.yml"))


def dotenv_keys(path: Path) -> dict[str, str]:
    """KEY=value lines of a .env file (comments and blank lines skipped)."""
    pairs: dict[str, str] = {}
    for raw in path.read_text(encoding="utf-8").splitlines():
        line = raw.strip()
        if not line or line.startswith("#"):
            continue
        key, sep, value = line.partition("=")
        assert sep, f"{path.name}: not KEY=value: {raw!r}"
        pairs[key.removeprefix("export ").strip()] = value.strip()
    return pairs


_INTERPOLATION = re.compile(r"\$\$|\$\{(?P<name>\w+)(?::?-(?P<default>[^}]*))?\}")


def interpolate(value: str, env: dict[str, str] | None = None) -> str:
    """Compose's ${VAR}, ${VAR:-default} and $$ with the given (default: empty) environment."""
    env = env or {}

    def repl(match: re.Match[str]) -> str:
        if match.group(0) == "$$":
            return "$"
        return env.get(match.group("name")) or match.group("default") or ""

    return _INTERPOLATION.sub(repl, value)


def compose_env(service: Doc) -> dict[str, str]:
    """The `environment` of a compose service as strings, after interpolation with defaults."""
    env = service.get("environment") or {}
    if isinstance(env, list):
        env = dict(item.split("=", 1) for item in env)
    return {key: interpolate(str(value)) for key, value in env.items()}


def command_role(argv: list[str]) -> tuple[str, list[str]]:
    """('api', [service]) for `agssp serve SERVICE ...`, ('worker', queues) for `agssp worker ...`."""
    args = [str(a) for a in argv]
    if args and args[0] == "agssp":
        args = args[1:]
    if args[:1] == ["serve"]:
        return "api", args[1:2]
    if args[:1] == ["worker"]:
        queues = []
        for arg in args[1:]:
            if arg.startswith("-"):
                break
            queues.append(arg)
        return "worker", queues
    return "other", []


def option(argv: list[str], name: str) -> str | None:
    args = [str(a) for a in argv]
    return args[args.index(name) + 1] if name in args else None


def seconds(value: str | int | float) -> float:
    """Compose durations such as '120s', '2m', '1m30s'."""
    if isinstance(value, int | float):
        return float(value)
    units = {"h": 3600, "m": 60, "s": 1, "ms": 0.001}
    parts = re.findall(r"(\d+(?:\.\d+)?)(ms|h|m|s)", value)
    if not parts or "".join(n + u for n, u in parts) != value:
        raise ValueError(f"bad duration {value!r}")
    return sum(float(n) * units[u] for n, u in parts)


# ---- k8s ----


def pod_spec(doc: Doc) -> Doc | None:
    kind = doc.get("kind")
    spec: Doc | None = None
    if kind in {"Deployment", "StatefulSet", "DaemonSet", "Job"}:
        spec = doc["spec"]["template"]["spec"]
    elif kind == "CronJob":
        spec = doc["spec"]["jobTemplate"]["spec"]["template"]["spec"]
    return spec


def containers(doc: Doc) -> list[Doc]:
    spec = pod_spec(doc) or {}
    return list(spec.get("initContainers") or []) + list(spec.get("containers") or [])


def find(docs: list[Doc], kind: str, name: str) -> Doc:
    matches = [d for d in docs if d["kind"] == kind and d["metadata"]["name"] == name]
    assert len(matches) == 1, f"expected one {kind}/{name}, found {len(matches)}"
    return matches[0]


# ---- Dockerfiles ----


@dataclass
class Instruction:
    keyword: str
    args: str
    heredoc: str | None = None

    def words(self) -> list[str]:
        return shlex.split(self.args)

    def flags(self) -> dict[str, str]:
        pairs = [w[2:].partition("=") for w in self.words() if w.startswith("--")]
        return {key: value for key, _, value in pairs}

    def operands(self) -> list[str]:
        return [w for w in self.words() if not w.startswith("--")]


@dataclass
class Stage:
    base: str
    name: str
    instructions: list[Instruction] = field(default_factory=list)


@dataclass
class Dockerfile:
    path: Path
    text: str
    global_args: dict[str, str]
    stages: dict[str, Stage]

    def chain(self, target: str) -> list[Instruction]:
        """Instructions from the first stage up to ``target``, following FROM <stage>."""
        stage = self.stages[target]
        base = re.sub(r"\$\{(\w+)\}", lambda m: self.global_args.get(m.group(1), ""), stage.base)
        before = self.chain(base) if base in self.stages else []
        return before + stage.instructions

    def env(self, target: str) -> dict[str, str]:
        env: dict[str, str] = {}
        for ins in self.chain(target):
            if ins.keyword == "ENV":
                for word in ins.words():
                    key, _, value = word.partition("=")
                    env[key] = value
        return env

    def last(self, target: str, keyword: str) -> Instruction | None:
        found = [i for i in self.chain(target) if i.keyword == keyword]
        return found[-1] if found else None

    def heredocs(self) -> dict[str, str]:
        """Inline files (`COPY <<'EOF' DEST`) by destination path."""
        docs = {}
        for stage in self.stages.values():
            for ins in stage.instructions:
                if ins.keyword == "COPY" and ins.heredoc is not None:
                    docs[ins.operands()[-1]] = ins.heredoc
        return docs


def _logical_lines(lines: list[str]) -> Iterator[tuple[str, str | None]]:
    i = 0
    while i < len(lines):
        line = lines[i]
        i += 1
        if not line.strip() or line.lstrip().startswith("#"):
            continue
        while line.endswith("\\") and i < len(lines):
            nxt = lines[i]
            i += 1
            if not nxt.lstrip().startswith("#"):
                line = line[:-1] + " " + nxt.strip()
        heredoc = None
        marker = re.search(r"<<-?(['\"]?)(\w+)\1", line)
        if marker:
            body = []
            while lines[i] != marker.group(2):
                body.append(lines[i])
                i += 1
            i += 1
            heredoc = "\n".join(body) + "\n"
            line = line.replace(marker.group(0), "", 1)
        yield line, heredoc


def parse_dockerfile(path: Path) -> Dockerfile:
    """A small Dockerfile reader: stages, instructions, line continuations and heredocs."""
    text = path.read_text(encoding="utf-8")
    global_args: dict[str, str] = {}
    stages: dict[str, Stage] = {}
    current: Stage | None = None
    for line, heredoc in _logical_lines(text.splitlines()):
        keyword, _, args = line.strip().partition(" ")
        ins = Instruction(keyword.upper(), args.strip(), heredoc)
        if ins.keyword == "FROM":
            words = [w for w in ins.words() if not w.startswith("--")]
            name = words[2] if len(words) == 3 and words[1].lower() == "as" else str(len(stages))
            current = stages[name] = Stage(base=words[0], name=name)
        elif current is None and ins.keyword == "ARG":
            key, _, value = ins.args.partition("=")
            global_args[key] = value
        elif current is not None:
            current.instructions.append(ins)
    return Dockerfile(path, text, global_args, stages)


def load_dockerfile() -> Dockerfile:
    return parse_dockerfile(DOCKERFILE)


def dockerfile_targets() -> list[tuple[str, str, str]]:
    """(target, service, role) for every image target of the root Dockerfile."""
    return [(target, svc, role) for target, (svc, role) in IMAGE_TARGETS.items()]


def image_cmd(df: Dockerfile, target: str) -> list[str]:
    ins = df.last(target, "CMD")
    assert ins is not None, f"{df.path}: {target} has no CMD"
    return [str(word) for word in json.loads(ins.args)]


def install_calls(df: Dockerfile, target: str) -> list[list[str]]:
    """The arguments of every install-deps.sh run on the way to ``target``."""
    script = f"{BUILD_DIR}/install-deps.sh"
    calls = []
    for ins in df.chain(target):
        words = ins.words()
        if ins.keyword == "RUN" and script in words:
            calls.append(words[words.index(script) + 1 :])
    return calls


def requirement_names(build_dir: Path, args: list[str]) -> set[str]:
    """Normalised distribution names that the inline requirements.py prints for ``args``."""
    out = subprocess.run(
        [
            sys.executable,
            str(build_dir / "requirements.py"),
            str(build_dir / "pyproject.toml"),
            *args,
        ],
        check=True,
        capture_output=True,
        text=True,
    ).stdout
    return {
        re.split(r"[\s\[<>=!~;]", line, maxsplit=1)[0].lower().replace("_", "-")
        for line in out.splitlines()
    }
