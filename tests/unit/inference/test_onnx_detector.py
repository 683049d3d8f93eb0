"""OnnxDetector behaviour beyond parity: batching, metadata, inputs, errors."""

from __future__ import annotations

from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import numpy as np
import onnxruntime as ort
import pytest

from services.inference.ml.detections import Detections, DetectParams
from services.inference.ml.onnx_detector import OnnxDetector
from shared.errors import InvalidInputError, UnavailableError

PARAMS = DetectParams(conf=0.1)


def _assert_equal(a: Detections, b: Detections) -> None:
    assert a.image_hw == b.image_hw
    np.testing.assert_allclose(a.boxes, b.boxes, atol=1e-3)
    np.testing.assert_allclose(a.scores, b.scores, atol=1e-5)
    np.testing.assert_array_equal(a.class_ids, b.class_ids)


@pytest.mark.parametrize("export", ["static", "dynamic"])
def test_batch_results_equal_one_by_one_results(
    yolo_files: Any, parity_images: list[np.ndarray], export: str
) -> None:
    # given a fixed-batch-1 export (runs one by one) or a dynamic one (one run per shape)
    path = yolo_files.static_onnx if export == "static" else yolo_files.dynamic_onnx
    detector = OnnxDetector(path, intra_op_threads=1)
    images = [parity_images[1], parity_images[2], parity_images[1]]

    # when
    together = detector.detect(images, PARAMS)
    alone = [detector.detect([im], PARAMS)[0] for im in images]

    # then
    assert len(together) == 3
    for a, b in zip(together, alone, strict=True):
        assert len(a) > 0
        _assert_equal(a, b)


def test_reusing_the_input_buffer_never_leaks_between_calls(
    yolo_files: Any, parity_images: list[np.ndarray]
) -> None:
    # given one detector called with batches that grow, shrink and change shape, against a
    # fresh detector for every call (whose buffer is new each time)
    detector = OnnxDetector(yolo_files.dynamic_onnx, intra_op_threads=1)
    a, b, c = parity_images[1], parity_images[2], parity_images[3]
    calls = [[a, a, a], [b], [a], [c, a], [a, a, a, a]]

    # when
    reused = [detector.detect(images, PARAMS) for images in calls]
    fresh = [
        OnnxDetector(yolo_files.dynamic_onnx, intra_op_threads=1).detect(images, PARAMS)
        for images in calls
    ]

    # then
    for got, want in zip(reused, fresh, strict=True):
        for one, other in zip(got, want, strict=True):
            _assert_equal(one, other)


def test_threads_sharing_a_detector_do_not_share_input_buffers(
    yolo_files: Any, parity_images: list[np.ndarray]
) -> None:
    # given two slots serving the same model: two batcher threads on one detector
    detector = OnnxDetector(yolo_files.dynamic_onnx, intra_op_threads=1)
    jobs = [[parity_images[1]] * 2, [parity_images[2]] * 2] * 3
    expected = [detector.detect(images, PARAMS) for images in jobs]

    # when they run at the same time
    with ThreadPoolExecutor(max_workers=2) as pool:
        results = list(pool.map(lambda images: detector.detect(images, PARAMS), jobs))

    # then every call got its own images' answers
    for got, want in zip(results, expected, strict=True):
        for one, other in zip(got, want, strict=True):
            _assert_equal(one, other)


def test_fixed_batch_export_is_detected_and_dynamic_one_is_not(yolo_files: Any) -> None:
    static = OnnxDetector(yolo_files.static_onnx)
    dynamic = OnnxDetector(yolo_files.dynamic_onnx)
    assert static.fixed_batch == 1
    assert dynamic.fixed_batch is None
    assert static.imgsz == dynamic.imgsz == (yolo_files.imgsz, yolo_files.imgsz)
    assert "CPUExecutionProvider" in static.providers


