"""Pairing report, dataset items and the resumable sampler."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from services.pretrain.ml.augment import AugmentConfig
from services.pretrain.ml.data import AgbpDataset, PairSource, ResumableSampler
from services.pretrain.stores.maps import pair_by_stem
from shared.errors import InvalidInputError

AUGMENT = AugmentConfig(crop_size=32, resize_base=40)


def test_pairs_are_matched_by_stem_and_leftovers_reported() -> None:
    # given
    images = ["cat/images/a.jpg", "cat/images/b.png", "cat/images/c.jpg"]
    maps = ["maps/cat/a_anomaly.npy", "maps/cat/c_anomaly.npy", "maps/cat/d_anomaly.npy"]
    # when
    report = pair_by_stem(images, maps)
    # then
    assert report.matched == (
        ("cat/images/a.jpg", "maps/cat/a_anomaly.npy"),
        ("cat/images/c.jpg", "maps/cat/c_anomaly.npy"),
    )
    assert report.images_without_maps == ("cat/images/b.png",)
    assert report.maps_without_images == ("maps/cat/d_anomaly.npy",)
    assert not report.complete


def test_duplicate_stems_are_reported_and_not_paired() -> None:
    # when
    report = pair_by_stem(["x/a.jpg", "y/a.jpg"], ["m/a_anomaly.npy"])
    # then
    assert report.duplicate_stems == ("a",)
    assert report.matched == ()


def test_complete_pairing() -> None:
    assert pair_by_stem(["a.jpg"], ["a_anomaly.npy"]).complete


def test_dataset_item_shapes_and_types(tiny_source: PairSource) -> None:
    # given
    dataset = AgbpDataset(tiny_source, AUGMENT, seed=0)
    # when
    item = dataset[1]
    # then
    assert item["image"].shape == (3, 32, 32)
    assert item["image"].dtype == torch.uint8
    assert item["map"].shape == (1, 32, 32)
    assert item["map"].dtype == torch.float32
    assert item["label"].item() == 1
    assert "image2" not in item


def test_items_repeat_within_an_epoch_and_change_across_epochs(tiny_source: PairSource) -> None:
    # given
    dataset = AgbpDataset(tiny_source, AUGMENT, seed=0)
    # when
    first, again = dataset[0], dataset[0]
    dataset.set_epoch(1)
    other_epoch = dataset[0]
    # then
    assert torch.equal(first["image"], again["image"])
    assert not torch.equal(first["image"], other_epoch["image"])


def test_two_views_add_a_second_independent_image(tiny_source: PairSource) -> None:
    # given
    dataset = AgbpDataset(tiny_source, AUGMENT, seed=0, two_views=True)
    # when
    item = dataset[0]
    # then
    assert item["image2"].shape == item["image"].shape
    assert not torch.equal(item["image"], item["image2"])


def test_a_grey_image_is_refused_with_its_index() -> None:
    # given
    class GreySource:
        def __len__(self) -> int:
            return 1

        def __getitem__(self, index: int) -> tuple[np.ndarray, np.ndarray, int]:
            return np.zeros((8, 8), np.uint8), np.zeros((2, 2), np.float32), 0

    dataset = AgbpDataset(GreySource(), AUGMENT, seed=0)
    # when / then
    with pytest.raises(InvalidInputError, match="pair 0"):
        dataset[0]


def test_sampler_skip_continues_the_same_epoch_order(tiny_source: PairSource) -> None:
    # given
    dataset = AgbpDataset(tiny_source, AUGMENT, seed=0)
    sampler = ResumableSampler(dataset, num_replicas=1, rank=0, seed=5)
    sampler.start(epoch=3)
    full = list(sampler)
    # when
    sampler.start(epoch=3, skip=2)
    rest = list(sampler)
    # then
    assert sorted(full) == [0, 1, 2, 3]
    assert rest == full[2:]
    assert len(sampler) == 2
