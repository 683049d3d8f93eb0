"""Submitting pretrain jobs: validate what can be checked without the data, then enqueue.

Torch-free, so the API image needs no training stack: unknown AGBP config keys are always
refused here; values and combinations are checked by a ``ConfigValidator`` when the API has
one (``services.pretrain.job_config.agbp_config``, loaded when torch is installed) and by the
worker in any case.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from services.pretrain.params import (
    AgbpJobParams,
    PseudoLabelParams,
    StartWeights,
    refuse_out_of_range_config,
    refuse_unknown_config_keys,
)
from shared.errors import ConflictError, InvalidInputError, NotFoundError
from shared.jobs.producer import TaskSender, submit_job
from shared.jobs.store import JobStore
from shared.schemas.artifacts import ArtifactRef
from shared.schemas.jobs import JobRecord, Queue, TaskName
from shared.storage.artifacts import ArtifactStore
from shared.storage.base import ObjectStore

AGBP_KIND = "agbp"
PSEUDO_LABELS_KIND = "pseudo_labels"
PSEUDO_MANIFEST = "manifest.json"
# Raises InvalidInputError for a config the job could not train with.
ConfigValidator = Callable[[AgbpJobParams], Any]


def parse_artifact(spec: str) -> tuple[str, str | None]:
    """``'name'``/``'name:latest'`` -> (name, None); ``'name:version'`` -> (name, version)."""
    name, _, version = spec.partition(":")
    return name, None if version in ("", "latest") else version


def resolve_artifact(store: ObjectStore, spec: str) -> ArtifactRef:
    """The published version ``spec`` names.

    Raises:
        NotFoundError: no such artifact or version (code 'artifact_not_found').
    """
    artifacts = ArtifactStore(store)
    name, version = parse_artifact(spec)
    if version is None:
        ref = artifacts.latest(name)
        if ref is None:
            raise NotFoundError(
                f"artifact {name!r} has no published version", code="artifact_not_found"
            )
        return ref
    ref = ArtifactRef(name=name, version=version)
    artifacts.manifest(ref)  # NotFoundError (404, 'artifact_not_found') when absent
    return ref


def _pinned_start_weights(store: ObjectStore, weights: StartWeights | None) -> StartWeights | None:
    """An artifact pinned to the version that exists now; a path is checked by the worker."""
    if weights is None or weights.artifact is None:
        return weights
    ref = resolve_artifact(store, weights.artifact)
    if "backbone.pt" not in ArtifactStore(store).manifest(ref).files:
        raise InvalidInputError(
            f"start weights: artifact {ref} has no backbone.pt", code="start_weights_invalid"
        )
    return StartWeights(artifact=str(ref))


def submit_agbp_job(
    sender: TaskSender,
    jobs: JobStore,
    params: AgbpJobParams,
    validate: ConfigValidator | None = None,
) -> JobRecord:
    """Validate an AGBP job and enqueue it on the ``pretrain`` queue."""
    refuse_unknown_config_keys(params.config)
    refuse_out_of_range_config(params.config)
    if validate is not None:
        validate(params)
    weights = _pinned_start_weights(jobs.store, params.start_weights)
    name = params.artifact_name or f"agbp-{params.backbone()}"
    stored = params.model_copy(update={"artifact_name": name, "start_weights": weights})
    return submit_job(
        sender,
        jobs,
        kind=AGBP_KIND,
        task_name=TaskName.PRETRAIN_AGBP,
        queue=Queue.PRETRAIN,
        params=stored.model_dump(mode="json"),
    )


def submit_pseudo_label_job(
    sender: TaskSender, jobs: JobStore, params: PseudoLabelParams
) -> JobRecord:
    """Enqueue a pseudo-label job; a custom ``out_prefix`` must not hold finished output."""
    if params.out_prefix is not None and jobs.store.exists(params.out_prefix + PSEUDO_MANIFEST):
        raise ConflictError(
            f"{params.out_prefix} already holds pseudo labels; choose another out_prefix",
            code="output_exists",
        )
    return submit_job(
        sender,
        jobs,
        kind=PSEUDO_LABELS_KIND,
        task_name=TaskName.PRETRAIN_PSEUDO_LABELS,
        queue=Queue.PRETRAIN,
        params=params.model_dump(mode="json"),
    )
