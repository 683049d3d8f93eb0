"""The one public factory ``create_backbone``, built from the torch-free table in
``shared.schemas.backbones``."""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from types import MappingProxyType

from torch import Tensor

from shared.errors import InvalidInputError
from shared.ml.backbones.base import Backbone
from shared.ml.backbones.weights import DEFAULT_MIN_MATCH, load_weights
from shared.schemas.backbones import BackboneSpec, Family, backbone_names, backbone_spec


@dataclass(frozen=True)
class BuildRequest:
    """What ``create_backbone`` asks a family's builder for (random init, not frozen yet)."""

    spec: BackboneSpec
    out_indices: tuple[int, ...]
    frozen_stages: int
    img_size: int
    drop_path_rate: float | None


def _cspdarknet(req: BuildRequest) -> Backbone:
    from shared.ml.backbones.cspdarknet import build_cspdarknet

    if req.drop_path_rate is not None:
        raise InvalidInputError(f"backbone {req.spec.name!r} has no drop path; leave it unset")
    return build_cspdarknet(req.spec.name, req.spec.variant, req.out_indices, req.frozen_stages)


def _resnet(req: BuildRequest) -> Backbone:
    from shared.ml.backbones.timm_backbones import build_resnet

    return build_resnet(
        req.spec.name, req.spec.variant, req.out_indices, req.frozen_stages, **_drop_path(req)
    )


def _swin(req: BuildRequest) -> Backbone:
    from shared.ml.backbones.timm_backbones import build_swin

    return build_swin(
        req.spec.name, req.spec.variant, req.out_indices, req.frozen_stages,
        img_size=req.img_size, **_drop_path(req),
    )  # fmt: skip


def _drop_path(req: BuildRequest) -> dict[str, float]:
    return {} if req.drop_path_rate is None else {"drop_path_rate": req.drop_path_rate}


# One builder per backbone family of ``shared.schemas.backbones``; adding a family is a row.
BUILDERS: Mapping[Family, Callable[[BuildRequest], Backbone]] = MappingProxyType(
    {"cspdarknet": _cspdarknet, "resnet": _resnet, "swin": _swin}
)


def available_backbones() -> tuple[str, ...]:
    """Names accepted by ``create_backbone`` (the torch-free table in shared.schemas)."""
    return backbone_names()


def backbone_family(name: str) -> str:
    """``"cspdarknet"``, ``"resnet"`` or ``"swin"`` for a registered name."""
    return backbone_spec(name).family


def default_out_indices(name: str) -> tuple[int, ...]:
    """Stages distilled by default for ``name`` (agssp-spec §4.4 in 0 = stem indexing)."""
    return backbone_spec(name).stages


def create_backbone(
    name: str,
    *,
    weights: Path | Mapping[str, Tensor] | None = None,
    frozen_stages: int = -1,
    out_indices: tuple[int, ...] | None = None,
    img_size: int | None = None,
    drop_path_rate: float | None = None,
    min_match: float = DEFAULT_MIN_MATCH,
) -> Backbone:
    """Build a randomly initialised backbone, optionally load weights, then freeze stages.

    Args:
        name: one of ``available_backbones()``.
        weights: local state_dict file or mapping; see ``load_weights``.
        frozen_stages: freeze stages 0..frozen_stages (0 = stem, 1..4 = stages); -1 = none.
        out_indices: stages whose maps are returned; default the distilled stages of §4.4.
        img_size: square input size, used by Swin (attention windows are size-bound).
        drop_path_rate: stochastic depth for timm models; None keeps the model default.
        min_match: least share of tensors that ``weights`` must fill.

    Returns:
        The backbone; ``backbone.load_report`` holds the load counts when weights were given.

    Raises:
        InvalidInputError: unknown name, bad indices, or weights that do not fit.
    """
    spec = backbone_spec(name)
    indices = spec.stages if out_indices is None else tuple(out_indices)
    size = spec.input_size if img_size is None else img_size
    request = BuildRequest(spec, indices, frozen_stages, size, drop_path_rate)
    backbone = BUILDERS[spec.family](request)
    if weights is not None:
        load_weights(backbone, weights, min_match=min_match)
    backbone.freeze()
    return backbone
