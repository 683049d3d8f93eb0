"""The dual-stream (main + V-V) encoder against straightforward re-computations."""

from __future__ import annotations

import math
from typing import Any, cast

import pytest
import torch
from open_clip.transformer import ResidualAttentionBlock
from torch import Tensor, nn

from services.anomaly_map.ml.clip.backbone import ClipBundle
from services.anomaly_map.ml.clip.encoder import (
    default_feature_layers,
    default_vv_start,
    dual_attention,
    encode_dual_stream,
    run_block,
)


def _slow_vv_attention(block: Any, x: Tensor) -> Tensor:
    """V-V attention written out head by head and sample by sample."""
    attn = block.attn
    heads, width = attn.num_heads, x.shape[-1]
    d = width // heads
    h = nn.functional.layer_norm(x, (width,), block.ln_1.weight, block.ln_1.bias, block.ln_1.eps)
    v = h @ attn.in_proj_weight[2 * width :].T + attn.in_proj_bias[2 * width :]
    out = torch.zeros_like(v)
    for b in range(x.shape[0]):
        for head in range(heads):
            vh = v[b, :, head * d : (head + 1) * d]
            weights = torch.softmax(vh @ vh.T / math.sqrt(d), dim=-1)
            out[b, :, head * d : (head + 1) * d] = weights @ vh
    return cast(Tensor, out @ attn.out_proj.weight.T + attn.out_proj.bias)


def _slow_levels(
    visual: Any, images: Tensor, layers: tuple[int, ...], vv_start: int, residual: bool
) -> list[Tensor]:
    """Independent re-computation: stock block calls for the main stream, explicit V-V."""
    x = visual.conv1(images).flatten(2).transpose(1, 2)
    cls = visual.class_embedding.expand(x.shape[0], 1, -1)
    x = visual.ln_pre(torch.cat([cls, x], dim=1) + visual.positional_embedding)
    x_vv, levels = None, []
    for idx, block in enumerate(visual.transformer.resblocks, start=1):
        if idx >= vv_start:
            vv = _slow_vv_attention(block, x)
            if not residual:
                x_vv = vv
            elif x_vv is None:
                x_vv = x + vv  # the first V-V block starts from its own input
            else:
                x_vv = x_vv + vv
        x = block(x)
        if idx in layers:
            chosen = x_vv if x_vv is not None else x
            levels.append(visual.ln_post(chosen[:, 1:]) @ visual.proj)
    return levels


@pytest.mark.parametrize("residual", [True, False])
def test_vv_levels_match_a_slow_recomputation(
    tiny_bundle: ClipBundle, tiny_images: Tensor, residual: bool
) -> None:
    # given
    visual: Any = tiny_bundle.visual
    layers = (1, 2, 3, 4)
    with torch.no_grad():
        expected = _slow_levels(visual, tiny_images, layers, vv_start=2, residual=residual)

        # when
        encoded = encode_dual_stream(
            visual, tiny_images, feature_layers=layers, vv_start=2, vv_residual=residual
        )

    # then
    assert len(encoded.levels) == 4
    for got, want in zip(encoded.levels, expected, strict=True):
        assert got.shape == (3, 25, 32)
        torch.testing.assert_close(got, want, rtol=1e-4, atol=1e-5)


# The final block (4) runs for the CLS token only as a V-V block, as a plain block, and in
# full where its main-stream patch tokens are a level.
@pytest.mark.parametrize(
    ("layers", "vv_start"), [((1, 2, 3, 4), 2), ((1, 2), 2), ((1, 2), 5), ((1, 2, 3, 4), 5)]
)
def test_main_stream_cls_equals_stock_image_embedding(
    tiny_bundle: ClipBundle, tiny_images: Tensor, layers: tuple[int, ...], vv_start: int
) -> None:
    # given
    with torch.no_grad():
        stock = cast(Any, tiny_bundle.model).encode_image(tiny_images)

        # when
        encoded = encode_dual_stream(
            tiny_bundle.visual, tiny_images, feature_layers=layers, vv_start=vv_start
        )

    # then
    torch.testing.assert_close(encoded.cls, stock, rtol=1e-4, atol=1e-5)


