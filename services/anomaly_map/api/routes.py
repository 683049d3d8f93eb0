"""Routes of the anomaly_map API: categories, anomaly maps, dataset map jobs, evaluations."""

from __future__ import annotations

from typing import Annotated, Any

from fastapi import APIRouter, BackgroundTasks, Body, Query, Response

from services.anomaly_map.api.deps import (
    CategoriesDep,
    CategoryInputDep,
    CeleryDep,
    EngineDep,
    JobsDep,
    MapInputDep,
    OptionalEngineDep,
    ResponseFormatDep,
    SettingsDep,
    TokenizerDep,
)
from services.anomaly_map.api.responses import map_response
from services.anomaly_map.api.schemas import (
    AnomalyMapResponse,
    CategoryList,
    CategoryResponse,
    EvaluationRequest,
    ImportResponse,
    MapJobRequest,
    MapParams,
    TocoadFitRequest,
    category_request_body,
)
from services.anomaly_map.usecases import anomaly_maps, dataset_maps, evaluations, tocoad_fits
from services.anomaly_map.usecases import categories as category_cases
from shared.http.scopes import require_scope
from shared.http.uploads import image_upload_openapi
from shared.imaging.intake import image_limits
from shared.schemas.jobs import JobRecord

_ERRORS: dict[int | str, dict[str, Any]] = {
    404: {"description": "unknown category (code category_not_found)"},
    413: {"description": "body or image too large"},
    415: {"description": "unsupported content type or image format"},
    422: {"description": "invalid input (codes: prompt_too_long, corrupt_image, ...)"},
    503: {"description": "model weights missing (code model_weights_missing) or storage down"},
}

INSPECT = [require_scope("inspect")]
TRAIN = [require_scope("train")]
ADMIN = [require_scope("admin")]

categories = APIRouter(prefix="/v1/categories", tags=["categories"], responses=_ERRORS)
maps = APIRouter(prefix="/v1", tags=["anomaly maps"], responses=_ERRORS)


@categories.get("", response_model=CategoryList, dependencies=INSPECT)
def list_categories(store: CategoriesDep) -> CategoryList:
    """Latest version of every category."""
    return CategoryList(items=[CategoryResponse.of(store.get(name)) for name in store.names()])


@categories.get("/{name}", response_model=CategoryResponse, dependencies=INSPECT)
def get_category(name: str, store: CategoriesDep, version: str | None = None) -> CategoryResponse:
    """One category (latest version unless ``version`` is given) with its version list."""
    return CategoryResponse.of(store.get(name, version), versions=store.versions(name))


@categories.put(
    "/{name}",
    status_code=201,
    response_model=CategoryResponse,
    openapi_extra=category_request_body(),
    dependencies=ADMIN,
)
def put_category(
    name: str,
    body: CategoryInputDep,
    store: CategoriesDep,
    tokenizer: TokenizerDep,
    settings: SettingsDep,
    engine: OptionalEngineDep,
    background: BackgroundTasks,
) -> CategoryResponse:
    """Create a new version of a category (JSON, or multipart with reference image files).

    Its text features are encoded right after the reply (when CLIP is loaded) and stored, so
    even the first map of the new version does no prompt encoding.
    """
    record = category_cases.put_category(
        store,
        name,
        body.spec,
        body.uploads,
        tokenizer=tokenizer,
        limits=image_limits(settings),
        max_references=settings.max_references,
    )
    if engine is not None:
        background.add_task(category_cases.warm_text_features, engine, [record])
    return CategoryResponse.of(record, versions=store.versions(name))


@categories.delete("/{name}", status_code=204, dependencies=ADMIN)
def delete_category(name: str, store: CategoriesDep) -> Response:
    """Delete a category with all its versions, reference images and memory banks."""
    store.delete(name)
    return Response(status_code=204)


@maps.post(
    "/categories:import",
    status_code=201,
    response_model=ImportResponse,
    tags=["categories"],
    dependencies=ADMIN,
)
def import_categories(
    data: Annotated[dict[str, Any], Body(description="a description file as is (agssp-spec §2)")],
    store: CategoriesDep,
    tokenizer: TokenizerDep,
    settings: SettingsDep,
    engine: OptionalEngineDep,
    background: BackgroundTasks,
    only: Annotated[list[str] | None, Query(description="import only these categories")] = None,
) -> ImportResponse:
    """Import a description JSON file; relative ``samples`` are read under ANOMALY_MAP_DATA_ROOT."""
    result = category_cases.import_descriptions(
        store,
        data,
        tokenizer=tokenizer,
        limits=image_limits(settings),
        data_root=settings.data_root,
        only=only or (),
        max_references=settings.max_references,
    )
    if engine is not None:
        background.add_task(category_cases.warm_text_features, engine, result.created)
    return ImportResponse(
        created=[CategoryResponse.of(r) for r in result.created], warnings=result.warnings
    )


@maps.post(
    "/anomaly-maps",
    response_model=AnomalyMapResponse,
    openapi_extra=image_upload_openapi(MapParams),
    responses={200: {"content": {"application/x-npy": {}, "image/png": {}}}},
    dependencies=INSPECT,
)
def create_anomaly_map(
    engine: EngineDep, fmt: ResponseFormatDep, body: MapInputDep, settings: SettingsDep
) -> Response:
    """Anomaly map of one image: JSON (map as base64 float32), ``.npy`` or PNG overlay by Accept."""
    params = body.params
    request = anomaly_maps.MapRequest(
        category=params.category,
        mode=params.mode,
        resolution=params.resolution,
        overlay=params.overlay or fmt == "png",
        tile=params.tile,
    )
    result = anomaly_maps.generate_map(engine, body.data, request, settings)
    return map_response(result, fmt, params.map_encoding)


@maps.post(
    "/anomaly-map-jobs",
    status_code=202,
    response_model=JobRecord,
    tags=["jobs"],
    dependencies=TRAIN,
)
def submit_map_job(
    body: MapJobRequest, celery: CeleryDep, jobs: JobsDep, store: CategoriesDep
) -> JobRecord:
    """Queue maps for every image under a prefix (one float32 (G, G) .npy per image)."""
    return dataset_maps.submit_dataset_maps(celery, jobs, store, body)


@maps.post(
    "/evaluations", status_code=202, response_model=JobRecord, tags=["jobs"], dependencies=TRAIN
)
def submit_evaluation(
    body: EvaluationRequest, celery: CeleryDep, jobs: JobsDep, store: CategoriesDep
) -> JobRecord:
    """Queue an evaluation (image AUROC, pixel AUROC, AUPRO) on images and masks in the store."""
    return evaluations.submit_evaluation(celery, jobs, store, body)


@maps.post(
    "/tocoad-fits", status_code=202, response_model=JobRecord, tags=["jobs"], dependencies=TRAIN
)
def submit_tocoad_fit(
    body: TocoadFitRequest, celery: CeleryDep, jobs: JobsDep, store: CategoriesDep
) -> JobRecord:
    """Queue a ToCoAD fit for a category version (needed before mode=tocoad maps)."""
    return tocoad_fits.submit_tocoad_fit(celery, jobs, store, body)
