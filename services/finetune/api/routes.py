"""Routes of the finetune API: datasets, AGDP/finetune/evaluation jobs, the model registry."""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter

from services.finetune.api.deps import DatasetsDep, JobsDep, RegistryDep, SenderDep
from services.finetune.api.schemas import (
    AgdpJobRequest,
    DatasetDetail,
    DatasetImportRequest,
    DatasetList,
    DatasetSummary,
    DatasetVersion,
    DetectorFamilyInfo,
    DetectorFamilyList,
    EvaluationRequest,
    FinetuneJobRequest,
    ModelDetailResponse,
    ModelList,
    ModelSummaryResponse,
    ModelVersion,
    ModelVersionDetail,
    PromoteRequest,
    PromoteResponse,
)
from services.finetune.params import QuantizeParams
from services.finetune.stores.datasets import DatasetRef
from services.finetune.stores.models import artifact_ref
from services.finetune.usecases.agdp_jobs import submit_agdp
from services.finetune.usecases.datasets import submit_import
from services.finetune.usecases.evaluations import submit_evaluation
from services.finetune.usecases.finetune_jobs import submit_finetune
from services.finetune.usecases.quantize_jobs import submit_quantization
from shared.errors import NotFoundError
from shared.http.scopes import require_scope
from shared.schemas.backbones import BACKBONES
from shared.schemas.detector_families import DEFAULT_FAMILY, FAMILIES
from shared.schemas.jobs import JobRecord

_ERRORS: dict[int | str, dict[str, Any]] = {
    404: {"description": "unknown dataset, model, version or artifact"},
    422: {"description": "invalid request (codes: unknown_config_keys, invalid_config, ...)"},
    503: {"description": "storage or job broker unavailable"},
}

TRAIN = [require_scope("train")]
# Lists that describe the service, not its data (the console reads them with any key).
INSPECT = [require_scope("inspect")]
# Quantisation and promotion publish or move what inference serves: admin.
ADMIN = [require_scope("admin")]

jobs = APIRouter(prefix="/v1", tags=["jobs"], responses=_ERRORS)
datasets = APIRouter(
    prefix="/v1/datasets", tags=["datasets"], responses=_ERRORS, dependencies=TRAIN
)
models = APIRouter(prefix="/v1/models", tags=["models"], responses=_ERRORS)


@datasets.post("", status_code=202, response_model=JobRecord)
def import_dataset(body: DatasetImportRequest, jobs: JobsDep, sender: SenderDep) -> JobRecord:
    """Queue an import of a VOC/COCO/YOLO folder stored under a prefix."""
    return submit_import(sender, jobs, body)


@datasets.get("", response_model=DatasetList)
def list_datasets(catalog: DatasetsDep) -> DatasetList:
    """Stored datasets with their latest version."""
    items = []
    for name in catalog.names():
        latest = catalog.latest(name)
        versions = len(catalog.versions(name))
        items.append(DatasetSummary(name=name, latest=latest and latest.version, versions=versions))
    return DatasetList(items=items)


@datasets.get("/{name}", response_model=DatasetDetail)
def get_dataset(name: str, catalog: DatasetsDep) -> DatasetDetail:
    """Every version of a dataset: classes, counts, split sizes, source."""
    versions = catalog.versions(name)
    if not versions:
        raise NotFoundError(f"dataset {name!r} does not exist", code="dataset_not_found")
    manifests = [catalog.manifest(DatasetRef(name, v)) for v in versions]
    latest = catalog.latest(name)
    items = [
        DatasetVersion(**{**m, "version": v}) for m, v in zip(manifests, versions, strict=True)
    ]
    return DatasetDetail(name=name, latest=latest and latest.version, versions=items)


@jobs.post("/agdp-jobs", status_code=202, response_model=JobRecord, dependencies=TRAIN)
def create_agdp_job(body: AgdpJobRequest, jobs: JobsDep, sender: SenderDep) -> JobRecord:
    """Queue AGDP detector pretraining on pseudo-defect boxes."""
    return submit_agdp(sender, jobs, body)


@jobs.get("/detector-families", response_model=DetectorFamilyList, dependencies=INSPECT)
def list_detector_families() -> DetectorFamilyList:
    """The detector families a finetune or AGDP job's ``config.family`` may name."""
    items = [
        DetectorFamilyInfo(
            name=row.name,
            label=row.label,
            summary=row.summary,
            backbones=[b for b in row.backbone_names() if not _test_only(b)],
            default_backbone=row.default_backbone,
            uses_scale=row.uses_scale,
            default_imgsz=row.default_imgsz,
            int8=row.int8,
        )
        for row in FAMILIES.values()
    ]
    return DetectorFamilyList(default=DEFAULT_FAMILY, items=items)


def _test_only(backbone: str) -> bool:
    return BACKBONES[backbone].test_only


@jobs.post("/finetune-jobs", status_code=202, response_model=JobRecord, dependencies=TRAIN)
def create_finetune_job(body: FinetuneJobRequest, jobs: JobsDep, sender: SenderDep) -> JobRecord:
    """Queue detector finetuning (any family, ``config.family``) on a stored dataset."""
    return submit_finetune(sender, jobs, body)


@jobs.post("/evaluations", status_code=202, response_model=JobRecord, dependencies=TRAIN)
def create_evaluation(body: EvaluationRequest, jobs: JobsDep, sender: SenderDep) -> JobRecord:
    """Queue a COCO mAP evaluation of a model version on a dataset split."""
    return submit_evaluation(sender, jobs, body)


@jobs.post("/quantize-jobs", status_code=202, response_model=JobRecord, dependencies=ADMIN)
def create_quantize_job(body: QuantizeParams, jobs: JobsDep, sender: SenderDep) -> JobRecord:
    """Queue INT8 quantisation of a detector calibrated on a dataset (a new model version)."""
    return submit_quantization(sender, jobs, body)


@models.get("", response_model=ModelList, dependencies=TRAIN)
def list_models(registry: RegistryDep) -> ModelList:
    """Model names with latest version, version count, stages and kind."""
    return ModelList(items=[ModelSummaryResponse.of(s) for s in registry.list_models()])


@models.get("/{name}", response_model=ModelDetailResponse, dependencies=TRAIN)
def get_model(name: str, registry: RegistryDep) -> ModelDetailResponse:
    """Every version of a model with metrics, lineage, stages and evaluations."""
    return ModelDetailResponse.of(registry.detail(name))


@models.get("/{name}/versions/{version}", response_model=ModelVersionDetail, dependencies=TRAIN)
def get_model_version(name: str, version: str, registry: RegistryDep) -> ModelVersionDetail:
    """One version, with its saved evaluation results."""
    ref = artifact_ref(name, version)
    info = ModelVersion.of(registry.version_info(ref))
    evaluations = registry.evaluations(ref)
    return ModelVersionDetail(**info.model_dump(), evaluation_results=evaluations)


@models.post(
    "/{name}/versions/{version}/promote", response_model=PromoteResponse, dependencies=ADMIN
)
def promote_model(
    name: str, version: str, body: PromoteRequest, registry: RegistryDep
) -> PromoteResponse:
    """Point a stage (e.g. 'production', which inference follows) at this version (admin)."""
    ref = registry.promote(name, version, body.stage)
    return PromoteResponse(name=ref.name, version=ref.version, stage=body.stage)
