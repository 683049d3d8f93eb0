"""CPU training inside ultralytics uses the configured thread count, not its cpu_count - 1."""

from __future__ import annotations

import re
from collections.abc import Iterator, Mapping
from typing import Any

import pytest
import torch

from services.finetune.ml.config import AgdpConfig
from services.finetune.ml.dataset import to_single_class
from services.finetune.ml.materialize import materialize_yolo
from services.finetune.ml.splits import split_train_val
from services.finetune.ml.yolov8.detector import BackboneInit, build_detector
from services.finetune.ml.yolov8.offline import import_ultralytics
from services.finetune.ml.yolov8.train import train_agdp
from shared.ml import threads
from shared.ml.hooks import TrainHooks


@pytest.fixture
def restore_threads() -> Iterator[None]:
    torch_utils = import_ultralytics("ultralytics.utils.torch_utils")
    before = (torch.get_num_threads(), torch_utils.NUM_THREADS, threads._configured)
    yield
    torch.set_num_threads(before[0])
    torch_utils.NUM_THREADS = before[1]
    threads._configured = before[2]


def test_agdp_trainer_runs_on_the_configured_threads(
    make_dataset: Any, tmp_path: Any, restore_threads: None
) -> None:
    # given a count that differs from ultralytics' own choice (cpu_count - 1, at most 8)
    stock = int(import_ultralytics("ultralytics.utils").NUM_THREADS)
    wanted = stock + 1
    threads.configure_training_threads(wanted)
    dataset, images = make_dataset(n=6, classes=("rect",), size=64, seed=3)
    train, val = split_train_val(dataset, 0.34, seed=0)
    data = materialize_yolo(to_single_class(train), to_single_class(val), images, tmp_path / "d")
    seen: list[int] = []

    def on_progress(percent: float, message: str, metrics: Mapping[str, float]) -> None:
        seen.append(torch.get_num_threads())  # called from inside the ultralytics trainer

    config = AgdpConfig(epochs=1, scale="n", batch=4, imgsz=64, device="cpu", workers=0, seed=0)
    state = build_detector("n", 1, seed=1).model.state_dict()
    backbone = {k: v for k, v in state.items() if re.match(r"^model\.[0-9]\.", k)}
    # when
    train_agdp(
        BackboneInit(backbone),
        data,
        tmp_path / "run",
        config,
        TrainHooks(on_progress=on_progress),
    )
    # then
    assert seen
    assert set(seen) == {wanted}
