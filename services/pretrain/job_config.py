"""The ``AgbpConfig`` of a job: request config + category count + worker defaults, validated.

Imports the training stack (torch); the API loads it in its lifespan when installed.
"""

from __future__ import annotations

from typing import Any

from pydantic import ValidationError

from services.pretrain.ml.agbp_config import AgbpConfig, resolve_config
from services.pretrain.params import AgbpJobParams, refuse_unknown_config_keys
from shared.errors import InvalidInputError


def agbp_config(params: AgbpJobParams, **runtime: Any) -> AgbpConfig:
    """The job's ``AgbpConfig``, with ``num_classes`` defaulting to the number of categories.

    Args:
        params: the job parameters.
        runtime: values used only where the request left the field unset (``num_workers``).

    Raises:
        InvalidInputError: unknown keys (code 'unknown_config_keys'), invalid values or
            combinations (code 'invalid_config', or 'invalid_input' from the recipe check).
    """
    raw = dict(params.config)
    refuse_unknown_config_keys(raw)
    categories = params.categories()
    objective = raw.get("objective", AgbpConfig.model_fields["objective"].default)
    if objective == "cls_distill":
        raw.setdefault("num_classes", len(categories))
    raw |= {k: v for k, v in runtime.items() if k not in raw}
    try:
        cfg = AgbpConfig.model_validate(raw)
    except ValidationError as exc:
        problems = "; ".join(
            f"{'.'.join(str(p) for p in e['loc']) or 'config'}: {e['msg']}" for e in exc.errors()
        )
        raise InvalidInputError(f"invalid AGBP config: {problems}", code="invalid_config") from exc
    if cfg.objective == "cls_distill" and (cfg.num_classes or 0) < len(categories):
        raise InvalidInputError(
            f"num_classes {cfg.num_classes} < {len(categories)} categories {categories}",
            code="invalid_config",
        )
    resolve_config(cfg)  # recipe conflicts (e.g. every distilled stage frozen) fail now
    return cfg
