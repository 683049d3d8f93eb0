"""The multi-GPU launcher's process plumbing, run with two CPU processes and gloo.

NCCL on several GPUs cannot run here; this checks the spawn, the queue back to the parent
(progress, checkpoint, result) and that both ranks train in step.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from services.pretrain.ml.ddp import train_agbp_ddp
from services.pretrain.params import AgbpConfig, SourceSpec
from services.pretrain.stores.maps import collect_pairs
from services.pretrain.stores.pairs import CachedPairSource, prefetch
from services.pretrain.stores.synthetic import write_synthetic_source
from shared.imaging.intake import ImageLimits
from shared.ml.hooks import TrainHooks
from shared.storage.filesystem import FileObjectStore

pytestmark = pytest.mark.timeout(240)


def test_two_gloo_processes_train_and_report_through_the_parent(tmp_path: Path) -> None:
    # given: 8 pairs in local files, 2 processes of batch 2 -> 2 steps per epoch
    store = FileObjectStore(tmp_path / "store")
    write_synthetic_source(
        store, images_prefix="img/", output_prefix="maps/", category="a", count=8, size=(64, 64)
    )
    spec = SourceSpec(category="a", images_prefix="img/", maps_prefix="maps/")
    data = CachedPairSource(collect_pairs(store, [spec]).pairs, tmp_path / "c", ImageLimits())
    prefetch(store, data, threads=2, on_progress=lambda d, t: None, should_stop=lambda: False)
    cfg = AgbpConfig(
        backbone="yolov8n",
        objective="distill",
        epochs=1,
        batch_size=2,
        input_size=64,
        resize_base=64,
        amp=False,
        checkpoint_every=0,
        num_workers=0,
    )
    progress: list[float] = []
    checkpoints: list[dict[str, Any]] = []
    hooks = TrainHooks(
        on_progress=lambda p, m, x: progress.append(p), on_checkpoint=checkpoints.append
    )
    # when
    result = train_agbp_ddp(cfg, data, hooks=hooks, world=2, backend="gloo")
    # then
    assert result.steps == 2
    assert not result.stopped
    assert [h["epoch"] for h in result.history] == [1.0]
    assert progress == [100.0]
    assert [c["step"] for c in checkpoints] == [2]
    assert all(k.startswith("model.") for k in result.state_dict)
