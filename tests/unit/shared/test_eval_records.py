"""Per-image evaluation records: COCO AP@0.5 from them, lossless pruning, the paired bootstrap."""

from __future__ import annotations

import numpy as np
import pytest

from shared.errors import InvalidInputError
from shared.schemas.evaluation import (
    ImageEval,
    PerImageEval,
    RunInfo,
    bootstrap_lift,
    prune_detections,
)


def _records(images: list[ImageEval], classes: tuple[str, ...] = ("a",)) -> PerImageEval:
    return PerImageEval(classes=list(classes), images=images)


def _random_records(seed: int, n: int = 12, k: int = 2) -> PerImageEval:
    rng = np.random.default_rng(seed)
    images = []
    for i in range(n):
        gt = [int(v) for v in rng.integers(0, 3, k)]
        dets = [
            (int(rng.integers(0, k)), float(rng.random()), bool(rng.random() < 0.5))
            for _ in range(int(rng.integers(0, 5)))
        ]
        images.append(ImageEval(file_name=f"i{i}.png", gt=gt, dets=dets))
    return _records(images, tuple(f"c{c}" for c in range(k)))


def test_map50_follows_cocoeval_101_point_interpolation() -> None:
    # given 2 GT boxes and TP 0.9, FP 0.8, TP 0.7: precision 1 up to recall 0.5, then 2/3
    records = _records(
        [
            ImageEval(file_name="x.png", gt=[1], dets=[(0, 0.9, True), (0, 0.8, False)]),
            ImageEval(file_name="y.png", gt=[1], dets=[(0, 0.7, True)]),
        ]
    )
    # when / then: recall points 0.00..0.50 see 1, 0.51..1.00 see 2/3
    assert records.map50() == pytest.approx((51 + 50 * 2 / 3) / 101)


def test_classes_without_ground_truth_are_left_out_of_the_mean() -> None:
    # given class b has detections but no ground truth
    image = ImageEval(file_name="x.png", gt=[1, 0], dets=[(0, 0.9, True), (1, 0.95, False)])
    # when / then
    assert _records([image], ("a", "b")).map50() == pytest.approx(1.0)


def test_pruned_records_give_the_same_ap_on_every_resample() -> None:
    # given records with low-scoring false positives that can never rank above a TP
    records = _random_records(seed=3, n=15)
    pruned = records.model_copy(update={"images": prune_detections(records.images, 2)})
    # when / then: the same AP on the full set and on resamples (the bootstrap sees both)
    assert sum(len(im.dets) for im in pruned.images) < sum(len(im.dets) for im in records.images)
    assert pruned.map50() == pytest.approx(records.map50(), abs=1e-12)
    a = bootstrap_lift(records, _random_records(seed=4, n=15), resamples=50, seed=1)
    b = bootstrap_lift(pruned, _random_records(seed=4, n=15), resamples=50, seed=1)
    assert (a.low, a.high) == pytest.approx((b.low, b.high), abs=1e-12)


def test_a_resample_counts_a_drawn_twice_image_twice() -> None:
    # given records, and the same records with image 0 written out twice
    records = _random_records(seed=5, n=6)
    doubled = _records([records.images[0], *records.images], tuple(records.classes))
    # when image 0 is counted twice (the bootstrap's weighted path)
    weighted = records.map50(counts=[2, 1, 1, 1, 1, 1])
    # then
    assert weighted == pytest.approx(doubled.map50(), abs=1e-12)
    identical = bootstrap_lift(records, records, resamples=10)
    assert (identical.low, identical.high, identical.lift) == (0.0, 0.0, 0.0)


def test_bootstrap_sees_a_clear_lift_and_an_indistinguishable_one() -> None:
    # given 30 images with one defect each; ours finds every one, theirs scores FPs first
    names = [f"i{i}.png" for i in range(30)]
    ours = _records([ImageEval(file_name=n, gt=[1], dets=[(0, 0.9, True)]) for n in names])
    theirs = _records(
        [ImageEval(file_name=n, gt=[1], dets=[(0, 0.95, False), (0, 0.1, True)]) for n in names]
    )
    # when
    clear = bootstrap_lift(ours, theirs, resamples=200, seed=0)
    unclear = bootstrap_lift(_random_records(seed=7, n=30), _random_records(seed=8, n=30))
    # then
    assert clear.lift == pytest.approx(0.5)
    assert clear.low > 0
    assert not clear.includes_zero
    assert (clear.images, clear.resamples) == (30, 200)
    assert unclear.low <= unclear.lift <= unclear.high


def test_bootstrap_is_repeatable_and_refuses_other_images() -> None:
    # given
    a, b = _random_records(seed=1), _random_records(seed=2)
    # when / then: a fixed seed gives the same interval
    assert bootstrap_lift(a, b, resamples=30, seed=4) == bootstrap_lift(a, b, resamples=30, seed=4)
    other = _records([ImageEval(file_name="z.png", gt=[1])])
    with pytest.raises(InvalidInputError) as info:
        bootstrap_lift(a, other)
    assert info.value.code == "eval_mismatch"


def test_records_round_trip_and_bad_files_are_refused() -> None:
    # given
    records = _random_records(seed=9).model_copy(
        update={"run": RunInfo(seed=3, deterministic=True, torch_threads=2, device="cpu")}
    )
    # when
    back = PerImageEval.from_bytes(records.to_bytes())
    # then
    assert back == records
    with pytest.raises(InvalidInputError) as info:
        PerImageEval.from_bytes(b'{"classes": ["a"], "images": [{"file_name": "x", "gt": []}]}')
    assert info.value.code == "bad_eval_records"
