"""ToCoAD networks: feature extractor F, discriminator D, SimSiam heads (tocoad-spec §4)."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest
import torch

from services.anomaly_map.ml.tocoad.backbone import create_backbone, load_backbone_weights
from services.anomaly_map.ml.tocoad.discriminator import Discriminator
from services.anomaly_map.ml.tocoad.heads import build_heads, get_head
from services.anomaly_map.ml.tocoad.losses import focal_loss
from shared.errors import InvalidInputError

S = 64


@pytest.fixture(autouse=True, scope="module")
def _single_thread() -> Iterator[None]:
    # 2 shared cores: oversubscribed intra-op threads made these tests ~5x slower.
    previous = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(previous)


@pytest.mark.parametrize(
    ("name", "channels"),
    [("resnet18_quarter", (16, 32, 64, 128)), ("resnet18", (64, 128, 256, 512))],
)
def test_feature_extractor_levels_have_strides_4_to_32(
    name: str, channels: tuple[int, ...]
) -> None:
    # given
    backbone = create_backbone(name).eval()

    # when
    with torch.no_grad():
        feats = backbone(torch.randn(2, 3, S, S))

    # then
    shapes = [tuple(feats[f"layer{i + 1}"].shape) for i in range(4)]
    assert shapes == [(2, c, S // s, S // s) for c, s in zip(channels, (4, 8, 16, 32), strict=True)]


def test_feature_extractor_stops_after_the_deepest_requested_layer() -> None:
    # given
    backbone = create_backbone("resnet18_quarter").eval()

    # when
    feats = backbone(torch.randn(1, 3, S, S), ("layer2",))

    # then
    assert list(feats) == ["layer2"]


def test_wrn50_parameters_use_torchvision_names_and_shapes() -> None:
    # given
    torchvision = pytest.importorskip("torchvision")
    with torch.device("meta"):  # shapes only: skips initialising 2 x 67 M parameters
        reference = torchvision.models.wide_resnet50_2(weights=None).state_dict()

    # when
    with torch.device("meta"):
        ours = create_backbone("wrn50").state_dict()

    # then
    expected = {k: tuple(v.shape) for k, v in reference.items() if not k.startswith("fc.")}
    assert {k: tuple(v.shape) for k, v in ours.items()} == expected


def test_torchvision_state_dict_file_loads_and_reproduces_its_features(tmp_path: Path) -> None:
    # given: a torchvision resnet18 with random weights saved as a plain state_dict
    torchvision = pytest.importorskip("torchvision")
    reference = torchvision.models.resnet18(weights=None).eval()
    path = tmp_path / "resnet18.pth"
    torch.save(reference.state_dict(), path)
    backbone = create_backbone("resnet18").eval()
    x = torch.randn(1, 3, S, S)

    # when
    load_backbone_weights(backbone, path)

    # then
    with torch.no_grad():
        trunk = torch.nn.Sequential(*list(reference.children())[:-2])
        torch.testing.assert_close(backbone(x, ("layer4",))["layer4"], trunk(x))


def test_weights_of_another_backbone_are_refused(tmp_path: Path) -> None:
    # given
    path = tmp_path / "quarter.pth"
    torch.save(create_backbone("resnet18_quarter").state_dict(), path)

    # when / then
    with pytest.raises(InvalidInputError, match="does not match"):
        load_backbone_weights(create_backbone("resnet18"), path)


@pytest.mark.parametrize("use_f2_skip", [False, True])
def test_discriminator_outputs_two_class_logits_at_input_size(use_f2_skip: bool) -> None:
    # given
    backbone = create_backbone("resnet18_quarter").eval()
    disc = Discriminator(backbone.channels, backbone.is_bottleneck, use_f2_skip).eval()

    # when
    with torch.no_grad():
        logits = disc(backbone(torch.randn(2, 3, S, S), disc.input_layers), S)

    # then
    assert logits.shape == (2, 2, S, S)


def test_wrn50_discriminator_mirrors_the_wide_channels() -> None:
    # given: meta tensors carry shapes without initialising or computing 26 M parameters
    with torch.device("meta"):
        backbone = create_backbone("wrn50")
        disc = Discriminator(backbone.channels, backbone.is_bottleneck).eval()
        feats = {"layer3": torch.randn(1, 1024, 4, 4), "layer4": torch.randn(1, 2048, 2, 2)}

    # when
    with torch.no_grad():
        logits = disc(feats, S)

    # then
    assert logits.shape == (1, 2, S, S)
    assert len(disc.stage_a) + len(disc.stage_b) + len(disc.stage_c) == 13


def test_frozen_discriminator_passes_gradient_to_the_backbone_only() -> None:
    # given: Stage II's mechanism A — D frozen, loss on D's output
    backbone = create_backbone("resnet18_quarter")
    disc = Discriminator(backbone.channels, backbone.is_bottleneck).eval().requires_grad_(False)
    mask = torch.zeros(2, S, S)
    mask[:, 10:30, 10:30] = 1.0

    # when
    logits = disc(backbone(torch.randn(2, 3, S, S), disc.input_layers), S)
    torch.autograd.backward(focal_loss(logits, mask))

    # then
    grad = dict(backbone.named_parameters())["layer4.0.conv1.weight"].grad
    assert grad is not None
    assert grad.abs().sum() > 0
    assert all(p.grad is None for p in disc.parameters())


def test_simsiam_heads_project_pooled_features_to_proj_dim() -> None:
    # given
    heads = build_heads({"layer3": 64, "layer4": 128}, ("layer3", "layer4"), 32, 8, 0.5)

    # when
    z, p = get_head(heads, "layer4")(torch.randn(4, 128))

    # then
    assert z.shape == p.shape == (4, 32)
