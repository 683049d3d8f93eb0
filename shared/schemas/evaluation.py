"""Seam: a detector's per-image validation records (finetune writes them, pipeline reads them).

A finetune (and AGDP) job publishes ``eval_per_image.json`` (:data:`PER_IMAGE_FILE`) in its
detector version, next to ``metrics.json``: for every validation image its ground-truth
counts per class and its scored detections with a true-positive flag at IoU 0.5, exactly as
COCOeval matched them (agssp-spec §5.4: COCO bbox mAP@0.5). That is enough to recompute
mAP@0.5 on any multiset of the images, and so to bootstrap the lift of one detector over
another on the same validation set (issue 21, item 5). Pure numpy and pydantic, no torch.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Literal, Self

import numpy as np
from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator

from shared.errors import InvalidInputError

PER_IMAGE_FILE = "eval_per_image.json"
# COCOeval's 101 recall thresholds 0.00, 0.01, .., 1.00 (agssp-spec §5.4).
RECALL_THRESHOLDS = np.linspace(0.0, 1.0, 101)
BOOTSTRAP_RESAMPLES = 1000
_CHUNK_CELLS = 4_000_000  # resample x detection cells per numpy block (~32 MB of float64)


class RunInfo(BaseModel):
    """What a training run needs to be repeated bit for bit on the same machine."""

    model_config = ConfigDict(extra="allow")

    seed: int = Field(ge=0, description="seed of torch, numpy, random and the data order")
    deterministic: bool = Field(description="torch deterministic algorithms were requested")
    torch_threads: int = Field(ge=1, description="torch intra-op threads the run trained with")
    device: str = Field(description="the device it trained on (cpu, cuda:0, ..)")


class ImageEval(BaseModel):
    """One validation image: ground truth that counts, and its scored detections.

    ``dets`` holds ``(class id, score, true positive at IoU 0.5)``; detections COCOeval
    ignored (matched to a crowd/difficult box) are left out, and so are false positives that
    score below every true positive of their class in the whole set, which cannot change
    AP@0.5 on any resample (they always rank after the last true positive).
    """

    model_config = ConfigDict(extra="forbid", allow_inf_nan=False)

    file_name: str = Field(min_length=1)
    gt: list[int] = Field(description="ground-truth boxes per class id (ignored ones left out)")
    dets: list[tuple[int, float, bool]] = Field(default_factory=list)


class PerImageEval(BaseModel):
    """``eval_per_image.json``: the records of one evaluation, images in evaluation order."""

    model_config = ConfigDict(extra="forbid", allow_inf_nan=False)

    format: Literal["agssp-eval-per-image/1"] = "agssp-eval-per-image/1"
    classes: list[str] = Field(min_length=1)
    iou: float = Field(0.5, description="IoU threshold of the true-positive flags")
    max_dets: int = Field(100, ge=1, description="detections per image and class scored")
    images: list[ImageEval]
    run: RunInfo | None = Field(None, description="the training run that made the detector")

    @model_validator(mode="after")
    def _consistent(self) -> Self:
        k = len(self.classes)
        for image in self.images:
            if len(image.gt) != k or any(n < 0 for n in image.gt):
                raise ValueError(f"{image.file_name}: gt must hold {k} counts >= 0")
            if any(not 0 <= c < k for c, _, _ in image.dets):
                raise ValueError(f"{image.file_name}: a detection has a class id outside 0..{k}")
        return self

    def to_bytes(self) -> bytes:
        return self.model_dump_json(exclude_none=True).encode()

    @classmethod
    def from_bytes(cls, raw: bytes, key: str = PER_IMAGE_FILE) -> PerImageEval:
        """Parse the file; raises InvalidInputError (code ``bad_eval_records``) naming ``key``."""
        try:
            return cls.model_validate(json.loads(raw))
        except (ValueError, ValidationError) as exc:
            raise InvalidInputError(
                f"{key} is not a per-image evaluation: {exc}", code="bad_eval_records"
            ) from exc

    def map50(self, counts: Sequence[int] | None = None) -> float:
        """mAP@0.5 over the classes with ground truth, as COCOeval computes it.

        Args:
            counts: how often each image is in the sample (a bootstrap draw); default once.
        """
        weights = np.ones(len(self.images)) if counts is None else np.asarray(counts, float)
        return float(_ClassRanking.build(self).map50(weights.reshape(1, -1))[0])


def prune_detections(images: Sequence[ImageEval], num_classes: int) -> list[ImageEval]:
    """``images`` without the false positives that rank below every true positive of their
    class (or every detection of a class with no true positive): AP@0.5 stays exact."""
    floor = [np.inf] * num_classes
    for image in images:
        for c, score, tp in image.dets:
            if tp:
                floor[c] = min(floor[c], score)
    return [
        image.model_copy(update={"dets": [d for d in image.dets if d[2] or d[1] >= floor[d[0]]]})
        for image in images
    ]


@dataclass(frozen=True)
class _ClassRanking:
    """Per class: detections in COCOeval's global order, and ground truth per image."""

    image_of: list[np.ndarray]  # (D_k,) image index of each ranked detection
    tp: list[np.ndarray]  # (D_k,) 1.0 true positive, 0.0 false positive
    gt: np.ndarray  # (N, K) ground-truth counts

    @classmethod
    def build(cls, records: PerImageEval) -> _ClassRanking:
        k = len(records.classes)
        image_of: list[list[int]] = [[] for _ in range(k)]
        scores: list[list[float]] = [[] for _ in range(k)]
        tps: list[list[float]] = [[] for _ in range(k)]
        for i, image in enumerate(records.images):
            for c, score, tp in image.dets:
                image_of[c].append(i)
                scores[c].append(score)
                tps[c].append(float(tp))
        # COCOeval concatenates the images in order and sorts by score with a stable sort.
        orders = [np.argsort(-np.asarray(s, np.float64), kind="mergesort") for s in scores]
        gt = np.asarray([im.gt for im in records.images], np.float64).reshape(-1, k)
        return cls(
            image_of=[np.asarray(image_of[c], np.int64)[o] for c, o in enumerate(orders)],
            tp=[np.asarray(tps[c], np.float64)[o] for c, o in enumerate(orders)],
            gt=gt,
        )

    def map50(self, weights: np.ndarray) -> np.ndarray:
        """mAP@0.5 per row of ``weights`` (R, N): how often each image is in the sample."""
        num_gt = weights @ self.gt  # (R, K)
        aps = np.zeros_like(num_gt)
        for c in range(self.gt.shape[1]):
            aps[:, c] = _weighted_ap(self.tp[c], weights[:, self.image_of[c]], num_gt[:, c])
        scored = num_gt > 0  # a class without ground truth has no AP and is left out
        total = np.where(scored, aps, 0.0).sum(axis=1)
        count = scored.sum(axis=1)
        means: np.ndarray = np.divide(total, count, out=np.zeros_like(total), where=count > 0)
        return means


