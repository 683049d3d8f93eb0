"""Common backbone contract: five stages (stem + 4), selectable outputs and frozen stages.

Stage indexing follows agssp-spec §4.4 throughout the suite: 0 = stem, 1..4 = stages.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Self

from torch import Tensor, nn

from shared.errors import InvalidInputError

NUM_STAGES = 5


@dataclass(frozen=True)
class LoadReport:
    """Outcome of loading a state_dict into a backbone.

    ``matched`` and ``total`` count parameters and buffers except BatchNorm's
    ``num_batches_tracked`` counters, which many checkpoints omit.
    """

    matched: int
    total: int
    missing: tuple[str, ...]
    shape_mismatch: tuple[str, ...]
    unused: int

    @property
    def ratio(self) -> float:
        """Share of the backbone's tensors that received a value."""
        return self.matched / self.total if self.total else 0.0


class Backbone(nn.Module):
    """Feature extractor returning one map per selected stage.

    Subclasses register their stage modules and implement ``run_stage``; this class handles
    output selection, freezing and the eval-mode guarantee of frozen stages.

    Attributes:
        name: the registry name it was built from, e.g. ``"yolov8s"``.
        family: ``"cspdarknet"``, ``"resnet"`` or ``"swin"``.
        out_indices: selected stages, ascending, each in 0..4.
        out_channels: channels of each returned map, aligned with ``out_indices``.
        strides: input-to-map reduction of each returned map, aligned with ``out_indices``.
        frozen_stages: stages 0..frozen_stages are frozen; -1 freezes nothing.
        load_report: counts of the last weight load, None when built without weights.
    """

    def __init__(
        self,
        *,
        name: str,
        family: str,
        stage_channels: tuple[int, ...],
        stage_strides: tuple[int, ...],
        out_indices: tuple[int, ...],
        frozen_stages: int,
    ) -> None:
        super().__init__()
        _check_indices(name, out_indices, frozen_stages)
        self.name = name
        self.family = family
        self.stage_channels = stage_channels
        self.stage_strides = stage_strides
        self.out_indices = tuple(sorted(out_indices))
        self.out_channels = tuple(stage_channels[i] for i in self.out_indices)
        self.strides = tuple(stage_strides[i] for i in self.out_indices)
        self.frozen_stages = frozen_stages
        self.load_report: LoadReport | None = None

    def stage_modules(self, index: int) -> list[nn.Module]:
        """Modules that make up stage ``index`` (0 = stem); used for freezing."""
        raise NotImplementedError

    def run_stage(self, index: int, x: Tensor) -> Tensor:
        """Run stage ``index`` on the previous stage's (internal-format) output."""
        raise NotImplementedError

    def stage_output(self, index: int, x: Tensor) -> Tensor:
        """Turn a stage's internal output into the returned (B, C, h, w) map."""
        return x

    def forward(self, x: Tensor) -> list[Tensor]:
        """Extract features.

        Args:
            x: images (B, 3, H, W), normalised.

        Returns:
            One map (B, C_i, H / s_i, W / s_i) per entry of ``out_indices``.
        """
        return self.forward_from(x, 0)

    def forward_from(self, x: Tensor, first_stage: int) -> list[Tensor]:
        """Run stages ``first_stage..max(out_indices)``; ``x`` is the input of ``first_stage``.

        Maps of stages before ``first_stage`` are not returned.
        """
        feats: list[Tensor] = []
        for index in range(first_stage, self.out_indices[-1] + 1):
            x = self.run_stage(index, x)
            if index in self.out_indices:
                feats.append(self.stage_output(index, x))
        return feats

    def freeze(self) -> None:
        """Stop gradients into stages 0..frozen_stages and put them in eval mode."""
        for index in range(self.frozen_stages + 1):
            for module in self.stage_modules(index):
                module.eval()
                for param in module.parameters():
                    param.requires_grad_(False)

    def train(self, mode: bool = True) -> Self:
        """Set training mode, keeping frozen stages in eval mode.

        agssp-spec §4.4: frozen stages are "requires_grad False + eval", so BatchNorm
        statistics of frozen stages never move, whatever the caller does.
        """
        super().train(mode)
        for index in range(self.frozen_stages + 1):
            for module in self.stage_modules(index):
                module.eval()
        return self


def _check_indices(name: str, out_indices: tuple[int, ...], frozen_stages: int) -> None:
    if not out_indices or any(not 0 <= i < NUM_STAGES for i in out_indices):
        raise InvalidInputError(
            f"out_indices {out_indices} for backbone {name!r} must be a non-empty subset of "
            f"0..{NUM_STAGES - 1} (0 = stem, 1..4 = stages)"
        )
    if len(set(out_indices)) != len(out_indices):
        raise InvalidInputError(f"out_indices {out_indices} for {name!r} has duplicates")
    if not -1 <= frozen_stages < NUM_STAGES:
        raise InvalidInputError(
            f"frozen_stages {frozen_stages} for {name!r} must be in -1..{NUM_STAGES - 1}"
        )
