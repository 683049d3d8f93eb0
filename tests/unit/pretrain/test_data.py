"""Pairing report, dataset items and the resumable sampler."""

from __future__ import annotations

import pickle
from collections import Counter

import numpy as np
import pytest
import torch

from services.pretrain.ml.augment import AugmentConfig, joint_augment
from services.pretrain.ml.data import (
    AgbpDataset,
    DecodedPairCache,
    PairSource,
    ResumableSampler,
)
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


class CountingSource:
    """A ``TinyPairSource`` that counts the reads of every index."""

    def __init__(self, source: PairSource) -> None:
        self.source = source
        self.reads: Counter[int] = Counter()

    def __len__(self) -> int:
        return len(self.source)

    def __getitem__(self, index: int) -> tuple[np.ndarray, np.ndarray, int]:
        self.reads[index] += 1
        return self.source[index]


def test_the_decoded_cache_reads_each_pair_once_and_hands_out_read_only_arrays(
    tiny_source: PairSource,
) -> None:
    # given
    counting = CountingSource(tiny_source)
    cache = DecodedPairCache(counting, budget_bytes=1 << 20)
    # when
    first = [cache[i] for i in range(len(cache))]
    again = [cache[i] for i in range(len(cache))]
    # then
    assert counting.reads == dict.fromkeys(range(4), 1)
    for index, ((image, amap, _), kept) in enumerate(zip(first, again, strict=True)):
        assert kept[0] is image
        assert kept[1] is amap
        assert np.array_equal(image, tiny_source[index][0])
        assert not image.flags.writeable
        assert not amap.flags.writeable
        with pytest.raises(ValueError, match="read-only"):
            image[0, 0, 0] = 1
    assert tiny_source[0][0].flags.writeable  # the source's own arrays keep their flags


def test_pairs_over_the_budget_are_read_from_the_source_every_time(
    tiny_source: PairSource,
) -> None:
    # given: room for two pairs (48x48x3 uint8 + 4x4 float32 each)
    counting = CountingSource(tiny_source)
    pair_bytes = 48 * 48 * 3 + 4 * 4 * 4
    cache = DecodedPairCache(counting, budget_bytes=2 * pair_bytes)
    # when
    for _ in range(3):
        for index in range(len(cache)):
            cache[index]
    # then
    assert counting.reads == {0: 1, 1: 1, 2: 3, 3: 3}
    assert cache.used_bytes == 2 * pair_bytes


def test_a_pickled_cache_leaves_its_pairs_behind(tiny_source: PairSource) -> None:
    # given
    cache = DecodedPairCache(CountingSource(tiny_source), budget_bytes=1 << 20)
    cache[0]
    # when: what a DataLoader worker started by spawn receives
    copy = pickle.loads(pickle.dumps(cache))
    # then
    assert copy.used_bytes == 0
    assert copy.source.reads == {0: 1}
    copy[0]
    assert copy.source.reads == {0: 2}
    assert cache.used_bytes > 0


def test_item_images_are_the_augmented_view_channels_first(tiny_source: PairSource) -> None:
    # given
    dataset = AgbpDataset(tiny_source, AUGMENT, seed=0)
    image, amap, _ = tiny_source[2]
    view, _ = joint_augment(image, amap, np.random.default_rng((0, 0, 2)), AUGMENT)
    # when
    item = dataset[2]
    # then
    assert item["image"].is_contiguous()
    assert torch.equal(item["image"], torch.from_numpy(view).permute(2, 0, 1))
