"""Where the time of one ``/detect`` goes, stage by stage, in one process (no HTTP).

    python -m benchmarks.detect_profile [--variant yolov8n] [--runs 20] [--batch 4]

Times, per image, the stages the service runs: JPEG decode (the service's intake), letterbox
and tensor, the ONNX Runtime forward (in each idle-thread spinning mode), NMS with the
box mapping, and the JSON body of the answer; prints a JSON table. The serving benchmark
(``benchmarks.detect``) shows the end-to-end ratio; this shows which part of the rest costs.
"""

from __future__ import annotations

import argparse
import json
import statistics
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from benchmarks.detect_core import export_yolo_onnx
from benchmarks.loadgen import synthetic_image

IMGSZ = 640


def _median_ms(call: Callable[[], object], runs: int) -> float:
    call()
    samples = []
    for _ in range(runs):
        started = time.perf_counter()
        call()
        samples.append((time.perf_counter() - started) * 1000.0)
    return round(statistics.median(samples), 3)


def profile(onnx: Path, runs: int, batch: int) -> dict[str, Any]:
    from services.inference.api.schemas import DetectResponse
    from services.inference.ml.detections import DetectParams
    from services.inference.ml.letterbox import letterbox, letterbox_geometry, to_input_tensor
    from services.inference.ml.onnx_detector import SPIN_MODES, OnnxDetector, _postprocess
    from shared.imaging.intake import ImageLimits, decode_image

    data = synthetic_image(IMGSZ, IMGSZ)
    limits = ImageLimits(max_bytes=32 << 20, max_pixels=60_000_000)
    image = decode_image(data, limits).array
    geometry = letterbox_geometry(image.shape[:2], (IMGSZ, IMGSZ))
    tensor = to_input_tensor([letterbox(image, geometry)] * batch)
    params = DetectParams(conf=0.25)
    stages: dict[str, float] = {
        "decode_jpeg": _median_ms(lambda: decode_image(data, limits), runs),
        "letterbox_and_tensor": _median_ms(
            lambda: to_input_tensor([letterbox(image, geometry)]), runs
        ),
    }
    for spinning in SPIN_MODES:
        detector = OnnxDetector(onnx, spinning=spinning)
        key = f"forward_b{batch}_per_image_spinning_{spinning}"
        stages[key] = round(_median_ms(_forward(detector, tensor), runs) / batch, 3)
    raw = detector.forward(tensor[:1])[0]
    stages["nms_and_scale"] = _median_ms(lambda: _postprocess(raw, geometry, params), runs)
    found = _postprocess(raw, geometry, params)
    stages["detections"] = len(found)
    stages["json_body"] = _median_ms(lambda: _json_body(DetectResponse, found), runs)
    return stages


def _forward(detector: Any, tensor: Any) -> Callable[[], object]:
    return lambda: detector.forward(tensor)


def _json_body(response: Any, found: Any) -> bytes:
    detections = [
        {
            "box_xyxy": box,
            "box_norm": norm,
            "class_id": int(c),
            "class_name": str(c),
            "score": float(s),
        }
        for box, norm, c, s in zip(
            found.boxes.tolist(),
            found.normalized_boxes().tolist(),
            found.class_ids.tolist(),
            found.scores.tolist(),
            strict=True,
        )
    ]
    body = response.model_validate(
        {
            "detections": detections,
            "image": {"width": IMGSZ, "height": IMGSZ},
            "model": {"name": "m", "version": "v"},
            "batch_size": 1,
            "timings": {"decode_ms": 0, "queue_wait_ms": 0, "inference_ms": 0, "total_ms": 0},
        }
    )
    return bytes(body.model_dump_json().encode())


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--variant", default="yolov8n")
    parser.add_argument("--runs", type=int, default=20)
    parser.add_argument("--batch", type=int, default=4)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="detect-profile-") as tmp:
        onnx = export_yolo_onnx(args.variant, Path(tmp), imgsz=IMGSZ, dynamic=True)
        stages = profile(onnx, args.runs, args.batch)
    print(json.dumps({"variant": args.variant, "ms": stages}, indent=1))


if __name__ == "__main__":
    main()
