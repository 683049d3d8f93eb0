"""Value types shared by every detector: NMS parameters, per-image detections, the protocol."""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Protocol

import numpy as np
from numpy.typing import ArrayLike, DTypeLike, NDArray

from shared.errors import InvalidInputError

# An RGB uint8 image (H, W, 3); a grey (H, W) image is also accepted and replicated to 3 channels.
Image = NDArray[np.uint8]


@dataclass(frozen=True)
class DetectParams:
    """Post-processing knobs, named and defaulted as in ultralytics' ``predict``.

    Attributes:
        conf: Keep boxes whose best class score is strictly greater than this.
        iou: NMS suppresses a box whose IoU with a kept box is strictly greater than this.
        max_det: Most detections kept per image.
        agnostic: One NMS over all classes instead of one per class.
        classes: Keep only these class ids (applied to each box's best class), or all.
        max_nms: Most candidates (highest scores first) that enter NMS.
        max_wh: Per-class coordinate offset that separates classes in one NMS call.
    """

    conf: float = 0.25
    iou: float = 0.7
    max_det: int = 300
    agnostic: bool = False
    classes: tuple[int, ...] | None = None
    max_nms: int = 30000
    max_wh: int = 7680

    def __post_init__(self) -> None:
        if not 0.0 <= self.conf <= 1.0:
            raise InvalidInputError(f"conf must be in [0, 1], got {self.conf}")
        if not 0.0 <= self.iou <= 1.0:
            raise InvalidInputError(f"iou must be in [0, 1], got {self.iou}")
        if self.max_det < 1 or self.max_nms < 1:
            raise InvalidInputError(
                f"max_det and max_nms must be >= 1, got {self.max_det} and {self.max_nms}"
            )
        if self.classes is not None and any(c < 0 for c in self.classes):
            raise InvalidInputError(f"class ids must be >= 0, got {self.classes}")


def _frozen(array: ArrayLike, dtype: DTypeLike, shape_tail: tuple[int, ...]) -> NDArray[Any]:
    out = np.array(array, dtype=dtype, copy=True)
    if out.ndim != 1 + len(shape_tail) or out.shape[1:] != shape_tail:
        raise ValueError(f"expected shape (N, {shape_tail}), got {out.shape}")
    out.setflags(write=False)
    return out


@dataclass(frozen=True)
class Detections:
    """Detections of one image, in that image's pixel coordinates, best score first.

    Arrays are copies and read-only, so a ``Detections`` can be shared between threads.

    Attributes:
        boxes: (N, 4) float32 ``x1, y1, x2, y2`` in pixels, clipped to the image.
        scores: (N,) float32 confidence of the predicted class.
        class_ids: (N,) int64 class index into the detector's ``names``.
        image_hw: (height, width) of the image the boxes refer to.
    """

    boxes: NDArray[np.float32]
    scores: NDArray[np.float32]
    class_ids: NDArray[np.int64]
    image_hw: tuple[int, int]

    def __post_init__(self) -> None:
        object.__setattr__(self, "boxes", _frozen(self.boxes, np.float32, (4,)))
        object.__setattr__(self, "scores", _frozen(self.scores, np.float32, ()))
        object.__setattr__(self, "class_ids", _frozen(self.class_ids, np.int64, ()))
        n = len(self.boxes)
        if len(self.scores) != n or len(self.class_ids) != n:
            raise ValueError(
                f"boxes, scores and class_ids disagree on N: "
                f"{n}, {len(self.scores)}, {len(self.class_ids)}"
            )

    def __len__(self) -> int:
        return len(self.boxes)

    @classmethod
    def empty(cls, image_hw: tuple[int, int]) -> Detections:
        """No detections for an image of size ``image_hw``."""
        return cls(
            np.zeros((0, 4), np.float32), np.zeros(0, np.float32), np.zeros(0, np.int64), image_hw
        )

    def normalized_boxes(self) -> NDArray[np.float32]:
        """Boxes divided by the image size.

        Returns:
            (N, 4) float32 ``x1, y1, x2, y2`` in [0, 1].
        """
        h, w = self.image_hw
        scale = np.array([w, h, w, h], dtype=np.float32)
        return (self.boxes / scale).astype(np.float32)


class Detector(Protocol):
    """What the inference service needs from a detector (ONNX Runtime or ultralytics)."""

    @property
    def names(self) -> Mapping[int, str]:
        """Class id to class name."""
        ...

    def detect(
        self, images: Sequence[Image], params: DetectParams | Sequence[DetectParams] = ...
    ) -> list[Detections]:
        """Detect objects in RGB images; one ``params`` for all or one per image."""
        ...


@dataclass(frozen=True)
class DetectionRequest:
    """One image and its post-processing parameters, the unit a batcher queues."""

    image: Image
    params: DetectParams = field(default_factory=DetectParams)


def batch_runner(detector: Detector) -> Callable[[Sequence[DetectionRequest]], list[Detections]]:
    """Adapt a detector to the batch function ``DynamicBatcher`` calls.

    Args:
        detector: Called only from the batcher's worker thread.

    Returns:
        A function mapping B requests to B ``Detections`` in the same order.
    """

    def run(requests: Sequence[DetectionRequest]) -> list[Detections]:
        return detector.detect([r.image for r in requests], [r.params for r in requests])

    return run


def params_per_image(
    params: DetectParams | Sequence[DetectParams], n_images: int
) -> list[DetectParams]:
    """Expand one ``DetectParams`` to ``n_images`` copies, or check a per-image list."""
    if isinstance(params, DetectParams):
        return [params] * n_images
    if len(params) != n_images:
        raise InvalidInputError(f"got {len(params)} DetectParams for {n_images} images")
    return list(params)


def as_rgb(image: Image) -> Image:
    """Check an image and return it as (H, W, 3) uint8, replicating a grey (H, W) image."""
    if not isinstance(image, np.ndarray) or image.dtype != np.uint8:
        kind = getattr(image, "dtype", type(image).__name__)
        raise InvalidInputError(f"images must be uint8 numpy arrays, got {kind}")
    if image.ndim == 2 or (image.ndim == 3 and image.shape[2] == 1):
        image = np.repeat(image.reshape(image.shape[0], image.shape[1], 1), 3, axis=2)
    if image.ndim != 3 or image.shape[2] != 3 or image.shape[0] < 1 or image.shape[1] < 1:
        raise InvalidInputError(f"images must be (H, W, 3) RGB or (H, W) grey, got {image.shape}")
    return image
