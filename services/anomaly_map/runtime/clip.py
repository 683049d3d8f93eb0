"""Load the CLIP encoder once and build every CLIP method's scorer on it (KeAD, WinCLIP).

Also registers extra open_clip model configs (tiny test models), gives a tokenizer that
works without weights, so categories can be checked while the weights are missing, and
``LazyScorers``: the encoder is loaded on the first KeAD/WinCLIP call only, so ToCoAD (which
uses no CLIP) runs in a plant where no CLIP weights were ever placed.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path

import open_clip
import torch
from open_clip.tokenizer import SimpleTokenizer

from services.anomaly_map.config import AnomalyMapSettings
from services.anomaly_map.ml.clip.backbone import ClipBundle, load_clip, model_config
from services.anomaly_map.ml.clip.outputs import AnomalyScorer
from services.anomaly_map.ml.clip.prompts import Tokenizer
from services.anomaly_map.params.catalog import CATALOG
from shared.errors import InvalidInputError, UnavailableError

log = logging.getLogger(__name__)

_registered: set[Path] = set()


def register_model_configs(path: Path | None) -> None:
    """Register every open_clip JSON config under ``path`` (a folder or one file), once."""
    if path is None:
        return
    resolved = path.expanduser().resolve()
    if resolved in _registered:
        return
    if not resolved.exists():
        raise InvalidInputError(
            f"ANOMALY_MAP_EXTRA_MODEL_CONFIG_DIR {resolved} does not exist",
            code="model_config_missing",
        )
    open_clip.add_model_config(resolved)
    _registered.add(resolved)


def text_tokenizer(settings: AnomalyMapSettings) -> Tokenizer:
    """The plain CLIP BPE tokenizer with the model's context (agssp-spec §1.1); no weights."""
    register_model_configs(settings.extra_model_config_dir)
    context = int(model_config(settings.clip_model)["text_cfg"].get("context_length", 77))
    tokenizer: Tokenizer = SimpleTokenizer(context_length=context)
    return tokenizer


@dataclass(frozen=True)
class ScorerSet:
    """One loaded encoder and the scorers sharing it.

    Attributes:
        bundle: the CLIP model and its geometry.
        scorers: per CLIP method of the catalogue (``needs.clip``), its scorer on ``bundle``.
        model_id: names model and weights; keys caches and stored memory banks.
    """

    bundle: ClipBundle
    scorers: Mapping[str, AnomalyScorer]
    model_id: str

    def __getitem__(self, method: str) -> AnomalyScorer:
        """The scorer of a CLIP method (``KeyError`` for a method without CLIP)."""
        return self.scorers[method]


def _weights_tag(bundle: ClipBundle, seed: int) -> str:
    if bundle.weights is None:
        return f"random{seed}"
    stat = bundle.weights.stat()
    return f"{bundle.weights.stem}-{stat.st_size}"


def _sanitise(text: str) -> str:
    return "".join(c if c.isalnum() or c in "._-" else "_" for c in text)


def load_scorers(settings: AnomalyMapSettings) -> ScorerSet:
    """Build the encoder from local weights (or seeded random weights when allowed).

    Raises:
        ModelWeightsMissingError: no weights and random weights are not allowed.
    """
    register_model_configs(settings.extra_model_config_dir)
    # Same seed in the API and every worker, so banks built in one serve the others.
    torch.manual_seed(settings.random_weights_seed)
    bundle = load_clip(
        settings.clip_model,
        checkpoint=settings.checkpoint,
        model_dir=settings.common.paths.resolved_model_dir(),
        device=settings.device,
        precision=settings.precision,
        allow_random_weights=settings.allow_random_weights,
    )
    tag = _weights_tag(bundle, settings.random_weights_seed)
    model_id = _sanitise(f"{bundle.model_name}-{tag}")
    log.info("CLIP %s loaded on %s (grid %d)", model_id, bundle.device, bundle.grid_size)
    scorers = {
        spec.name: spec.load_scorer()(bundle) for spec in CATALOG.values() if spec.needs.clip
    }
    return ScorerSet(bundle, scorers, model_id)


class LazyScorers:
    """The CLIP scorers, loaded on first use and shared by every later caller.

    A failed load (weights missing or invalid) is remembered for ``retry_s`` seconds and then
    tried again, so weights placed while the process runs are picked up without a restart.

    Args:
        load: builds the scorers (``load_scorers`` bound to settings); may raise
            ``UnavailableError`` (``model_weights_missing`` / ``model_weights_invalid``).
        retry_s: how long a failure is answered from memory before loading again.
    """

    def __init__(self, load: Callable[[], ScorerSet], *, retry_s: float = 10.0) -> None:
        self._load = load
        self._retry_s = retry_s
        self._lock = threading.Lock()
        self._scorers: ScorerSet | None = None
        self._error: UnavailableError | None = None
        self._failed_at = 0.0

    @classmethod
    def loaded(cls, scorers: ScorerSet) -> LazyScorers:
        """A provider that already holds ``scorers`` (tests, benchmarks)."""
        provider = cls(lambda: scorers)
        provider._scorers = scorers
        return provider

    def get(self) -> ScorerSet:
        """The scorers, loading them now if needed.

        Raises:
            UnavailableError: the encoder cannot be loaded (503 with the loader's code).
        """
        if self._scorers is not None:
            return self._scorers
        with self._lock:
            if self._scorers is not None:
                return self._scorers
            recent = time.monotonic() - self._failed_at < self._retry_s
            if self._error is not None and recent:
                raise self._error
            try:
                self._scorers = self._load()
            except UnavailableError as exc:
                self._error, self._failed_at = exc, time.monotonic()
                raise
            self._error = None
            return self._scorers

    @property
    def is_loaded(self) -> bool:
        return self._scorers is not None

    def last_problem(self) -> str | None:
        """Why the last load failed (no load is tried), or None when loaded or never tried."""
        if self._scorers is not None or self._error is None:
            return None
        return f"{self._error.code}: {self._error.message}"

    def problem(self) -> str | None:
        """Why the scorers are unavailable (tries a load), or None when they are usable."""
        try:
            self.get()
        except UnavailableError as exc:
            return f"{exc.code}: {exc.message}"
        return None
