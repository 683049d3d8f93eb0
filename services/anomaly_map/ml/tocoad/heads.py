"""SimSiam projector/predictor heads, one per adapted F level (tocoad-spec §4.3)."""

from __future__ import annotations

from collections.abc import Mapping, Sequence

from torch import Tensor, nn


def _mlp_block(cin: int, cout: int) -> list[nn.Module]:
    return [nn.Linear(cin, cout, bias=False), nn.BatchNorm1d(cout), nn.ReLU(inplace=True)]


class SimSiamHead(nn.Module):
    """Projector g (3 layers, BN without affine at the end) and bottleneck predictor q."""

    def __init__(self, channels: int, proj_dim: int, pred_dim: int, hidden: int) -> None:
        """Create projector and predictor.

        Args:
            channels: C_l of the pooled F level.
            proj_dim: d.
            pred_dim: predictor bottleneck width.
            hidden: projector hidden width.
        """
        super().__init__()
        self.projector = nn.Sequential(
            *_mlp_block(channels, hidden),
            *_mlp_block(hidden, hidden),
            nn.Linear(hidden, proj_dim, bias=False),
            nn.BatchNorm1d(proj_dim, affine=False),
        )
        self.predictor = nn.Sequential(
            *_mlp_block(proj_dim, pred_dim), nn.Linear(pred_dim, proj_dim)
        )

    def forward(self, pooled: Tensor) -> tuple[Tensor, Tensor]:
        """(B, C_l) pooled features -> (z, p), both (B, d)."""
        z: Tensor = self.projector(pooled)
        p: Tensor = self.predictor(z)
        return z, p


def build_heads(
    channels: Mapping[str, int],
    layers: Sequence[str],
    proj_dim: int,
    pred_dim: int,
    hidden_ratio: float,
) -> nn.ModuleDict:
    """One ``SimSiamHead`` per layer name, sized from F's channels."""
    return nn.ModuleDict(
        {
            name: SimSiamHead(
                channels[name], proj_dim, pred_dim, max(1, int(channels[name] * hidden_ratio))
            )
            for name in layers
        }
    )


def get_head(heads: nn.ModuleDict, name: str) -> SimSiamHead:
    """Typed access to one head of ``build_heads``' output."""
    head = heads[name]
    if not isinstance(head, SimSiamHead):
        raise TypeError(f"heads[{name!r}] is {type(head).__name__}, not SimSiamHead")
    return head
