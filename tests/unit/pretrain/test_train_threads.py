"""AGBP trains on the thread count a job worker applies at process start (TRAINING_THREADS)."""

from __future__ import annotations

from collections.abc import Iterator, Mapping

import pytest
import torch

from services.pretrain.ml.data import PairSource
from services.pretrain.ml.train import train_agbp
from shared.config import get_common_settings
from shared.jobs import worker
from shared.ml import threads
from shared.ml.hooks import TrainHooks
from tests.unit.pretrain.test_train import _cfg


@pytest.fixture
def restore_threads(monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    before = (torch.get_num_threads(), threads._configured)
    monkeypatch.setenv("OMP_NUM_THREADS", str(before[0]))  # restored by monkeypatch after
    get_common_settings.cache_clear()
    yield
    get_common_settings.cache_clear()
    torch.set_num_threads(before[0])
    threads._configured = before[1]


@pytest.mark.parametrize("setting", ["1", "0"])
def test_agbp_runs_on_the_threads_the_worker_applied(
    setting: str,
    tiny_source: PairSource,
    monkeypatch: pytest.MonkeyPatch,
    restore_threads: None,
) -> None:
    # given a worker process started with TRAINING_THREADS (0 = every core it is given)
    monkeypatch.setenv("TRAINING_THREADS", setting)
    torch.set_num_threads(3)  # whatever the process had before
    expected = int(setting) or threads.cores_available()
    seen: list[int] = []

    def on_progress(percent: float, message: str, metrics: Mapping[str, float]) -> None:
        seen.append(torch.get_num_threads())  # read inside the training loop

    # when
    worker._apply_training_threads()
    train_agbp(
        _cfg(), tiny_source, hooks=TrainHooks(on_progress=on_progress), device=torch.device("cpu")
    )
    # then
    assert seen
    assert set(seen) == {expected}
    assert threads.training_threads() == expected


def test_resolve_threads_rejects_negative_counts() -> None:
    with pytest.raises(ValueError, match="0 = all cores"):
        threads.resolve_threads(-1)
