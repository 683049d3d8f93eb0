"""Registry of supported backbones and the one public factory ``create_backbone``."""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path

from torch import Tensor

from shared.errors import InvalidInputError
from shared.ml.backbones.base import Backbone
from shared.ml.backbones.weights import DEFAULT_MIN_MATCH, load_weights

# (name, out_indices, frozen_stages, img_size, drop_path_rate) -> Backbone
_Builder = Callable[[str, tuple[int, ...], int, int, float | None], Backbone]


@dataclass(frozen=True)
class _Entry:
    family: str
    builder: _Builder
    default_img_size: int
    # agssp-spec §4.4 distilled outputs in our stage indexing (0 = stem, 1..4 = stages).
    default_out_indices: tuple[int, ...]


def _csp(yaml_name: str) -> _Builder:
    def build(
        name: str, out: tuple[int, ...], frozen: int, img: int, dpr: float | None
    ) -> Backbone:
        from shared.ml.backbones.cspdarknet import build_cspdarknet

        if dpr is not None:
            raise InvalidInputError(f"backbone {name!r} has no drop path; leave it unset")
        return build_cspdarknet(name, yaml_name, out, frozen)

    return build


def _timm(family: str, variant: str) -> _Builder:
    def build(
        name: str, out: tuple[int, ...], frozen: int, img: int, dpr: float | None
    ) -> Backbone:
        from shared.ml.backbones import timm_backbones

        extra = {} if dpr is None else {"drop_path_rate": dpr}
        if family == "resnet":
            return timm_backbones.build_resnet(name, variant, out, frozen, **extra)
        return timm_backbones.build_swin(name, variant, out, frozen, img_size=img, **extra)

    return build


_REGISTRY: dict[str, _Entry] = {
    "yolov8n": _Entry("cspdarknet", _csp("yolov8n.yaml"), 224, (3, 4)),
    "yolov8s": _Entry("cspdarknet", _csp("yolov8s.yaml"), 224, (3, 4)),
    "yolov8m": _Entry("cspdarknet", _csp("yolov8m.yaml"), 224, (3, 4)),
    "resnet50": _Entry("resnet", _timm("resnet", "resnet50"), 224, (3, 4)),
    "swin_base": _Entry("swin", _timm("swin", "swin_base_patch4_window7_224"), 224, (4,)),
    # Tiny random-init variants for unit tests (timm's test_* models pattern).
    "resnet18-test": _Entry("resnet", _timm("resnet", "test"), 64, (3, 4)),
    "swin-tiny-test": _Entry("swin", _timm("swin", "test"), 64, (4,)),
}


def available_backbones() -> tuple[str, ...]:
    """Names accepted by ``create_backbone``."""
    return tuple(_REGISTRY)


def backbone_family(name: str) -> str:
    """``"cspdarknet"``, ``"resnet"`` or ``"swin"`` for a registered name."""
    return _entry(name).family


def default_out_indices(name: str) -> tuple[int, ...]:
    """Stages distilled by default for ``name`` (agssp-spec §4.4 in 0 = stem indexing)."""
    return _entry(name).default_out_indices


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
    entry = _entry(name)
    indices = entry.default_out_indices if out_indices is None else tuple(out_indices)
    size = entry.default_img_size if img_size is None else img_size
    backbone = entry.builder(name, indices, frozen_stages, size, drop_path_rate)
    if weights is not None:
        load_weights(backbone, weights, min_match=min_match)
    backbone.freeze()
    return backbone


def _entry(name: str) -> _Entry:
    try:
        return _REGISTRY[name]
    except KeyError:
        raise InvalidInputError(
            f"unknown backbone {name!r}; choose one of {sorted(_REGISTRY)}"
        ) from None
