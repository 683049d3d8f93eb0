"""Gallery routes of the finetune API: stored image sets in pages with their overlays (a
dataset split, a pseudo-label output, a model's saved evaluation, any image prefix), the
thumbnails they are shown from, and the anomaly maps drawn over them (scope train, as the
dataset routes: a gallery shows the same data)."""

from __future__ import annotations

import threading
from typing import Annotated, Any
from weakref import WeakKeyDictionary

from fastapi import APIRouter, Depends, Query, Request, Response
from pydantic import BaseModel

from services.finetune.api.deps import state_of
from services.finetune.params import SPLIT_PATTERN
from services.finetune.usecases import gallery_media
from services.finetune.usecases.galleries import Galleries, PoolSummary
from services.finetune.usecases.gallery_media import MapPayload
from services.finetune.usecases.gallery_pages import MAX_PAGE, GalleryFilter, GalleryPage, SortOrder
from shared.http.scopes import require_scope
from shared.http.state import store_of
from shared.imaging.intake import image_limits

_ERRORS: dict[int | str, dict[str, Any]] = {
    404: {"description": "unknown dataset, split, pool, image, map, model or version, or no "
          "saved evaluation (codes dataset_not_found, split_not_found, pool_not_found, "
          "image_not_found, map_not_found, model_not_found, artifact_not_found, "
          "evaluation_not_found)"},
    422: {"description": "invalid parameters (codes validation_error, invalid_key, "
          "unknown_class, no_scores, no_evaluation (a miss or false-alarm filter on a set "
          "that is not an evaluation), invalid_score_range, invalid_side, not_an_image, "
          "invalid_model_ref, evaluation_without_errors, ...)"},
    503: {"description": "storage unavailable"},
}  # fmt: skip
# Browsers keep a thumbnail a day: its key names the source image and side.
THUMBNAIL_HEADERS = {"Cache-Control": "private, max-age=86400"}

galleries = APIRouter(
    prefix="/v1/galleries",
    tags=["galleries"],
    responses=_ERRORS,
    dependencies=[require_scope("train")],
)
# One Galleries (with its cached set indexes) per store, i.e. per app.
_BY_STORE: WeakKeyDictionary[Any, Galleries] = WeakKeyDictionary()
_LOCK = threading.Lock()


def _galleries(request: Request) -> Galleries:
    store = store_of(request)
    with _LOCK:
        found = _BY_STORE.get(store)
        if found is None:
            found = _BY_STORE[store] = Galleries(store)
    return found


CLASS_HELP = "boxes of it (on an evaluation: ground-truth or predicted)"
MissQuery = Annotated[
    bool | None, Query(description="evaluations: with (true) or without a box the model missed")
]
FalseAlarmQuery = Annotated[
    bool | None, Query(description="evaluations: with (true) or without a false alarm")
]


def _filters(
    class_name: Annotated[str | None, Query(max_length=200, description=CLASS_HELP)] = None,
    has_boxes: Annotated[bool | None, Query(description="with (true) or without boxes")] = None,
    min_score: Annotated[float | None, Query(allow_inf_nan=False)] = None,
    max_score: Annotated[float | None, Query(allow_inf_nan=False)] = None,
    sort: Annotated[SortOrder, Query(description="stored order, or highest score first")] = "name",
    has_miss: MissQuery = None,
    has_false_alarm: FalseAlarmQuery = None,
) -> GalleryFilter:
    return GalleryFilter(
        class_name, has_boxes, min_score, max_score, sort, has_miss, has_false_alarm
    )


GalleriesDep = Annotated[Galleries, Depends(_galleries)]
FilterDep = Annotated[GalleryFilter, Depends(_filters)]
Offset = Annotated[int, Query(ge=0, description="index of the first image of the page")]
Limit = Annotated[int, Query(ge=1, le=MAX_PAGE, description="images per page")]
DatasetQuery = Annotated[
    str | None, Query(description="'name' or 'name:version'; default: the newest evaluated")
]
SplitQuery = Annotated[str, Query(pattern=SPLIT_PATTERN)]
Inline = Annotated[
    int | None, Query(description="inline each image's thumbnail of this side (128, 256, 512)")
]


class PoolList(BaseModel):
    items: list[PoolSummary]


@galleries.get("/datasets/{name}/{version}/{split}", response_model=GalleryPage)
def dataset_gallery(
    name: str,
    version: str,
    split: str,
    request: Request,
    sets: GalleriesDep,
    filters: FilterDep,
    offset: Offset = 0,
    limit: Limit = 100,
    thumbnails: Inline = None,
) -> GalleryPage:
    """A page of a dataset version's split (``latest`` for the newest) with ground-truth boxes."""
    page = sets.dataset_page(name, version, split, filters, offset, limit)
    return _inline(request, sets, page, thumbnails)


@galleries.get("/evaluations/{name}/{version}", response_model=GalleryPage)
def evaluation_gallery(
    name: str,
    version: str,
    request: Request,
    sets: GalleriesDep,
    filters: FilterDep,
    dataset: DatasetQuery = None,
    split: SplitQuery = "val",
    offset: Offset = 0,
    limit: Limit = 100,
    thumbnails: Inline = None,
) -> GalleryPage:
    """A page of a model version's saved evaluation on a split: ground-truth boxes (found or
    missed) and the predictions at its conf (matched or false alarms)."""
    page = sets.evaluation_page(name, version, dataset, split, filters, offset, limit)
    return _inline(request, sets, page, thumbnails)


def _inline(request: Request, sets: Galleries, page: GalleryPage, side: int | None) -> GalleryPage:
    if side is None:
        return page
    limits = image_limits(state_of(request).settings)
    return gallery_media.with_thumbnails(sets.thumbnails, page, side, limits)


@galleries.get("/pools", response_model=PoolList)
def list_pools(sets: GalleriesDep) -> PoolList:
    """Finished pseudo-label outputs under ``pseudo/``, newest first."""
    return PoolList(items=sets.pools())


@galleries.get("/prefix", response_model=GalleryPage)
def prefix_gallery(
    request: Request,
    sets: GalleriesDep,
    filters: FilterDep,
    prefix: Annotated[str, Query(min_length=1, max_length=512)],
    offset: Offset = 0,
    limit: Limit = 100,
    thumbnails: Inline = None,
) -> GalleryPage:
    """A page of a pseudo-label output (pseudo boxes, scores, maps) or of any image prefix."""
    page = sets.pool_page(prefix, filters, offset, limit)
    return _inline(request, sets, page, thumbnails)


@galleries.get(
    "/thumbnails/{key:path}",
    response_class=Response,
    responses={200: {"content": {"image/jpeg": {}}}},
)
def get_thumbnail(
    key: str,
    request: Request,
    sets: GalleriesDep,
    side: Annotated[int, Query(description="128, 256, 512 or 1024")] = 256,
) -> Response:
    """The JPEG thumbnail of a stored image, made on first use and cached under ``thumbs/``."""
    limits = image_limits(state_of(request).settings)
    body = gallery_media.thumbnail(sets.thumbnails, key, side, limits)
    return Response(body, media_type="image/jpeg", headers=THUMBNAIL_HEADERS)


@galleries.get("/maps/{key:path}", response_model=MapPayload)
def get_map(key: str, request: Request) -> MapPayload:
    """A stored anomaly map (``.npy``) as its float grid, to draw over its image."""
    return gallery_media.anomaly_map(store_of(request), key)