def test_dynamic_forward_runs_a_whole_batch_at_once(yolo_files: Any) -> None:
    # given
    detector = OnnxDetector(yolo_files.dynamic_onnx, intra_op_threads=1)
    batch = np.random.default_rng(0).random((3, 3, 64, 96), dtype=np.float32)

    # when
    out = detector.forward(batch)

    # then: 4 box rows + 80 classes, one column per anchor of the 3 strides
    anchors = sum((64 // s) * (96 // s) for s in (8, 16, 32))
    assert out.shape == (3, 84, anchors)


def test_class_names_come_from_metadata_or_the_caller(yolo_files: Any) -> None:
    from_meta = OnnxDetector(yolo_files.static_onnx)
    given = OnnxDetector(yolo_files.static_onnx, names={i: f"defect-{i}" for i in range(80)})
    assert len(from_meta.names) == 80
    assert from_meta.names[3] == "3"
    assert given.names[3] == "defect-3"


def _rewrite_metadata(src: Path, dst: Path, **changes: str | None) -> Path:
    """Copy an export, setting (str) or deleting (None) metadata entries."""
    import onnx

    model = onnx.load(str(src))
    props = {p.key: p.value for p in model.metadata_props}
    props.update({k: v for k, v in changes.items() if v is not None})
    for key in [k for k, v in changes.items() if v is None]:
        props.pop(key, None)
    del model.metadata_props[:]
    onnx.helper.set_model_props(model, props)
    onnx.save(model, str(dst))
    return dst


def test_an_export_without_metadata_still_works(
    yolo_files: Any, parity_images: list[np.ndarray], tmp_path: Path
) -> None:
    # given the fixed-size export stripped of ultralytics' metadata
    bare = _rewrite_metadata(
        yolo_files.static_onnx, tmp_path / "bare.onnx", names=None, stride=None, imgsz=None
    )

    # when
    detector = OnnxDetector(bare, intra_op_threads=1)
    reference = OnnxDetector(yolo_files.static_onnx, intra_op_threads=1)

    # then: class count read off the output, size off the input, same detections
    assert dict(detector.names) == {i: str(i) for i in range(80)}
    assert detector.imgsz == (yolo_files.imgsz, yolo_files.imgsz)
    image = parity_images[1]
    _assert_equal(detector.detect([image], PARAMS)[0], reference.detect([image], PARAMS)[0])


@pytest.mark.parametrize(("key", "value"), [("task", "segment"), ("end2end", "True")])
def test_non_detect_or_end_to_end_exports_are_refused(
    yolo_files: Any, tmp_path: Path, key: str, value: str
) -> None:
    other = _rewrite_metadata(yolo_files.static_onnx, tmp_path / "other.onnx", **{key: value})
    with pytest.raises(InvalidInputError, match="only YOLO detect exports"):
        OnnxDetector(other)


def test_names_that_do_not_match_the_output_are_refused(
    yolo_files: Any, make_image: Callable[..., np.ndarray]
) -> None:
    detector = OnnxDetector(yolo_files.static_onnx, names={0: "scratch", 1: "dent"})
    with pytest.raises(InvalidInputError, match="84 channels"):
        detector.detect([make_image(64, 64)])


def test_grey_and_rgb_inputs_of_the_same_picture_agree(
    yolo_files: Any, parity_images: list[np.ndarray]
) -> None:
    # given the grey parity image as (H, W) and as replicated RGB
    rgb = parity_images[0]
    grey = np.ascontiguousarray(rgb[..., 0])
    detector = OnnxDetector(yolo_files.dynamic_onnx, intra_op_threads=1)

    # when
    from_grey, from_rgb = detector.detect([grey, rgb], PARAMS)

    # then
    assert len(from_rgb) > 0
    _assert_equal(from_grey, from_rgb)


def test_per_image_params_apply_to_their_own_image(
    yolo_files: Any, parity_images: list[np.ndarray]
) -> None:
    # given the same image twice, once with max_det 3
    detector = OnnxDetector(yolo_files.dynamic_onnx, intra_op_threads=1)
    image = parity_images[1]

    # when
    loose, capped = detector.detect([image, image], [PARAMS, DetectParams(conf=0.1, max_det=3)])

    # then
    assert len(loose) > 3
    assert len(capped) == 3
    _assert_equal(
        capped, Detections(loose.boxes[:3], loose.scores[:3], loose.class_ids[:3], loose.image_hw)
    )


def test_boxes_lie_inside_their_own_image(yolo_files: Any, parity_images: list[np.ndarray]) -> None:
    detector = OnnxDetector(yolo_files.dynamic_onnx, intra_op_threads=1)
    for image, dets in zip(parity_images, detector.detect(parity_images, PARAMS), strict=True):
        h, w = image.shape[:2]
        assert dets.image_hw == (h, w)
        assert (dets.boxes >= 0).all()
        assert (dets.boxes[:, [0, 2]] <= w).all()
        assert (dets.boxes[:, [1, 3]] <= h).all()
        assert (dets.normalized_boxes() <= 1).all()


def test_no_images_give_no_results(yolo_files: Any) -> None:
    assert OnnxDetector(yolo_files.static_onnx).detect([]) == []


def test_imgsz_contradicting_a_fixed_export_is_refused(yolo_files: Any) -> None:
    with pytest.raises(InvalidInputError, match="contradicts"):
        OnnxDetector(yolo_files.static_onnx, imgsz=640)


def test_imgsz_off_the_stride_grid_is_refused(yolo_files: Any) -> None:
    with pytest.raises(InvalidInputError, match="stride"):
        OnnxDetector(yolo_files.dynamic_onnx, imgsz=300)


def test_a_file_that_is_not_onnx_is_refused(tmp_path: Path) -> None:
    bad = tmp_path / "model.onnx"
    bad.write_bytes(b"definitely not protobuf")
    with pytest.raises(InvalidInputError, match="not a loadable ONNX model"):
        OnnxDetector(bad)


def test_a_missing_file_is_refused(tmp_path: Path) -> None:
    with pytest.raises(InvalidInputError, match="does not exist"):
        OnnxDetector(tmp_path / "nope.onnx")


def test_an_unknown_device_string_is_refused(yolo_files: Any) -> None:
    with pytest.raises(InvalidInputError, match="device"):
        OnnxDetector(yolo_files.static_onnx, device="tpu")


@pytest.mark.skipif(
    "CUDAExecutionProvider" in ort.get_available_providers(), reason="CUDA provider present"
)
def test_explicit_cuda_without_a_cuda_provider_is_unavailable(yolo_files: Any) -> None:
    with pytest.raises(UnavailableError, match="CUDA"):
        OnnxDetector(yolo_files.static_onnx, device="cuda:0")


@pytest.mark.parametrize(
    ("mode", "allow", "force_stop"),
    [("always", "", ""), ("during_runs", "", "1"), ("off", "0", "")],
)
def test_each_spinning_mode_sets_onnx_runtimes_switches(
    yolo_files: Any, monkeypatch: pytest.MonkeyPatch, mode: str, allow: str, force_stop: str
) -> None:
    # given a session factory that records the options it is given
    seen: list[ort.SessionOptions] = []
    real = ort.InferenceSession

    def recording(source: Any, options: ort.SessionOptions, **kwargs: Any) -> Any:
        seen.append(options)
        return real(source, options, **kwargs)

    monkeypatch.setattr(ort, "InferenceSession", recording)
    # when a detector opens the export in that mode, it still detects
    detector = OnnxDetector(yolo_files.static_onnx, spinning=mode)  # type: ignore[arg-type]
    assert detector.forward(np.zeros((1, 3, yolo_files.imgsz, yolo_files.imgsz), np.float32)).size
    # then ORT got the switches of that mode, and nothing for the ones left at its default
    config = seen[0].get_session_config_entry
    assert _entry(config, "session.intra_op.allow_spinning") == allow
    assert _entry(config, "session.force_spinning_stop") == force_stop


def _entry(config: Callable[[str], str], key: str) -> str:
    try:
        return config(key)
    except Exception:  # ORT raises for a key never set
        return ""


def test_an_unknown_spinning_mode_is_refused(yolo_files: Any) -> None:
    with pytest.raises(InvalidInputError, match="spinning must be one of"):
        OnnxDetector(yolo_files.static_onnx, spinning="sometimes")  # type: ignore[arg-type]
