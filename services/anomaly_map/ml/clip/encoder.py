"""Block loop over a stock open_clip ViT with the KeAD V-V stream (agssp-spec §1.3-1.4).

Uses each block's own attention weights; no patched open_clip and no forward hooks.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Literal, cast

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from shared.errors import InvalidInputError

LevelMode = Literal["official", "distinct"]


@dataclass(frozen=True)
class EncodedImages:
    """Encoder output in the joint image-text space.

    Attributes:
        cls: main-stream final CLS token after ln_post and proj, shape (B, Dj).
        levels: one tensor per feature layer, patch tokens (CLS dropped) after ln_post and
            proj, each of shape (B, G*G, Dj).
    """

    cls: Tensor
    levels: tuple[Tensor, ...]


def default_feature_layers(num_layers: int) -> tuple[int, ...]:
    """Four evenly spaced 1-based blocks, e.g. (3, 6, 9, 12) for 12 layers (agssp-spec §1.4)."""
    return tuple(max(1, round(num_layers * i / 4)) for i in range(1, 5))


def default_vv_start(feature_layers: tuple[int, ...]) -> int:
    """First V-V block: the one after the first feature layer (agssp-spec §1.3, §6.4.1)."""
    return feature_layers[0] + 1


def _module(parent: nn.Module, name: str) -> nn.Module:
    return cast(nn.Module, getattr(parent, name))


def _tensor(parent: nn.Module, name: str) -> Tensor:
    return cast(Tensor, getattr(parent, name))


def blocks_of(visual: nn.Module) -> list[nn.Module]:
    """The residual blocks of a vision tower, in order."""
    return list(cast(nn.ModuleList, _module(_module(visual, "transformer"), "resblocks")))


def _is_identity(parent: nn.Module, name: str) -> bool:
    sub = getattr(parent, name, None)
    return sub is None or isinstance(sub, nn.Identity)


def check_supported(visual: nn.Module) -> None:
    """Refuse towers whose features the hand-written block loop would silently ignore.

    Raises:
        InvalidInputError: attentional pooling, no projection, non-'tok' pooling, or blocks
            with scaled-cosine / qk-norm / head-scale / inner-norm attention.
    """
    if (
        getattr(visual, "attn_pool", None) is not None
        or getattr(visual, "pool_type", "tok") != "tok"
    ):
        raise InvalidInputError("only CLS-token pooling towers are supported")
    if getattr(visual, "proj", None) is None:
        raise InvalidInputError("the vision tower has no projection into the joint space")
    for i, block in enumerate(blocks_of(visual), start=1):
        attn = _module(block, "attn")
        plain_mha = getattr(attn, "_qkv_same_embed_dim", True)
        extras = any(
            getattr(attn, name, None) is not None for name in ("logit_scale", "head_scale")
        ) or not all(_is_identity(attn, n) for n in ("ln_q", "ln_k", "ln_inner"))
        if (
            not plain_mha
            or extras
            or not _is_identity(block, "ln_attn")
            or hasattr(block, "ln_1_kv")
        ):
            raise InvalidInputError(
                f"vision block {i} uses an attention variant the V-V loop lacks"
            )


def embed_tokens(visual: nn.Module, images: Tensor) -> Tensor:
    """Patch embedding + CLS + positional embedding, before ln_pre.

    Args:
        visual: stock open_clip VisionTransformer.
        images: (B, 3, S, S), already normalised.

    Returns:
        Tokens of shape (B, 1 + G*G, width) in the tower's dtype.
    """
    conv1 = _module(visual, "conv1")
    x = conv1(images.to(_tensor(conv1, "weight").dtype))
    x = x.flatten(2).transpose(1, 2)
    cls = _tensor(visual, "class_embedding").to(x.dtype).expand(x.shape[0], 1, -1)
    return torch.cat([cls, x], dim=1) + _tensor(visual, "positional_embedding").to(x.dtype)


def _batch_first(visual: nn.Module) -> bool:
    # open_clip < 2.21 ran the tower sequence-first and had no flag; later ones default to True.
    return bool(getattr(_module(visual, "transformer"), "batch_first", False))


def run_block(
    block: nn.Module, x: Tensor, *, batch_first: bool, attn_mask: Tensor | None = None
) -> Tensor:
    """Run a stock block on batch-first tokens (B, N, W), whatever its own layout."""
    if batch_first:
        return cast(Tensor, block(x, attn_mask=attn_mask))
    return cast(Tensor, block(x.transpose(0, 1), attn_mask=attn_mask)).transpose(0, 1)


def _additive(mask: Tensor | None, dtype: torch.dtype) -> Tensor | None:
    # open_clip / nn.MultiheadAttention masks: bool True = blocked, float = added to logits.
    if mask is None or mask.dtype != torch.bool:
        return None if mask is None else mask.to(dtype)
    return torch.zeros(mask.shape, dtype=dtype, device=mask.device).masked_fill(mask, float("-inf"))


def _heads_of(t: Tensor, heads: int, width: int) -> Tensor:
    """(B, N, k*W) in_proj output -> (k, B, heads, N, W/heads)."""
    b, n, _ = t.shape
    return t.reshape(b, n, -1, heads, width // heads).permute(2, 0, 3, 1, 4)


def _query_key_value(attn: nn.Module, h: Tensor, cls_only: bool) -> tuple[Tensor, Tensor, Tensor]:
    """q, k and v per head, each (B, heads, N, W/heads); q of the CLS row only if ``cls_only``."""
    heads, width = int(cast(int, attn.num_heads)), h.shape[-1]
    weight, bias = _tensor(attn, "in_proj_weight"), cast(Tensor | None, attn.in_proj_bias)
    if not cls_only:
        q, k, v = _heads_of(F.linear(h, weight, bias), heads, width)
        return q, k, v
    # Keys and values of every token, the query of the CLS token alone.
    q_bias, kv_bias = (None, None) if bias is None else (bias[:width], bias[width:])
    (q,) = _heads_of(F.linear(h[:, :1], weight[:width], q_bias), heads, width)
    k, v = _heads_of(F.linear(h, weight[width:], kv_bias), heads, width)
    return q, k, v


def _attend(attn: nn.Module, q: Tensor, k: Tensor, v: Tensor, mask: Tensor | None) -> Tensor:
    """Scaled dot-product attention, heads merged, then out_proj: (B, Nq, W)."""
    b, heads, n, d = q.shape
    rows = None if mask is None else mask[..., :n, :]
    out = F.scaled_dot_product_attention(q, k, v, attn_mask=rows)
    return cast(Tensor, _module(attn, "out_proj")(out.transpose(1, 2).reshape(b, n, heads * d)))


def dual_attention(
    block: nn.Module, h: Tensor, attn_mask: Tensor | None = None, *, cls_only: bool = False
) -> tuple[Tensor, Tensor]:
    """Normal and V-V attention of one block on the same normalised input.

    Args:
        block: stock residual block; its in_proj and out_proj weights are reused.
        h: ln_1 output of the main stream, (B, N, W).
        attn_mask: optional (N, N) mask in open_clip's convention, applied to both paths.
        cls_only: the normal path attends from the CLS token only (its other queries are
            never computed); the V-V path still covers every token.

    Returns:
        (normal, vv) attention outputs after out_proj: normal (B, N, W), or (B, 1, W) when
        ``cls_only``; vv (B, N, W).
    """
    attn = _module(block, "attn")
    q, k, v = _query_key_value(attn, h, cls_only)
    mask = _additive(attn_mask, h.dtype)
    # agssp-spec §1.3: V-V attention, query and key both replaced by the value projection;
    # sdpa scales by head_dim^-0.5 as the reference does.
    return _attend(attn, q, k, v, mask), _attend(attn, v, v, v, mask)


def _finish_block(block: nn.Module, x: Tensor, attended: Tensor) -> Tensor:
    """Residual add of the attention output, then the block's MLP; rows of ``attended``."""
    x = x[:, : attended.shape[1]] + _module(block, "ls_1")(attended)
    mlp = _module(block, "mlp")(_module(block, "ln_2")(x))
    return cast(Tensor, x + _module(block, "ls_2")(mlp))


