"""AGDP and finetuning runs on ultralytics (agssp-spec §5.2-5.4), reporting through TrainHooks.

The start weights reach the trainer through an ultralytics checkpoint file (``seed.pt``),
the supported path that survives ``train()`` (field-notes §B2); ``on_train_start`` then
checks that every tensor really arrived.
"""

from __future__ import annotations

import logging
import math
import time
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from services.finetune.ml.config import AgdpConfig, DetectorTrainConfig, FinetuneConfig
from services.finetune.ml.materialize import YoloDataFolder
from services.finetune.ml.yolov8.checkpoint import DetectorCheckpoint
from services.finetune.ml.yolov8.detector import (
    BackboneInit,
    Detector,
    DetectorInit,
    InitSpec,
    TransferReport,
    build_detector,
)
from services.finetune.ml.yolov8.offline import import_ultralytics
from shared.errors import InvalidInputError
from shared.ml.device import resolve_device
from shared.ml.hooks import TrainHooks
from shared.ml.threads import training_threads

log = logging.getLogger(__name__)
CANCEL_POLL_S = 2.0  # should_stop may read remote state: ask at most this often


@dataclass
class TrainResult:
    """What a run produced.

    Attributes:
        checkpoint: weights of ``best.pt`` (EMA) with metrics and the resolved config.
        best_pt / last_pt: ultralytics checkpoint files (``last_pt`` resumes the run).
        epochs_completed: epochs finished, counting those of a resumed run and a canceled
            (partial) epoch, which ultralytics records as done in ``last.pt``.
        canceled: ``hooks.should_stop`` ended the run early (``last_pt`` is still written).
        history: per-epoch metrics, as sent to ``hooks.on_progress``.
        transfer: how the start weights were loaded (None for a random start or a resume).
    """

    checkpoint: DetectorCheckpoint
    best_pt: Path
    last_pt: Path
    epochs_completed: int
    canceled: bool
    history: list[dict[str, float]] = field(default_factory=list)
    transfer: TransferReport | None = None


def train_agdp(
    backbone: BackboneInit,
    data: YoloDataFolder,
    work_dir: Path,
    config: AgdpConfig,
    hooks: TrainHooks | None = None,
) -> TrainResult:
    """Train the one-class AGDP detector on pseudo boxes from an AGBP backbone (§5.2).

    The backbone is frozen by ``config.freeze`` (10 = all of it, BN statistics included);
    neck and head start from random init. The returned checkpoint keeps all three.
    ``hooks.resume_state = {"path": <last.pt>}`` continues an interrupted run instead.

    Raises:
        InvalidInputError: ``data`` has more than one class, or the backbone transfer
            loaded less than ``backbone.min_fraction``.
    """
    hooks = hooks or TrainHooks()
    if len(data.classes) != 1:
        raise InvalidInputError(f"AGDP trains one class, the data has {list(data.classes)}")
    if hooks.resume_state and hooks.resume_state.get("path"):
        return resume_training(Path(hooks.resume_state["path"]), data, work_dir, config, hooks)
    detector = build_detector(config.scale, 1, backbone, data.classes, seed=config.seed)
    return run_training(detector, data, work_dir, config, hooks)


def finetune(
    init: InitSpec,
    data: YoloDataFolder,
    work_dir: Path,
    config: FinetuneConfig,
    hooks: TrainHooks | None = None,
) -> TrainResult:
    """Finetune on the target classes from ``init`` (usually an AGDP checkpoint, §5.3).

    Every tensor whose name and shape match is copied; with a different class count only
    the class-logit convs keep their fresh init. When ``hooks.resume_state`` holds
    ``{"path": <last.pt>}`` the interrupted run continues instead (``init`` is ignored).
    """
    hooks = hooks or TrainHooks()
    if isinstance(init, DetectorInit) and init.checkpoint.scale != config.scale:
        raise InvalidInputError(
            f"checkpoint is YOLOv8-{init.checkpoint.scale}, config asks for {config.scale}"
        )
    if hooks.resume_state and hooks.resume_state.get("path"):
        return resume_training(Path(hooks.resume_state["path"]), data, work_dir, config, hooks)
    detector = build_detector(config.scale, len(data.classes), init, data.classes, seed=config.seed)
    if detector.report is not None:
        log.info("finetune start weights: %s", detector.report.summary())
    return run_training(detector, data, work_dir, config, hooks)


