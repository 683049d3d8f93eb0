"""The Python kustomize fallback: agrees with kubectl where installed, refuses what it lacks."""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.unit.deploy.kustomize import kustomize_command, render, render_fallback, strategic_merge
from tests.unit.deploy.manifests import K8S, OVERLAYS, Doc

FOLDERS = {"base": K8S / "base", **{o: K8S / "overlays" / o for o in OVERLAYS}}


def _by_key(docs: list[Doc]) -> dict[tuple[str, str], Doc]:
    return {(d["kind"], d["metadata"]["name"]): d for d in docs}


@pytest.mark.parametrize("name", list(FOLDERS))
def test_fallback_renders_every_overlay(name: str) -> None:
    # given / when
    docs = render_fallback(FOLDERS[name])

    # then
    assert docs
    assert len(_by_key(docs)) == len(docs)


@pytest.mark.skipif(kustomize_command() is None, reason="neither kubectl nor kustomize installed")
@pytest.mark.parametrize("name", list(FOLDERS))
def test_fallback_renders_exactly_what_kubectl_renders(name: str) -> None:
    # given / when
    real = _by_key(render(FOLDERS[name]))
    ours = _by_key(render_fallback(FOLDERS[name]))

    # then
    assert ours.keys() == real.keys()
    assert [key for key in real if real[key] != ours[key]] == []


def test_strategic_merge_merges_named_lists_and_replaces_the_others() -> None:
    # given
    base = {
        "containers": [{"name": "a", "image": "x", "args": ["1", "2"]}, {"name": "b"}],
        "tolerations": [{"key": "old"}],
        "nodeSelector": {"zone": "1"},
    }
    patch = {
        "containers": [{"name": "a", "args": ["3"], "resources": {"limits": {"gpu": 1}}}],
        "tolerations": [{"key": "new"}],
        "nodeSelector": {"zone": None, "gpu": "yes"},
    }

    # when
    merged = strategic_merge(base, patch)

    # then
    assert merged["containers"] == [
        {"name": "a", "image": "x", "args": ["3"], "resources": {"limits": {"gpu": 1}}},
        {"name": "b"},
    ]
    assert merged["tolerations"] == [{"key": "new"}]
    assert merged["nodeSelector"] == {"gpu": "yes"}
    assert base["nodeSelector"] == {"zone": "1"}, "the input is not modified"


def test_fallback_refuses_kustomize_features_it_does_not_implement(tmp_path: Path) -> None:
    # given
    (tmp_path / "kustomization.yaml").write_text("namePrefix: plant-\nresources: []\n")

    # when / then
    with pytest.raises(NotImplementedError, match="namePrefix"):
        render_fallback(tmp_path)


def test_fallback_fails_on_a_patch_that_matches_nothing(tmp_path: Path) -> None:
    # given
    (tmp_path / "cm.yaml").write_text("apiVersion: v1\nkind: ConfigMap\nmetadata:\n  name: a\n")
    (tmp_path / "patch.yaml").write_text(
        "apiVersion: v1\nkind: ConfigMap\nmetadata:\n  name: b\ndata:\n  K: v\n"
    )
    (tmp_path / "kustomization.yaml").write_text(
        "resources: [cm.yaml]\npatches:\n  - path: patch.yaml\n"
    )

    # when / then
    with pytest.raises(ValueError, match="matches no resource"):
        render_fallback(tmp_path)