def _dual_block(block: nn.Module, x: Tensor, *, cls_only: bool = False) -> tuple[Tensor, Tensor]:
    normal, vv = dual_attention(block, _module(block, "ln_1")(x), cls_only=cls_only)
    # agssp-spec §1.3: no LayerScale and no MLP on the V-V branch (the target models have no
    # LayerScale, so skipping it as the reference does changes nothing for them).
    return _finish_block(block, x, normal), vv


def _cls_block(block: nn.Module, x: Tensor) -> Tensor:
    """A plain block's output for the CLS token alone, (B, 1, W)."""
    attn = _module(block, "attn")
    q, k, v = _query_key_value(attn, _module(block, "ln_1")(x), cls_only=True)
    return _finish_block(block, x, _attend(attn, q, k, v, None))


def project(visual: nn.Module, tokens: Tensor) -> Tensor:
    """ln_post then the visual projection: (..., width) -> (..., Dj)."""
    return cast(Tensor, _module(visual, "ln_post")(tokens) @ _tensor(visual, "proj"))


def map_levels(levels: Sequence[Tensor], fn: Callable[[Tensor], Tensor]) -> tuple[Tensor, ...]:
    """``fn`` of every level, computed once per distinct tensor: levels that are one and the
    same stream (official mode, agssp-spec §6.2) share one result object."""
    done: dict[int, Tensor] = {}
    for level in levels:
        if id(level) not in done:
            done[id(level)] = fn(level)
    return tuple(done[id(level)] for level in levels)