def run_training(
    detector: Detector,
    data: YoloDataFolder,
    work_dir: Path,
    config: DetectorTrainConfig,
    hooks: TrainHooks,
) -> TrainResult:
    """Train ``detector`` on ``data`` with ultralytics; outputs go to ``work_dir/run``."""
    from ultralytics.models import YOLO

    if len(detector.classes) != len(data.classes):
        raise InvalidInputError(
            f"detector has {len(detector.classes)} classes, data {data.classes}"
        )
    work_dir.mkdir(parents=True, exist_ok=True)
    yolo = YOLO(str(_write_seed_checkpoint(detector, work_dir / "seed.pt")), task="detect")
    expected = {k: v.detach().cpu().clone() for k, v in detector.model.state_dict().items()}
    result = _fit(yolo, data, work_dir, config, hooks, resume=None, expected=expected)
    result.transfer = detector.report
    return result


def resume_training(
    last_pt: Path,
    data: YoloDataFolder,
    work_dir: Path,
    config: DetectorTrainConfig,
    hooks: TrainHooks,
) -> TrainResult:
    """Continue an interrupted run from its ``last.pt`` (optimiser, epoch and EMA restored).

    Only device, workers, batch, imgsz and patience of ``config`` apply; the rest comes
    from the checkpoint, as ultralytics decides.
    """
    from ultralytics.models import YOLO

    if not last_pt.is_file():
        raise InvalidInputError(f"resume checkpoint {last_pt} does not exist")
    yolo = YOLO(str(last_pt), task="detect")
    return _fit(yolo, data, work_dir, config, hooks, resume=last_pt, expected=None)


def _fit(
    yolo: Any,
    data: YoloDataFolder,
    work_dir: Path,
    config: DetectorTrainConfig,
    hooks: TrainHooks,
    resume: Path | None,
    expected: Mapping[str, torch.Tensor] | None,
) -> TrainResult:
    from services.finetune.ml.yolov8.trainer import trainer_class, use_training_threads

    use_training_threads(training_threads())
    bridge = _HookBridge(hooks, config, expected)
    for event in ("on_train_start", "on_train_batch_end", "on_fit_epoch_end", "on_model_save"):
        yolo.add_callback(event, getattr(bridge, event))
    args = config.ultralytics_args(_ultralytics_device(config.device))
    if resume is not None:
        args["resume"] = str(resume)
    yolo.train(
        trainer=trainer_class(config.select_metric, config.val_every),
        data=str(data.data_yaml),
        save_dir=str(work_dir / "run"),
        **args,
    )
    trainer = yolo.trainer
    best_pt, last_pt = Path(trainer.best), Path(trainer.last)
    checkpoint = _read_result(best_pt if best_pt.exists() else last_pt, data, config)
    checkpoint.metrics = bridge.final_metrics or dict(bridge.history[-1] if bridge.history else {})
    return TrainResult(
        checkpoint=checkpoint,
        best_pt=best_pt,
        last_pt=last_pt,
        epochs_completed=bridge.epochs_done,
        canceled=bridge.canceled,
        history=bridge.history,
    )