def _weighted_ap(tp: np.ndarray, det_weights: np.ndarray, num_gt: np.ndarray) -> np.ndarray:
    """COCOeval's 101-point interpolated AP for each row of detection weights.

    Args:
        tp: (D,) 1/0 flags of the ranked detections.
        det_weights: (R, D) copies of each detection in each sample (0 = not drawn).
        num_gt: (R,) ground-truth boxes in each sample.

    A detection drawn w times counts as w adjacent copies; COCOeval's precision envelope
    gives the same AP either way (ties aside).
    """
    rows = det_weights.shape[0]
    out = np.zeros(rows)
    if tp.size == 0:
        return out
    cum_tp = np.cumsum(det_weights * tp, axis=1)
    cum_fp = np.cumsum(det_weights * (1.0 - tp), axis=1)
    precision = cum_tp / (cum_tp + cum_fp + np.spacing(1))
    # precision envelope: the best precision at this rank or any later one
    envelope = np.maximum.accumulate(precision[:, ::-1], axis=1)[:, ::-1]
    for r in range(rows):
        if num_gt[r] <= 0:
            continue
        recall = cum_tp[r] / num_gt[r]
        index = np.searchsorted(recall, RECALL_THRESHOLDS, side="left")
        hit = index < tp.size
        out[r] = envelope[r, index[hit]].sum() / RECALL_THRESHOLDS.size
    return out


@dataclass(frozen=True)
class LiftInterval:
    """mAP@0.5 of two detectors on the same images, their difference and its interval.

    Attributes:
        ours, theirs: mAP@0.5 on the whole set (recomputed from the records).
        lift: ``ours - theirs``.
        low, high: the 2.5 and 97.5 percentiles of the paired bootstrap differences.
        images: validation images resampled.
        resamples: bootstrap resamples drawn.
        seed: seed of the resampling.
    """

    ours: float
    theirs: float
    lift: float
    low: float
    high: float
    images: int
    resamples: int
    seed: int

    @property
    def includes_zero(self) -> bool:
        """True when the interval cannot tell the two detectors apart."""
        return self.low <= 0.0 <= self.high


def bootstrap_lift(
    ours: PerImageEval,
    theirs: PerImageEval,
    resamples: int = BOOTSTRAP_RESAMPLES,
    seed: int = 0,
    level: float = 0.95,
) -> LiftInterval:
    """Paired percentile bootstrap of the mAP@0.5 difference over the validation images.

    Each resample draws the images with replacement and recomputes both detectors' mAP@0.5
    on that same multiset; the interval is the percentiles of the differences.

    Raises:
        InvalidInputError: the two evaluations cover other images or classes
            (``eval_mismatch``), or hold no image.
    """
    names = [im.file_name for im in ours.images]
    if names != [im.file_name for im in theirs.images] or ours.classes != theirs.classes:
        raise InvalidInputError(
            "the two evaluations cover different images or classes", code="eval_mismatch"
        )
    if not names:
        raise InvalidInputError("the evaluations hold no image", code="eval_mismatch")
    n = len(names)
    rankings = (_ClassRanking.build(ours), _ClassRanking.build(theirs))
    full = [float(r.map50(np.ones((1, n)))[0]) for r in rankings]
    rng = np.random.default_rng(seed)
    diffs = []
    widest = max([n, *(len(ranked) for r in rankings for ranked in r.image_of)])
    chunk = max(1, _CHUNK_CELLS // widest)
    for start in range(0, resamples, chunk):
        rows = min(chunk, resamples - start)
        draws = rng.integers(0, n, size=(rows, n))
        weights = np.stack([np.bincount(d, minlength=n) for d in draws]).astype(np.float64)
        diffs.append(rankings[0].map50(weights) - rankings[1].map50(weights))
    tail = 100 * (1 - level) / 2
    low, high = np.percentile(np.concatenate(diffs), [tail, 100 - tail])
    return LiftInterval(
        ours=full[0],
        theirs=full[1],
        lift=full[0] - full[1],
        low=float(low),
        high=float(high),
        images=n,
        resamples=resamples,
        seed=seed,
    )
