"""AgbpConfig validation and recipe resolution; optimiser groups and the lr schedule."""

from __future__ import annotations

import pytest
from pydantic import ValidationError
from torch import nn

from services.pretrain.ml.agbp_config import resolve_config
from services.pretrain.ml.optim import build_optimizer, get_lr
from services.pretrain.params import AgbpConfig
from shared.errors import InvalidInputError


def test_unknown_keys_are_refused() -> None:
    with pytest.raises(ValidationError, match="extra"):
        AgbpConfig(backbone="yolov8s", num_classes=3, learning_rate=0.1)  # type: ignore[call-arg]


def test_classification_needs_the_number_of_categories() -> None:
    # given: num_classes unset means "the job's categories"; the recipe cannot guess them
    cfg = AgbpConfig(objective="cls_distill")
    # when / then
    with pytest.raises(InvalidInputError, match="num_classes"):
        resolve_config(cfg)


def test_unknown_backbones_are_refused_without_torch() -> None:
    with pytest.raises(ValidationError, match="vgg16"):
        AgbpConfig(backbone="vgg16")


def test_default_input_size_and_stages_come_from_the_backbone_table() -> None:
    # given: a tiny test backbone whose table entry says 64 px and stages (3, 4)
    cfg = resolve_config(AgbpConfig(backbone="resnet18-test", num_classes=2))
    # then
    assert (cfg.input_size, cfg.stages) == (64, (3, 4))


def test_simmim_needs_a_swin_backbone() -> None:
    with pytest.raises(ValidationError, match="Swin"):
        AgbpConfig(backbone="resnet50", objective="simmim_distill")


def test_cspdarknet_recipe_is_filled_in() -> None:
    # when
    cfg = resolve_config(AgbpConfig(backbone="yolov8s", num_classes=61))
    # then
    assert (cfg.stages, cfg.frozen_stages, cfg.loss) == ((3, 4), 2, "cosine")
    assert (cfg.distill_weight, cfg.task_weight) == (1.0, 0.1)
    assert (cfg.optimizer, cfg.lr, cfg.schedule, cfg.milestones) == (
        "sgd",
        0.01,
        "multistep",
        (60, 90, 180),
    )
    assert (cfg.input_size, cfg.resize_base) == (224, 512)


def test_swin_simmim_recipe_is_filled_in() -> None:
    # when
    cfg = resolve_config(AgbpConfig(backbone="swin_base", objective="simmim_distill"))
    # then
    assert (cfg.stages, cfg.loss, cfg.distill_weight, cfg.task_weight) == ((4,), "l2", 2.0, 1.0)
    assert (cfg.optimizer, cfg.lr, cfg.input_size, cfg.resize_base) == ("adamw", 8.75e-5, 192, 400)
    assert cfg.grad_clip == 5.0


def test_explicit_values_win_over_the_recipe() -> None:
    # when
    cfg = resolve_config(AgbpConfig(backbone="yolov8s", num_classes=2, lr=0.5, frozen_stages=-1))
    # then
    assert (cfg.lr, cfg.frozen_stages) == (0.5, -1)


def test_freezing_every_distilled_stage_is_refused() -> None:
    with pytest.raises(InvalidInputError, match="frozen_stages"):
        resolve_config(AgbpConfig(objective="distill", stages=(3, 4), frozen_stages=4))


def _cfg(**kw: object) -> AgbpConfig:
    return resolve_config(AgbpConfig(backbone="yolov8n", objective="distill", **kw))  # type: ignore[arg-type]


def test_multistep_lr_drops_by_gamma_at_each_milestone_epoch() -> None:
    # given: 10 steps per epoch, milestones at epochs 2 and 4
    cfg = _cfg(lr=1.0, schedule="multistep", milestones=(2, 4), warmup_epochs=0)
    # when
    lrs = [get_lr(step, cfg, 10) for step in (0, 19, 20, 39, 40)]
    # then
    assert lrs == pytest.approx([1.0, 1.0, 0.1, 0.1, 0.01])


def test_warmup_rises_linearly_from_the_factor() -> None:
    # given: 1 warm-up epoch of 10 steps from factor 0.1
    cfg = _cfg(lr=1.0, schedule="constant", warmup_epochs=1, warmup_factor=0.1)
    # when
    lrs = [get_lr(step, cfg, 10) for step in (0, 5, 10)]
    # then
    assert lrs == pytest.approx([0.1, 0.55, 1.0])


def test_cosine_reaches_min_lr_at_the_end() -> None:
    # given
    cfg = _cfg(lr=1.0, schedule="cosine", warmup_epochs=0, epochs=2, min_lr=0.0)
    # when
    lrs = [get_lr(step, cfg, 10) for step in (0, 10, 20)]
    # then
    assert lrs == pytest.approx([1.0, 0.5, 0.0], abs=1e-9)


def test_adamw_exempts_norms_and_biases_from_weight_decay() -> None:
    # given
    model = nn.Sequential(nn.Linear(3, 4), nn.LayerNorm(4))
    cfg = _cfg(optimizer="adamw", lr=1e-3, weight_decay=0.05)
    # when
    optimizer = build_optimizer(model, cfg)
    # then
    decay = {
        id(p) for g in optimizer.param_groups if g["weight_decay"] == 0.05 for p in g["params"]
    }
    assert decay == {id(model[0].weight)}