def encode_dual_stream(
    visual: nn.Module,
    images: Tensor,
    *,
    feature_layers: tuple[int, ...],
    vv_start: int,
    vv_residual: bool = True,
    level_mode: LevelMode = "distinct",
) -> EncodedImages:
    """Encode images with the main stream plus the V-V stream (agssp-spec §1.3-1.4).

    The final block's main stream is computed for the CLS token alone (the image
    embedding) unless that block's main-stream patch tokens are themselves a level.

    Args:
        visual: stock open_clip VisionTransformer (checked with ``check_supported``).
        images: (B, 3, S, S), normalised.
        feature_layers: 1-based blocks whose output is collected.
        vv_start: 1-based first block with V-V attention; larger than the layer count
            disables the V-V stream.
        vv_residual: "vv_res": the V-V stream starts from the first surgery block's input
            and accumulates; False keeps only the current block's V-V output.
        level_mode: "distinct" collects each level's own V-V stream (paper); "official"
            makes every V-V level the final V-V stream, as the official code's in-place
            update does (agssp-spec §6.2).

    Returns:
        Main-stream CLS (B, Dj) and one (B, G*G, Dj) level per feature layer, float32;
        levels that are the same stream are the same tensor.
    """
    x = _module(visual, "ln_pre")(embed_tokens(visual, images))
    batch_first = _batch_first(visual)
    blocks, last = blocks_of(visual), max(feature_layers)
    x_vv: Tensor | None = None
    collected: list[Tensor] = []
    from_vv: list[bool] = []
    for idx, block in enumerate(blocks, start=1):
        # The final block's main stream feeds the CLS embedding only, unless its patch
        # tokens are a level: its other rows are never computed.
        cls_only = idx == len(blocks) and not (idx in feature_layers and vv_start > idx)
        if vv_start <= idx <= last:
            x_in = x
            x, vv = _dual_block(block, x, cls_only=cls_only)
            x_vv = ((x_in if x_vv is None else x_vv) + vv) if vv_residual else vv
        else:
            x = _cls_block(block, x) if cls_only else run_block(block, x, batch_first=batch_first)
        if idx in feature_layers:
            # agssp-spec §1.4: the V-V stream where it exists, else the main stream.
            collected.append(x_vv if x_vv is not None else x)
            from_vv.append(x_vv is not None)
    if level_mode == "official" and x_vv is not None:
        collected = [x_vv if vv else level for level, vv in zip(collected, from_vv, strict=True)]
    cls = project(visual, x[:, 0])
    levels = map_levels(collected, lambda tokens: project(visual, tokens[:, 1:]).float())
    return EncodedImages(cls=cls.float(), levels=levels)


def encode_tokens(visual: nn.Module, tokens: Tensor) -> Tensor:
    """Plain CLIP forward from embedded tokens (before ln_pre) to joint-space tokens.

    Args:
        visual: stock open_clip VisionTransformer.
        tokens: (N, L, width), CLS first, positional embedding already added.

    Returns:
        (N, L, Dj): every token after ln_post and proj; index 0 is the pooled CLS.
    """
    x = _module(visual, "ln_pre")(tokens)
    batch_first = _batch_first(visual)
    for block in blocks_of(visual):
        x = run_block(block, x, batch_first=batch_first)
    return project(visual, x)
