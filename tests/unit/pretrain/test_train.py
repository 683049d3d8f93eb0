"""train_agbp on a tiny synthetic source: checkpoints, exact resume, cooperative stop."""

from __future__ import annotations

from typing import Any

import pytest
import torch

from services.pretrain.ml import train as train_module
from services.pretrain.ml.augment import compute_mean_std
from services.pretrain.ml.data import PairSource
from services.pretrain.ml.train import train_agbp
from services.pretrain.params import AgbpConfig
from shared.errors import InvalidInputError
from shared.ml.hooks import TrainHooks
from tests.unit.pretrain.test_data import CountingSource

CPU = torch.device("cpu")


def _cfg(**overrides: Any) -> AgbpConfig:
    # 4 pairs, batch 2 -> 2 steps per epoch.
    values: dict[str, Any] = {
        "backbone": "yolov8n",
        "objective": "cls_distill",
        "num_classes": 2,
        "epochs": 1,
        "batch_size": 2,
        "input_size": 64,
        "resize_base": 64,
        "checkpoint_every": 1,
        "num_workers": 0,
        "amp": False,
        "seed": 0,
    }
    return AgbpConfig(**(values | overrides))


class Recorder:
    """Hooks that keep every checkpoint and progress call."""

    def __init__(self, stop_after: int | None = None, resume: dict[str, Any] | None = None) -> None:
        self.checkpoints: list[dict[str, Any]] = []
        self.progress: list[tuple[float, str, dict[str, float]]] = []
        self.stop_after = stop_after
        self.stop_calls = 0
        self.hooks = TrainHooks(
            on_progress=lambda p, m, metrics: self.progress.append((p, m, dict(metrics))),
            should_stop=self._should_stop,
            on_checkpoint=self.checkpoints.append,
            resume_state=resume,
        )

    def _should_stop(self) -> bool:
        self.stop_calls += 1
        return self.stop_after is not None and self.stop_calls > self.stop_after


def test_two_steps_train_and_checkpoint_every_step(tiny_source: PairSource) -> None:
    # given
    recorder = Recorder()
    # when
    result = train_agbp(_cfg(), tiny_source, hooks=recorder.hooks, device=CPU)
    # then
    assert result.steps == 2
    assert not result.stopped
    assert [(c["step"], c["reason"]) for c in recorder.checkpoints] == [(1, "step"), (2, "epoch")]
    assert set(result.history[0]) >= {"loss", "distill", "task", "epoch", "lr"}
    assert all(k.startswith("model.") for k in result.state_dict)
    assert result.config.stages == (3, 4)
    assert result.config.frozen_stages == 2


def test_resume_continues_at_the_saved_step_with_identical_weights(tiny_source: PairSource) -> None:
    # given: an uninterrupted run, and its checkpoint after step 1
    full = Recorder()
    expected = train_agbp(_cfg(), tiny_source, hooks=full.hooks, device=CPU)
    resumed = Recorder(resume=full.checkpoints[0])
    # when
    result = train_agbp(_cfg(), tiny_source, hooks=resumed.hooks, device=CPU)
    # then
    assert [c["step"] for c in resumed.checkpoints] == [2]
    assert result.steps == 2
    assert len(result.history) == len(expected.history) == 1
    assert result.history[0] == pytest.approx(expected.history[0], rel=1e-6)
    for key, value in expected.state_dict.items():
        assert torch.allclose(result.state_dict[key], value, atol=1e-6), key


def test_simmim_resume_redraws_the_same_masks(tiny_source: PairSource) -> None:
    # given: SimMIM draws masks from the torch RNG, which the checkpoint carries
    cfg = _cfg(backbone="swin-tiny-test", objective="simmim_distill", num_classes=None)
    full = Recorder()
    expected = train_agbp(cfg, tiny_source, hooks=full.hooks, device=CPU)
    # when
    result = train_agbp(
        cfg, tiny_source, hooks=Recorder(resume=full.checkpoints[0]).hooks, device=CPU
    )
    # then
    assert len(result.history) == len(expected.history) == 1
    assert result.history[0] == pytest.approx(expected.history[0], rel=1e-6)


def test_should_stop_ends_the_run_between_steps(tiny_source: PairSource) -> None:
    # given: the stop flag rises after the first step
    recorder = Recorder(stop_after=1)
    # when
    result = train_agbp(_cfg(epochs=3), tiny_source, hooks=recorder.hooks, device=CPU)
    # then
    assert result.stopped
    assert result.steps == 1
    assert result.history == []
    assert [c["step"] for c in recorder.checkpoints] == [1]


