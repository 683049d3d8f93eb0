"""Objectives: frozen stages after a real step, classification loss, loss balancing."""

from __future__ import annotations

import math
from typing import Any

import pytest
import torch

from services.pretrain.ml.distill import DistillHead
from services.pretrain.ml.objectives import (
    ClsDistillObjective,
    DistillObjective,
    LossBalancer,
)
from shared.ml.backbones import create_backbone


def _batch(size: int = 64, n: int = 2) -> dict[str, torch.Tensor]:
    torch.manual_seed(0)
    return {
        "image": torch.randn(n, 3, size, size),
        "map": torch.rand(n, 1, size, size),
        "label": torch.tensor([0, 1][:n]),
    }


def test_frozen_stages_get_no_gradient_and_keep_batchnorm_statistics_after_a_step() -> None:
    # given
    backbone: Any = create_backbone("yolov8n", frozen_stages=2, out_indices=(3, 4))
    objective = DistillObjective(
        backbone, DistillHead(), LossBalancer("fixed", distill_weight=1.0, task_weight=0.0)
    )
    objective.train()
    frozen_stats = backbone.model[4].cv1.bn.running_mean.clone()
    trained_stats = backbone.model[6].cv1.bn.running_mean.clone()
    frozen_weight = backbone.model[2].cv1.conv.weight.clone()
    optimizer = torch.optim.SGD([p for p in objective.parameters() if p.requires_grad], lr=0.1)
    # when
    objective(_batch())["loss"].backward()
    optimizer.step()
    # then
    assert all(p.grad is None for i in range(5) for p in backbone.model[i].parameters())
    assert backbone.model[6].cv1.conv.weight.grad is not None
    assert torch.equal(backbone.model[4].cv1.bn.running_mean, frozen_stats)
    assert torch.equal(backbone.model[2].cv1.conv.weight, frozen_weight)
    assert not torch.equal(backbone.model[6].cv1.bn.running_mean, trained_stats)


def test_classification_loss_of_a_zero_classifier_is_log_k() -> None:
    # given
    backbone = create_backbone("resnet18-test", out_indices=(3, 4))
    objective = ClsDistillObjective(
        backbone,
        DistillHead(),
        LossBalancer("fixed", distill_weight=1.0, task_weight=0.1),
        num_classes=5,
    )
    torch.nn.init.zeros_(objective.classifier.weight)
    torch.nn.init.zeros_(objective.classifier.bias)
    # when
    losses = objective(_batch())
    # then
    assert losses["task"].item() == pytest.approx(math.log(5), rel=1e-6)
    assert losses["loss"].item() == pytest.approx(
        0.1 * math.log(5) + losses["distill"].item(), rel=1e-5
    )


def test_fixed_balancer_weights_both_losses() -> None:
    # given
    balancer = LossBalancer("fixed", distill_weight=2.0, task_weight=0.5)
    # when
    total = balancer(torch.tensor(3.0), torch.tensor(4.0))
    # then
    assert total.item() == pytest.approx(2.0 * 3.0 + 0.5 * 4.0)


def test_auto_balancer_sets_lambda_from_the_first_ratio_then_freezes_it() -> None:
    # given
    balancer = LossBalancer("auto", distill_weight=1.0, task_weight=0.1)
    # when
    first = balancer(torch.tensor(2.0), torch.tensor(6.0))
    second = balancer(torch.tensor(1.0), torch.tensor(1.0))
    # then: lambda = 6 / 2 = 3, task weight 1; the second call keeps lambda
    assert first.item() == pytest.approx(6.0 + 3.0 * 2.0)
    assert second.item() == pytest.approx(1.0 + 3.0 * 1.0)
    assert balancer.state_dict()["distill_weight"].item() == pytest.approx(3.0)


def test_auto_lambda_is_detached_from_the_graph() -> None:
    # given
    balancer = LossBalancer("auto", distill_weight=1.0, task_weight=1.0)
    distill = torch.tensor(2.0, requires_grad=True)
    task = torch.tensor(6.0, requires_grad=True)
    # when
    balancer(distill, task).backward()
    # then: d/d distill = lambda (3), d/d task = 1; lambda itself carries no gradient
    assert distill.grad is not None
    assert distill.grad.item() == pytest.approx(3.0)
    assert task.grad is not None
    assert task.grad.item() == pytest.approx(1.0)


def test_auto_balancer_loaded_uncalibrated_calibrates_again() -> None:
    # given: a calibrated balancer, and the state of one that never saw a batch
    balancer = LossBalancer("auto", distill_weight=1.0, task_weight=0.1)
    balancer(torch.tensor(2.0), torch.tensor(6.0))
    fresh = LossBalancer("auto", distill_weight=1.0, task_weight=0.1).state_dict()
    # when
    balancer.load_state_dict(fresh)
    total = balancer(torch.tensor(1.0), torch.tensor(4.0))
    # then: lambda = 4 / 1 from this first batch
    assert total.item() == pytest.approx(4.0 + 4.0 * 1.0)
    assert balancer.state_dict()["distill_weight"].item() == pytest.approx(4.0)


def test_auto_balancer_loaded_calibrated_keeps_the_loaded_lambda() -> None:
    # given: the state of a balancer calibrated to lambda 3
    calibrated = LossBalancer("auto", distill_weight=1.0, task_weight=0.1)
    calibrated(torch.tensor(2.0), torch.tensor(6.0))
    balancer = LossBalancer("auto", distill_weight=1.0, task_weight=0.1)
    # when
    balancer.load_state_dict(calibrated.state_dict())
    total = balancer(torch.tensor(1.0), torch.tensor(4.0))
    # then
    assert total.item() == pytest.approx(4.0 + 3.0 * 1.0)
