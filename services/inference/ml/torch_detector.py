"""YOLOv8 detection through ultralytics' own ``predict``, for trusted local ``.pt`` files only."""

from __future__ import annotations

import threading
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from services.inference.ml.detections import (
    Detections,
    DetectParams,
    Image,
    as_rgb,
    params_per_image,
)
from shared.errors import InvalidInputError
from shared.ml.device import resolve_device


class TorchDetector:
    """Same interface as ``OnnxDetector``, backed by ``ultralytics.YOLO(path).predict``.

    A ``.pt`` file is a pickle, and unpickling runs code: only load files this deployment
    produced itself (ONNX is the format for models fetched from storage). ultralytics'
    predictor is not thread-safe, so an instance refuses calls from a second thread; build
    one per thread (the batcher's single worker thread is the intended owner).

    Args:
        path: Local ultralytics checkpoint (``.pt``).
        allow_pickle: Must be True: the caller vouches that the file is trusted.
        device: ``auto``, ``cpu``, ``cuda`` or ``cuda:N`` (see ``shared.ml.device``).
        imgsz: Letterbox target side (or (height, width)), as ``predict``'s ``imgsz``.

    Raises:
        InvalidInputError: ``allow_pickle`` is False, or the file is missing.
    """

    def __init__(
        self,
        path: str | Path,
        *,
        allow_pickle: bool = False,
        device: str = "auto",
        imgsz: int | tuple[int, int] = 640,
    ) -> None:
        if not allow_pickle:
            raise InvalidInputError(
                f"refusing to unpickle {path}: .pt files can run code; pass allow_pickle=True "
                "only for files this deployment wrote, or serve an ONNX export"
            )
        if not Path(path).is_file():
            raise InvalidInputError(f"checkpoint {path} does not exist")
        # Heavy import, deferred until a model is really wanted.
        from ultralytics.models.yolo.model import YOLO

        self._model: Any = YOLO(str(path), task="detect")
        self._device = str(resolve_device(device))
        self._imgsz = imgsz
        self._owner: int | None = None

    @property
    def names(self) -> Mapping[int, str]:
        """Class id to class name."""
        return {int(k): str(v) for k, v in self._model.names.items()}

    def detect(
        self,
        images: Sequence[Image],
        params: DetectParams | Sequence[DetectParams] = DetectParams(),
    ) -> list[Detections]:
        """Detect objects in a batch of images.

        ``max_nms`` and ``max_wh`` are ultralytics' own defaults here (``predict`` does not
        expose them). Images run in groups of equal shape and parameters, so a result never
        depends on its batch-mates (``predict`` pads a same-shape list differently).

        Args:
            images: B RGB uint8 arrays (H, W, 3); (H, W) grey is replicated.
            params: One ``DetectParams`` for all images or one per image.

        Returns:
            B ``Detections`` in input order, boxes in each image's own pixels.
        """
        self._check_thread()
        per_image = params_per_image(params, len(images))
        rgb = [as_rgb(im) for im in images]
        groups: dict[tuple[Any, ...], list[int]] = {}
        for i, (im, p) in enumerate(zip(rgb, per_image, strict=True)):
            groups.setdefault((im.shape, p), []).append(i)
        results: list[Detections] = [Detections.empty((im.shape[0], im.shape[1])) for im in rgb]
        for (_, p), indices in groups.items():
            # ultralytics expects OpenCV's BGR order for numpy input.
            batch = [np.ascontiguousarray(rgb[i][..., ::-1]) for i in indices]
            for i, res in zip(indices, self._predict(batch, p), strict=True):
                results[i] = res
        return results

    def _predict(self, bgr: list[np.ndarray[Any, Any]], p: DetectParams) -> list[Detections]:
        results: list[Any] = self._model.predict(
            bgr,
            conf=p.conf,
            iou=p.iou,
            max_det=p.max_det,
            agnostic_nms=p.agnostic,
            classes=list(p.classes) if p.classes is not None else None,
            imgsz=self._imgsz,
            device=self._device,
            verbose=False,
        )
        out = []
        for r in results:
            boxes = r.boxes
            out.append(
                Detections(
                    boxes.xyxy.cpu().numpy(),
                    boxes.conf.cpu().numpy(),
                    boxes.cls.cpu().numpy().astype(np.int64),
                    (int(r.orig_shape[0]), int(r.orig_shape[1])),
                )
            )
        return out

    def _check_thread(self) -> None:
        me = threading.get_ident()
        if self._owner is None:
            self._owner = me
        elif self._owner != me:
            raise RuntimeError(
                "TorchDetector used from a second thread; ultralytics' predictor is not "
                "thread-safe: create one instance per thread"
            )