def test_stop_saves_a_checkpoint_when_the_last_one_is_older(tiny_source: PairSource) -> None:
    # given: no step checkpoints, stop after the first step
    recorder = Recorder(stop_after=1)
    # when
    train_agbp(_cfg(checkpoint_every=0), tiny_source, hooks=recorder.hooks, device=CPU)
    # then
    assert [(c["step"], c["reason"]) for c in recorder.checkpoints] == [(1, "stop")]


def test_progress_is_reported_once_per_epoch_with_losses(tiny_source: PairSource) -> None:
    # given
    recorder = Recorder()
    # when
    train_agbp(_cfg(epochs=2, checkpoint_every=0), tiny_source, hooks=recorder.hooks, device=CPU)
    # then
    assert [p for p, _, _ in recorder.progress] == [50.0, 100.0]
    assert all({"loss", "distill", "task"} <= set(m) for _, _, m in recorder.progress)


def test_resume_from_another_configuration_is_refused(tiny_source: PairSource) -> None:
    # given
    first = Recorder()
    train_agbp(_cfg(), tiny_source, hooks=first.hooks, device=CPU)
    # when / then
    with pytest.raises(InvalidInputError, match="lr"):
        train_agbp(
            _cfg(lr=0.5), tiny_source, hooks=Recorder(resume=first.checkpoints[0]).hooks, device=CPU
        )


def test_missing_statistics_are_computed_from_the_images(tiny_source: PairSource) -> None:
    # when
    result = train_agbp(
        _cfg(mean=None, std=None, objective="distill"), tiny_source, hooks=TrainHooks(), device=CPU
    )
    # then
    mean, std = compute_mean_std(tiny_source[i][0] for i in range(len(tiny_source)))
    assert result.config.mean == pytest.approx(mean)
    assert result.config.std == pytest.approx(std)


def test_too_few_pairs_for_one_batch_are_refused(tiny_source: PairSource) -> None:
    with pytest.raises(InvalidInputError, match="batch"):
        train_agbp(_cfg(batch_size=8), tiny_source, hooks=TrainHooks(), device=CPU)


def test_pairs_are_decoded_once_per_run_and_train_as_without_the_cache(
    tiny_source: PairSource,
) -> None:
    # given: two epochs, data loaded in this process (num_workers 0)
    cached, uncached = CountingSource(tiny_source), CountingSource(tiny_source)
    cfg = _cfg(epochs=2, checkpoint_every=0)
    # when
    with_cache = train_agbp(cfg, cached, hooks=TrainHooks(), device=CPU)
    without = train_agbp(cfg, uncached, hooks=TrainHooks(), device=CPU, decoded_cache_bytes=0)
    # then
    assert cached.reads == dict.fromkeys(range(4), 1)
    assert uncached.reads == dict.fromkeys(range(4), 2)
    assert with_cache.history == without.history
    for key, value in with_cache.state_dict.items():
        assert torch.equal(value, without.state_dict[key]), key


def test_epoch_losses_are_exact_means_of_the_step_losses(
    tiny_source: PairSource, monkeypatch: pytest.MonkeyPatch
) -> None:
    # given: every step's losses, read from the objective's output
    steps: list[dict[str, float]] = []
    build = train_module.build_objective

    def recording(cfg: AgbpConfig, backbone: Any) -> Any:
        objective = build(cfg, backbone)
        objective.register_forward_hook(
            lambda _m, _a, out: steps.append({k: float(v.detach()) for k, v in out.items()})
        )
        return objective

    monkeypatch.setattr(train_module, "build_objective", recording)
    # when: 2 epochs of 2 steps
    result = train_agbp(_cfg(epochs=2), tiny_source, hooks=TrainHooks(), device=CPU)
    # then: the history holds the Python-float means of those values, bit for bit
    assert len(steps) == 4
    for epoch, entry in enumerate(result.history):
        mine = steps[2 * epoch : 2 * epoch + 2]
        for name in ("loss", "distill", "task"):
            assert entry[name] == sum(s[name] for s in mine) / 2, (epoch, name)


def test_a_resume_mid_epoch_gives_the_uninterrupted_run_bit_for_bit(
    tiny_source: PairSource,
) -> None:
    # given: an uninterrupted 2-epoch run with a checkpoint after every step
    full = Recorder()
    expected = train_agbp(_cfg(epochs=2), tiny_source, hooks=full.hooks, device=CPU)
    mid_epoch_two = next(c for c in full.checkpoints if c["step"] == 3)
    # when: resumed from the checkpoint inside epoch 2 (its partial loss sums included)
    result = train_agbp(
        _cfg(epochs=2), tiny_source, hooks=Recorder(resume=mid_epoch_two).hooks, device=CPU
    )
    # then
    assert result.history == expected.history
    for key, value in expected.state_dict.items():
        assert torch.equal(result.state_dict[key], value), key
