"""Files published with an AGBP backbone: loss curve (CSV and PNG) and the resolved config.

matplotlib loads only when a PNG is drawn (in the worker): the API imports the AGBP use case
and its image has no plotting stack.
"""

from __future__ import annotations

import csv
import io
from collections.abc import Mapping, Sequence
from typing import Any

import yaml

_FIRST_COLUMNS = ("epoch", "lr", "loss", "distill", "task")
# Fixed PNG metadata: the same history gives the same bytes (a re-publish stays identical).
_PNG_METADATA = {"Software": None}


def loss_columns(history: Sequence[Mapping[str, float]]) -> list[str]:
    """Column order of the loss curve: epoch, lr, losses, then anything else sorted."""
    names = {name for entry in history for name in entry}
    return [c for c in _FIRST_COLUMNS if c in names] + sorted(names - set(_FIRST_COLUMNS))


def loss_curve_csv(history: Sequence[Mapping[str, float]]) -> bytes:
    """One row per epoch (``train_agbp`` history), one column per logged value."""
    columns = loss_columns(history)
    out = io.StringIO()
    writer = csv.DictWriter(out, fieldnames=columns, lineterminator="\n")
    writer.writeheader()
    for entry in history:
        writer.writerow({c: _number(entry.get(c)) for c in columns})
    return out.getvalue().encode()


def _number(value: float | None) -> str:
    if value is None:
        return ""
    return str(int(value)) if float(value).is_integer() and abs(value) < 1e15 else f"{value:.6g}"


def loss_curve_png(history: Sequence[Mapping[str, float]], title: str) -> bytes:
    """Losses per epoch as a PNG (matplotlib's Agg canvas; no pyplot, no display)."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    figure = Figure(figsize=(6.4, 4.0), dpi=100)
    FigureCanvasAgg(figure)
    axes = figure.add_subplot()
    epochs = [entry.get("epoch", i + 1) for i, entry in enumerate(history)]
    for name in loss_columns(history):
        if name in ("epoch", "lr"):
            continue
        axes.plot(epochs, [entry.get(name, float("nan")) for entry in history], "o-", label=name)
    axes.set_xlabel("epoch")
    axes.set_ylabel("loss")
    axes.set_title(title)
    axes.grid(alpha=0.3)
    if history:
        axes.legend()
    out = io.BytesIO()
    figure.savefig(out, format="png", metadata=_PNG_METADATA)
    return out.getvalue()


def config_yaml(config: Mapping[str, Any]) -> bytes:
    """The resolved config as YAML, in field order."""
    return yaml.safe_dump(dict(config), sort_keys=False).encode()
