"""HTTP representations of an anomaly map: JSON, ``.npy`` bytes or a PNG overlay."""

from __future__ import annotations

import base64

from fastapi import Response

from services.anomaly_map.api.deps import ResponseFormat
from services.anomaly_map.api.schemas import AnomalyMapResponse, MapEncoding, MapPayload
from services.anomaly_map.stores.maps import encode_npy, map_payload
from services.anomaly_map.usecases.anomaly_maps import MapResult

_NPY_MEDIA = {"npy": "application/x-npy", "octet": "application/octet-stream"}


def _headers(result: MapResult) -> dict[str, str]:
    headers = {
        "X-Image-Score": f"{result.image_score:.6f}",
        "X-Category-Version": result.record.version,
        "X-Map-Shape": ",".join(str(n) for n in result.anomaly_map.shape),
        "X-Anomaly-Mode": result.mode,
    }
    if result.zero_shot_score is not None:
        headers["X-Zero-Shot-Score"] = f"{result.zero_shot_score:.6f}"
    return headers


def map_json(result: MapResult, encoding: MapEncoding) -> AnomalyMapResponse:
    payload = (
        None if encoding == "none" else MapPayload(**map_payload(result.anomaly_map, encoding))
    )
    overlay = base64.b64encode(result.overlay_png).decode() if result.overlay_png else None
    return AnomalyMapResponse(
        category=result.record.name,
        category_version=result.record.version,
        model=result.model,
        mode=result.mode,
        image_score=result.image_score,
        zero_shot_score=result.zero_shot_score,
        map_shape=list(result.anomaly_map.shape),
        map=payload,
        overlay_png_base64=overlay,
        image_size=list(result.image_size),
        tiles=result.tiles,
        timings_ms={k: round(v, 3) for k, v in result.timings_ms.items()},
    )


def map_response(result: MapResult, fmt: ResponseFormat, encoding: MapEncoding) -> Response:
    """The representation the client asked for; scores travel in headers for binary bodies."""
    if fmt in _NPY_MEDIA:
        return Response(
            encode_npy(result.anomaly_map), media_type=_NPY_MEDIA[fmt], headers=_headers(result)
        )
    if fmt == "png":
        assert result.overlay_png is not None  # the route asks for the overlay with PNG
        return Response(result.overlay_png, media_type="image/png", headers=_headers(result))
    body = map_json(result, encoding).model_dump_json()
    return Response(body, media_type="application/json", headers=_headers(result))
