"""Render a kustomization: with `kubectl kustomize` / `kustomize build` when installed, else here.

The fallback implements only what k8s/ uses, and refuses anything else so it cannot be
silently wrong: ``resources`` (files and folders), ``components`` (``kind: Component``),
``images`` (newName/newTag/digest) and ``patches`` that are strategic-merge files, with or
without a ``target`` (kind, name, equality ``labelSelector``). Strategic merge as Kubernetes
does it for the fields we patch: maps merge, ``null`` deletes, lists of named items
(containers, env, volumes, volumeMounts, ports) merge by ``name``, other lists are
replaced (tolerations, args). When kubectl is installed, a test checks both agree.
"""

from __future__ import annotations

import copy
import shutil
import subprocess
from pathlib import Path
from typing import Any

import yaml

Doc = dict[str, Any]

SUPPORTED_FIELDS = {"apiVersion", "kind", "resources", "components", "images", "patches"}


def kustomize_command() -> list[str] | None:
    if shutil.which("kubectl"):
        return ["kubectl", "kustomize"]
    if shutil.which("kustomize"):
        return ["kustomize", "build"]
    return None


def render(folder: Path) -> list[Doc]:
    """The resources a kustomization folder builds to."""
    command = kustomize_command()
    if command is None:
        return render_fallback(folder)
    out = subprocess.run(
        [*command, str(folder)], check=True, capture_output=True, text=True, timeout=60
    )
    return [doc for doc in yaml.safe_load_all(out.stdout) if doc]


def render_fallback(folder: Path) -> list[Doc]:
    """The documented subset of kustomize, in Python."""
    config = _kustomization(folder)
    if config.get("kind") == "Component":
        raise ValueError(f"{folder} is a Component; render the kustomization that uses it")
    return _build(folder, config, [])


def _kustomization(folder: Path) -> Doc:
    (config,) = [d for d in yaml.safe_load_all((folder / "kustomization.yaml").read_text()) if d]
    extra = set(config) - SUPPORTED_FIELDS
    if extra:
        raise NotImplementedError(f"{folder}/kustomization.yaml uses {sorted(extra)}")
    return dict(config)


def _build(folder: Path, config: Doc, docs: list[Doc]) -> list[Doc]:
    for entry in config.get("resources") or []:
        path = folder / entry
        if path.is_dir():
            docs.extend(render_fallback(path))
        else:
            docs.extend(d for d in yaml.safe_load_all(path.read_text()) if d)
    for entry in config.get("components") or []:
        component = _kustomization(folder / entry)
        if component.get("kind") != "Component":
            raise ValueError(f"{folder / entry} is not a kind: Component")
        docs = _build(folder / entry, component, docs)
    for patch in config.get("patches") or []:
        docs = _apply_patch(folder, patch, docs)
    for image in config.get("images") or []:
        for doc in docs:
            _set_images(doc, image)
    return docs


def _apply_patch(folder: Path, entry: Doc, docs: list[Doc]) -> list[Doc]:
    if set(entry) - {"path", "target"}:
        raise NotImplementedError(f"patch entry {entry} (only path + target are supported)")
    (patch,) = [d for d in yaml.safe_load_all((folder / entry["path"]).read_text()) if d]
    target = entry.get("target")
    if target is None:
        target = {"kind": patch["kind"], "name": patch["metadata"]["name"]}
    else:
        patch = copy.deepcopy(patch)
        patch["metadata"].pop("name", None)  # kustomize ignores it when a target is given
    matched = [i for i, doc in enumerate(docs) if _selected(doc, target)]
    if not matched:
        raise ValueError(f"patch {entry['path']} matches no resource")
    for i in matched:
        docs[i] = strategic_merge(docs[i], patch)
    return docs


def _selected(doc: Doc, target: Doc) -> bool:
    if set(target) - {"kind", "name", "labelSelector"}:
        raise NotImplementedError(f"patch target {target}")
    labels = doc["metadata"].get("labels") or {}
    wanted = dict(p.split("=", 1) for p in target.get("labelSelector", "").split(",") if p)
    return (
        target.get("kind", doc["kind"]) == doc["kind"]
        and target.get("name", doc["metadata"]["name"]) == doc["metadata"]["name"]
        and all(labels.get(k) == v for k, v in wanted.items())
    )


def strategic_merge(base: Any, patch: Any) -> Any:
    if isinstance(base, dict) and isinstance(patch, dict):
        merged = dict(base)
        for key, value in patch.items():
            if value is None:
                merged.pop(key, None)
            else:
                merged[key] = strategic_merge(base[key], value) if key in base else value
        return merged
    if _named_list(base) and _named_list(patch):
        merged_list = list(base)
        for item in patch:
            names = [b["name"] for b in merged_list]
            if item["name"] in names:
                at = names.index(item["name"])
                merged_list[at] = strategic_merge(merged_list[at], item)
            else:
                merged_list.append(item)
        return merged_list
    return copy.deepcopy(patch)


def _named_list(value: Any) -> bool:
    return isinstance(value, list) and all(isinstance(i, dict) and "name" in i for i in value)


def _set_images(node: Any, image: Doc) -> None:
    if isinstance(node, list):
        for item in node:
            _set_images(item, image)
        return
    if not isinstance(node, dict):
        return
    for key in ("containers", "initContainers"):
        for container in node.get(key) or []:
            container["image"] = _retag(container["image"], image)
    for value in node.values():
        _set_images(value, image)


def _retag(ref: str, image: Doc) -> str:
    name, tag = ref, ""
    if "@" in ref:
        name, _, digest = ref.partition("@")
        tag = "@" + digest
    elif ":" in ref.rsplit("/", 1)[-1]:
        name, _, rest = ref.rpartition(":")
        tag = ":" + rest
    if name != image["name"]:
        return ref
    name = str(image.get("newName", name))
    if "digest" in image:
        return f"{name}@{image['digest']}"
    if "newTag" in image:
        return f"{name}:{image['newTag']}"
    return name + tag
