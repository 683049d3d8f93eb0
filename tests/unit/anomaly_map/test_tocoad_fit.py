"""ToCoAD end to end on a tiny config: fit, score, hooks, resume, serialisation."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
from pydantic import ValidationError

from services.anomaly_map.ml.tocoad.backbone import create_backbone
from services.anomaly_map.ml.tocoad.data import preprocess
from services.anomaly_map.ml.tocoad.fit import fit_tocoad
from services.anomaly_map.ml.tocoad.model import TocoadModel
from services.anomaly_map.params.tocoad import TocoadConfig
from shared.errors import InvalidInputError, JobCanceledError
from shared.ml.hooks import TrainHooks

S = 64
CPU = torch.device("cpu")


@pytest.fixture(autouse=True, scope="module")
def _single_thread() -> Iterator[None]:
    # 2 shared cores: oversubscribed intra-op threads made these tests ~5x slower.
    previous = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(previous)


def _config(**overrides: Any) -> TocoadConfig:
    # tocoad-spec §10 CI config: 64 px, quarter-width ResNet-18, a few iterations per stage.
    base: dict[str, Any] = {
        "image_size": S,
        "backbone": "resnet18_quarter",
        "stage1": {"iters": 4, "batch_size": 4, "val_size": 4, "val_every": 4},
        "stage2": {"iters": 4, "batch_size": 4, "proj_dim": 32, "pred_dim": 8},
        "bank": {"coreset_ratio": 0.5, "embed_dim": 64},
        "generator": {"n_procedural_textures": 6},
        "checkpoint_every": 2,
        "log_every": 2,
    }
    return TocoadConfig.model_validate(base | overrides)


def _normals(count: int, seed: int) -> list[np.ndarray]:
    rng = np.random.default_rng(seed)
    xs = np.arange(S)[None, :, None]
    stripes = np.array([150.0, 110.0, 70.0]) + 50 * np.sin(2 * np.pi * xs / 8.0)
    return [
        np.clip(stripes + rng.normal(0, 6, size=(S, S, 3)), 0, 255).astype(np.uint8)
        for _ in range(count)
    ]


def _defects(count: int, seed: int) -> list[np.ndarray]:
    images = _normals(count, seed)
    for image in images:
        image[20:44, 20:44] = (20, 230, 40)  # a large, saturated foreign blob
    return images


class _Recorder:
    def __init__(self) -> None:
        self.progress: list[float] = []
        self.checkpoints: list[dict[str, Any]] = []

    def hooks(self, **kwargs: Any) -> TrainHooks:
        return TrainHooks(
            on_progress=lambda percent, message, metrics: self.progress.append(percent),
            on_checkpoint=self.checkpoints.append,
            **kwargs,
        )

    def checkpoint(self, stage: str, step: int) -> dict[str, Any]:
        return next(c for c in self.checkpoints if c["stage"] == stage and c["step"] == step)


@pytest.fixture(scope="module")
def fitted() -> tuple[TocoadModel, _Recorder]:
    recorder = _Recorder()
    model = fit_tocoad(_normals(8, seed=0), _config(), hooks=recorder.hooks(), device=CPU)
    return model, recorder


def test_fit_scores_defect_images_above_normal_images(
    fitted: tuple[TocoadModel, _Recorder],
) -> None:
    # given
    model, _ = fitted

    # when
    _, normal_scores = model.score(_normals(4, seed=1))
    defect_maps, defect_scores = model.score(_defects(4, seed=2))

    # then
    assert defect_scores.mean() > normal_scores.mean()
    assert defect_maps[:, 20:44, 20:44].mean() > defect_maps[:, :8, :8].mean()


def test_fit_reports_progress_up_to_100_percent(fitted: tuple[TocoadModel, _Recorder]) -> None:
    # given
    _, recorder = fitted

    # when
    progress = recorder.progress

    # then
    assert progress == sorted(progress)
    assert progress[-1] == pytest.approx(100.0)


def test_stage2_updates_the_backbone_but_not_the_frozen_discriminator(
    fitted: tuple[TocoadModel, _Recorder],
) -> None:
    # given
    _, recorder = fitted

    # when
    before, after = recorder.checkpoint("stage1", 4), recorder.checkpoint("stage2", 4)

    # then
    for key, value in before["discriminator"].items():
        torch.testing.assert_close(after["discriminator"][key], value)
    key = "layer4.0.conv1.weight"
    assert not torch.equal(after["backbone"][key], before["backbone"][key])


def test_state_round_trip_gives_identical_scores(fitted: tuple[TocoadModel, _Recorder]) -> None:
    # given
    model, images = fitted[0], _defects(2, seed=3)
    state = model.to_state()

    # when
    restored = TocoadModel.from_state(state, device=CPU)

    # then
    assert all(isinstance(v, torch.Tensor) for v in state["tensors"].values())
    for ours, theirs in zip(model.score(images), restored.score(images), strict=True):
        np.testing.assert_array_equal(ours, theirs)


def test_score_accepts_a_preprocessed_tensor_or_uint8_images(
    fitted: tuple[TocoadModel, _Recorder],
) -> None:
    # given
    model, images = fitted[0], _defects(2, seed=4)

    # when
    from_list = model.score(images)
    from_tensor = model.score(preprocess(images, S, CPU))

    # then
    np.testing.assert_array_equal(from_list[0], from_tensor[0])
    np.testing.assert_array_equal(from_list[1], from_tensor[1])


@pytest.mark.parametrize(("stage", "step"), [("stage1", 2), ("stage2", 2)])
def test_resume_from_a_checkpoint_reproduces_the_uninterrupted_run(
    fitted: tuple[TocoadModel, _Recorder], stage: str, step: int
) -> None:
    # given
    model, recorder = fitted
    hooks = TrainHooks(resume_state=recorder.checkpoint(stage, step))

    # when
    resumed = fit_tocoad(_normals(8, seed=0), _config(), hooks=hooks, device=CPU)

    # then
    torch.testing.assert_close(resumed.bank, model.bank, rtol=0, atol=0)


def test_should_stop_halts_training_after_saving_a_checkpoint() -> None:
    # given: cancel requested at the third step boundary
    recorder, calls = _Recorder(), iter(range(100))
    hooks = recorder.hooks(should_stop=lambda: next(calls) >= 2)

    # when
    with pytest.raises(JobCanceledError):
        fit_tocoad(_normals(4, seed=0), _config(), hooks=hooks, device=CPU)

    # then
    last = recorder.checkpoints[-1]
    assert (last["stage"], last["step"]) == ("stage1", 2)
    assert max(recorder.progress) < 50.0


def test_resume_state_from_another_config_is_refused(fitted: tuple[TocoadModel, _Recorder]) -> None:
    # given
    hooks = TrainHooks(resume_state=fitted[1].checkpoint("stage1", 2))

    # when / then
    with pytest.raises(InvalidInputError, match="different TocoadConfig"):
        fit_tocoad(_normals(4, seed=0), _config(seed=1), hooks=hooks, device=CPU)


def test_from_state_refuses_an_unknown_format() -> None:
    # given
    state = {"format": "something-else", "config": {}, "tensors": {}}

    # when / then
    with pytest.raises(InvalidInputError, match="format"):
        TocoadModel.from_state(state, device=CPU)


def test_config_rejects_unknown_keys() -> None:
    # given
    raw = {"image_size": 64, "stage1": {"iterations": 10}}

    # when / then
    with pytest.raises(ValidationError, match="iterations"):
        TocoadConfig.model_validate(raw)


def test_config_rejects_image_sizes_that_are_not_multiples_of_32() -> None:
    # given
    raw = {"image_size": 100}

    # when / then
    with pytest.raises(ValidationError, match="multiple of 32"):
        TocoadConfig.model_validate(raw)


def test_fit_refuses_images_that_are_not_rgb_uint8() -> None:
    # given
    images = [np.zeros((S, S), np.uint8)]

    # when / then
    with pytest.raises(InvalidInputError, match="HxWx3 uint8"):
        fit_tocoad(images, _config(), device=CPU)


def test_pretrained_recipe_freezes_f_in_stage1_and_adapts_only_layer3_and_layer4(
    tmp_path: Path,
) -> None:
    # given: a local "pretrained" weights file and every optional mechanism switched on
    weights = tmp_path / "f.pth"
    torch.save(create_backbone("resnet18_quarter").state_dict(), weights)
    cfg = _config(
        backbone_weights=str(weights),
        generator={"kind": "cutpaste"},
        stage2={
            "iters": 2,
            "batch_size": 4,
            "proj_dim": 32,
            "pred_dim": 8,
            "explicit_negatives": True,
        },
    )
    recorder = _Recorder()

    # when
    fit_tocoad(_normals(4, seed=0), cfg, hooks=recorder.hooks(), device=CPU)

    # then
    original = torch.load(weights, weights_only=True)
    after_stage1 = recorder.checkpoint("stage1", 4)["backbone"]
    after_stage2 = recorder.checkpoint("stage2", 2)["backbone"]
    for key in ("conv1.weight", "layer4.0.conv1.weight", "layer4.0.bn1.running_mean"):
        torch.testing.assert_close(after_stage1[key], original[key], rtol=0, atol=0)
    torch.testing.assert_close(
        after_stage2["layer2.0.bn1.running_mean"], original["layer2.0.bn1.running_mean"]
    )
    assert not torch.equal(after_stage2["layer4.0.conv1.weight"], original["layer4.0.conv1.weight"])


def test_discriminator_map_fusion_yields_maps_in_unit_range() -> None:
    # given
    cfg = _config(
        use_d_map=True,
        use_f2_skip=True,
        stage1={"iters": 2, "batch_size": 4, "val_size": 0},
        stage2={"iters": 2, "batch_size": 4, "proj_dim": 32, "pred_dim": 8},
    )
    model = fit_tocoad(_normals(4, seed=0), cfg, device=CPU)

    # when
    maps, _ = model.score(_defects(2, seed=1))

    # then
    assert maps.min() >= 0.0
    assert maps.max() <= 1.0
    assert any(k.startswith("discriminator.") for k in model.to_state()["tensors"])