@pytest.mark.parametrize(("layers", "vv_start"), [((1, 2), 3), ((1, 2, 3, 4), 5)])
def test_levels_before_the_first_vv_block_are_plain_intermediates(
    tiny_bundle: ClipBundle, tiny_images: Tensor, layers: tuple[int, ...], vv_start: int
) -> None:
    # given (the second case collects the final block's own patch tokens)
    visual: Any = tiny_bundle.visual
    with torch.no_grad():
        stock = visual.forward_intermediates(
            tiny_images,
            indices=[i - 1 for i in layers],
            normalize_intermediates=True,
            output_fmt="NLC",
        )["image_intermediates"]

        # when
        encoded = encode_dual_stream(visual, tiny_images, feature_layers=layers, vv_start=vv_start)

    # then
    for got, plain in zip(encoded.levels, stock, strict=True):
        torch.testing.assert_close(got, plain @ visual.proj, rtol=1e-4, atol=1e-5)


def test_the_vv_level_differs_from_the_main_stream(
    tiny_bundle: ClipBundle, tiny_images: Tensor
) -> None:
    # given
    visual = tiny_bundle.visual
    with torch.no_grad():
        # when
        with_vv = encode_dual_stream(visual, tiny_images, feature_layers=(2,), vv_start=2)
        without = encode_dual_stream(visual, tiny_images, feature_layers=(2,), vv_start=5)

    # then
    assert not torch.allclose(with_vv.levels[0], without.levels[0], atol=1e-3)


def test_normal_path_of_dual_attention_honours_an_attention_mask() -> None:
    # given
    torch.manual_seed(0)
    block = ResidualAttentionBlock(16, 2).eval()
    h = torch.randn(2, 5, 16)
    mask = torch.triu(torch.ones(5, 5, dtype=torch.bool), diagonal=1)

    # when
    with torch.no_grad():
        normal, _ = dual_attention(block, h, attn_mask=mask)
        expected = block.attn(h, h, h, attn_mask=mask, need_weights=False)[0]

    # then
    torch.testing.assert_close(normal, expected, rtol=1e-4, atol=1e-5)


@pytest.mark.parametrize("masked", [False, True])
def test_cls_only_dual_attention_is_the_cls_row_of_the_full_one(masked: bool) -> None:
    # given
    torch.manual_seed(0)
    block = ResidualAttentionBlock(16, 2).eval()
    h = torch.randn(2, 5, 16)
    mask = torch.triu(torch.ones(5, 5, dtype=torch.bool), diagonal=1) if masked else None

    # when
    with torch.no_grad():
        normal, vv = dual_attention(block, h, attn_mask=mask)
        cls_normal, cls_vv = dual_attention(block, h, attn_mask=mask, cls_only=True)

    # then
    assert cls_normal.shape == (2, 1, 16)
    torch.testing.assert_close(cls_normal, normal[:, :1], rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(cls_vv, vv, rtol=1e-5, atol=1e-6)


def test_official_levels_of_one_stream_are_one_tensor(
    tiny_bundle: ClipBundle, tiny_images: Tensor
) -> None:
    # when
    with torch.no_grad():
        levels = encode_dual_stream(
            tiny_bundle.visual,
            tiny_images,
            feature_layers=(1, 2, 3, 4),
            vv_start=2,
            level_mode="official",
        ).levels

    # then levels 2..4 alias the final V-V stream (agssp-spec §6.2), projected once
    assert levels[1] is levels[3]
    assert levels[2] is levels[3]
    assert levels[0] is not levels[3]


def test_sequence_first_blocks_are_run_in_their_own_layout() -> None:
    # given
    torch.manual_seed(0)
    batch_first = ResidualAttentionBlock(16, 2, batch_first=True).eval()
    seq_first = ResidualAttentionBlock(16, 2, batch_first=False).eval()
    seq_first.load_state_dict(batch_first.state_dict())
    x = torch.randn(3, 7, 16)

    # when
    with torch.no_grad():
        got = run_block(seq_first, x, batch_first=False)
        want = run_block(batch_first, x, batch_first=True)

    # then
    torch.testing.assert_close(got, want, rtol=1e-4, atol=1e-5)


@pytest.mark.parametrize(
    ("layers", "expected"),
    [(12, (3, 6, 9, 12)), (24, (6, 12, 18, 24)), (32, (8, 16, 24, 32)), (4, (1, 2, 3, 4))],
)
def test_default_feature_layers_are_evenly_spaced(layers: int, expected: tuple[int, ...]) -> None:
    # given / when
    result = default_feature_layers(layers)

    # then
    assert result == expected


@pytest.mark.parametrize(("layers", "start"), [((3, 6, 9, 12), 4), ((8, 16, 24, 32), 9)])
def test_vv_starts_after_the_first_feature_layer(layers: tuple[int, ...], start: int) -> None:
    # given / when
    result = default_vv_start(layers)

    # then
    assert result == start