class _HookBridge:
    """ultralytics callbacks -> TrainHooks (progress, cancel, checkpoints, start check)."""

    def __init__(
        self,
        hooks: TrainHooks,
        config: DetectorTrainConfig,
        expected: Mapping[str, torch.Tensor] | None,
    ) -> None:
        self.hooks, self.config, self.expected = hooks, config, expected
        self.history: list[dict[str, float]] = []
        self.final_metrics: dict[str, float] = {}
        self.canceled = False
        self.epochs_done = 0
        self._next_poll = 0.0

    def on_train_start(self, trainer: Any) -> None:
        if self.expected is not None:
            _check_start_weights(trainer.model, self.expected)

    def on_train_batch_end(self, trainer: Any) -> None:
        now = time.monotonic()
        if now < self._next_poll:
            return
        self._next_poll = now + CANCEL_POLL_S
        if self.hooks.should_stop():
            self.canceled = trainer.canceled = True
            trainer.stop = True  # the loop breaks after this callback (field-notes §B2)

    def on_fit_epoch_end(self, trainer: Any) -> None:
        metrics = _epoch_metrics(trainer)
        if trainer.epoch + 1 > trainer.epochs:  # final_eval() re-validates best.pt
            metrics = {k: v for k, v in metrics.items() if k in _VAL_METRICS}
            self.final_metrics = metrics
            self.hooks.on_progress(100.0, "final evaluation of best.pt", metrics)
            return
        self.epochs_done = trainer.epoch + 1
        self.history.append(metrics)
        percent = 100.0 * self.epochs_done / trainer.epochs
        state = "canceled" if self.canceled else "done"
        self.hooks.on_progress(
            percent, f"epoch {self.epochs_done}/{trainer.epochs} {state}", metrics
        )

    def on_model_save(self, trainer: Any) -> None:
        self.hooks.on_checkpoint(
            {
                "kind": "ultralytics-last-pt",
                "path": str(trainer.last),
                "epoch": trainer.epoch + 1,
                "config": self.config.model_dump(mode="json"),
            }
        )


_VAL_METRICS = {
    "map50": "metrics/mAP50(B)",
    "map50_95": "metrics/mAP50-95(B)",
    "precision": "metrics/precision(B)",
    "recall": "metrics/recall(B)",
}


def _epoch_metrics(trainer: Any) -> dict[str, float]:
    losses = trainer.label_loss_items(trainer.tloss, prefix="train") if trainer.tloss else {}
    val = trainer.metrics or {}
    metrics = {key.split("/", 1)[1]: float(value) for key, value in losses.items()}
    measured = {ours: float(val[theirs]) for ours, theirs in _VAL_METRICS.items() if theirs in val}
    # an epoch that val_every skipped carries NaN (trainer_class): not measured, not reported
    metrics.update({k: v for k, v in measured.items() if math.isfinite(v)})
    metrics["epoch"] = float(trainer.epoch + 1)
    return metrics


def _check_start_weights(model: torch.nn.Module, expected: Mapping[str, torch.Tensor]) -> None:
    # Guards against ultralytics rebuilding the network from cfg and silently dropping the
    # start weights (field-notes §0.3, ultralytics #8811).
    actual = model.state_dict()
    same = sum(
        1 for k, v in expected.items() if k in actual and torch.equal(actual[k].detach().cpu(), v)
    )
    if same != len(expected):
        raise InvalidInputError(
            f"only {same}/{len(expected)} start tensors reached the trainer",
            code="weight_transfer_failed",
        )


def _write_seed_checkpoint(detector: Detector, path: Path) -> Path:
    # ultralytics' checkpoint layout: load_checkpoint() takes "model" when "ema" is absent.
    torch.save({"model": detector.model, "train_args": {}, "epoch": -1}, path)
    return path


def _read_result(pt: Path, data: YoloDataFolder, config: DetectorTrainConfig) -> DetectorCheckpoint:
    module, _ = import_ultralytics("ultralytics.nn.tasks").load_checkpoint(pt)
    state = {k: v.detach().float().cpu().clone() for k, v in module.state_dict().items()}
    scale = getattr(module, "yaml", {}).get("scale", config.scale)  # a resume may differ
    return DetectorCheckpoint(
        scale=scale,
        classes=tuple(data.classes),
        state_dict=state,
        config=config.model_dump(mode="json"),
    )


def _ultralytics_device(name: str) -> str:
    device = resolve_device(name)
    if device.type == "cuda":
        return str(device.index or 0)
    return device.type
