"""Our subclass of ultralytics' DetectionTrainer: chosen fitness, quick cancel, offline AMP.

Imported lazily (it imports ultralytics); call ``configure_ultralytics_offline`` first.
"""

from __future__ import annotations

import functools
from typing import Any

import torch

from services.finetune.ml.yolov8.offline import import_ultralytics

trainer_module = import_ultralytics("ultralytics.engine.trainer")
_torch_utils = import_ultralytics("ultralytics.utils.torch_utils")
_DetectionTrainer: Any = import_ultralytics("ultralytics.models.yolo.detect").DetectionTrainer

# ultralytics' validator metric names for the two selectable fitness figures.
FITNESS_KEYS = {"map50": "metrics/mAP50(B)", "map50_95": "metrics/mAP50-95(B)"}


def _check_amp_offline(model: torch.nn.Module) -> bool:
    # The stock check runs yolo26n.pt (downloaded when absent) to compare FP16 with FP32;
    # offline that download fails. AMP only ever runs on CUDA, so keep it on there.
    device = next(model.parameters()).device
    return device.type == "cuda"


def use_training_threads(threads: int) -> None:
    """Make ultralytics train (and validate) on ``threads`` CPU threads.

    Its ``select_device`` calls ``torch.set_num_threads(NUM_THREADS)`` with its own module
    constant (``cpu_count - 1``, at most 8) whenever a trainer or validator picks the CPU; the
    constant is read at call time, so setting it here reaches every such call.
    """
    _torch_utils.NUM_THREADS = threads
    torch.set_num_threads(threads)


@functools.cache
def trainer_class(select_metric: str, val_every: int = 1) -> Any:
    """A ``DetectionTrainer`` subclass whose fitness is ``select_metric`` ("map50"/"map50_95").

    Fitness picks ``best.pt`` and drives early stopping. It validates every ``val_every``
    epochs, the last always (and whenever ultralytics is about to stop): a skipped epoch
    reports NaN metrics and no fitness, so it neither becomes ``best.pt`` nor counts
    towards early stopping, and ``results.csv`` keeps its columns. After a cooperative
    cancel (``trainer.canceled = True`` plus ``trainer.stop``) validation and the final
    evaluation are skipped so that the run ends right after writing ``last.pt``.
    """
    key = FITNESS_KEYS[select_metric]

    class AgsspDetectionTrainer(_DetectionTrainer):  # type: ignore[misc]
        canceled = False
        best_fitness: float | None  # set by the base class; annotated for the type checker

        def _setup_train(self) -> None:
            original = trainer_module.check_amp
            trainer_module.check_amp = _check_amp_offline
            try:
                super()._setup_train()
            finally:
                trainer_module.check_amp = original

        def _skips_validation(self) -> bool:
            done = self.epoch + 1
            due = done % val_every == 0 or done >= self.epochs
            return not (due or self.stop or self.stopper.possible_stop)

        def validate(self) -> tuple[dict[str, Any] | None, float | None]:
            if self.canceled:
                return {}, None
            if self._skips_validation():
                return {name: float("nan") for name in self.metrics or {}}, None
            metrics = self.validator(self)
            if metrics is None:
                return None, None
            metrics.pop("fitness", None)
            fitness = float(metrics.get(key, 0.0))
            if self.best_fitness is None or self.best_fitness < fitness:
                self.best_fitness = fitness
            return metrics, fitness

        def final_eval(self) -> None:
            if not self.canceled:
                super().final_eval()

    return AgsspDetectionTrainer
