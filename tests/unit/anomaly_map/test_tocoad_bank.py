"""ToCoAD memory bank: coreset, nearest-neighbour distances, anomaly maps (tocoad-spec §7)."""

from __future__ import annotations

from collections.abc import Iterator

import numpy as np
import pytest
import torch

from services.anomaly_map.ml.tocoad.backbone import create_backbone
from services.anomaly_map.ml.tocoad.bank import (
    anomaly_maps,
    greedy_coreset,
    nearest_distances,
    patch_embeddings,
)
from services.anomaly_map.ml.tocoad.data import normalise, to_unit_tensor
from services.anomaly_map.ml.tocoad.model import TocoadModel, build_memory_bank
from services.anomaly_map.params.tocoad import TocoadConfig

S = 64


@pytest.fixture(autouse=True, scope="module")
def _single_thread() -> Iterator[None]:
    # 2 shared cores: oversubscribed intra-op threads made these tests ~5x slower.
    previous = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(previous)


def _texture_images(count: int, seed: int) -> np.ndarray:
    rng = np.random.default_rng(seed)
    xs = np.arange(S)[None, :, None]
    stripes = 120 + 60 * np.sin(2 * np.pi * xs / 8.0)
    noise = rng.normal(0, 6, size=(count, S, S, 3))
    return np.asarray(np.clip(stripes + noise, 0, 255), dtype=np.uint8)


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_coreset_picks_the_points_farthest_from_the_rest(seed: int) -> None:
    # given: a tight cluster at the origin and three far outliers
    rng = np.random.default_rng(seed)
    cluster = rng.normal(0, 0.01, size=(20, 2))
    outliers = np.array([[10.0, 0.0], [0.0, 10.0], [-10.0, -10.0]])
    points = torch.from_numpy(np.concatenate([cluster, outliers])).float()

    # when
    chosen = greedy_coreset(points, 3, seed=seed)

    # then
    assert sorted(chosen.tolist()) == [20, 21, 22]


def test_coreset_keeps_everything_when_asked_for_more_points_than_exist() -> None:
    # given
    points = torch.randn(5, 4)

    # when
    chosen = greedy_coreset(points, 10)

    # then
    assert chosen.tolist() == [0, 1, 2, 3, 4]


def test_nearest_distance_is_exactly_zero_for_bank_members_and_exact_otherwise() -> None:
    # given
    torch.manual_seed(0)
    bank = torch.randn(50, 16) * 10
    queries = torch.cat([bank[:5], bank[5:6] + 1.0])

    # when
    dist = nearest_distances(queries, bank)

    # then
    assert dist[:5].tolist() == [0.0] * 5
    assert dist[5].item() == pytest.approx(4.0, rel=1e-5)  # |(1, ..., 1)| in 16-d


def test_patch_embeddings_lie_on_the_first_layers_grid() -> None:
    # given
    feats = {"layer2": torch.randn(2, 32, 8, 8), "layer3": torch.randn(2, 64, 4, 4)}

    # when
    emb = patch_embeddings(feats, ("layer2", "layer3"), patch_size=3, embed_dim=48)

    # then
    assert emb.shape == (2, 8, 8, 48)


def test_anomaly_maps_are_upsampled_and_smoothed() -> None:
    # given: one hot patch
    scores = torch.zeros(1, 8, 8)
    scores[0, 4, 4] = 1.0

    # when
    raw = anomaly_maps(scores, S, sigma=0.0)
    smooth = anomaly_maps(scores, S, sigma=4.0)

    # then
    assert raw.shape == smooth.shape == (1, S, S)
    assert smooth.dtype == np.float32
    assert smooth.max() < raw.max()
    assert smooth.sum() == pytest.approx(raw.sum(), rel=1e-2)


def _bank_model(normals: np.ndarray) -> TocoadModel:
    torch.manual_seed(0)
    cfg = TocoadConfig.model_validate(
        {"image_size": S, "backbone": "resnet18_quarter", "bank": {"coreset_ratio": 1.0}}
    )
    backbone = create_backbone(cfg.backbone).eval()
    bank = build_memory_bank(backbone, normals, cfg, torch.device("cpu"))
    return TocoadModel(cfg, backbone, bank)


def test_training_images_score_zero_without_subsampling() -> None:
    # given
    normals = _texture_images(3, seed=0)
    model = _bank_model(normals)

    # when
    maps, scores = model.score(normalise(to_unit_tensor(normals, torch.device("cpu"))))

    # then
    assert maps.shape == (3, S, S)
    assert np.abs(maps).max() == 0.0
    assert scores.tolist() == [0.0, 0.0, 0.0]


def test_perturbed_image_scores_above_the_training_images() -> None:
    # given
    normals = _texture_images(3, seed=0)
    model = _bank_model(normals)
    perturbed = normals[:1].copy()
    perturbed[0, 24:40, 24:40] = (20, 220, 40)

    # when
    maps, scores = model.score(list(perturbed))

    # then
    assert scores[0] > 0.0
    assert maps[0, 24:40, 24:40].mean() > maps[0, :8, :8].mean()
