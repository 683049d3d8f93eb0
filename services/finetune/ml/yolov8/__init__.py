"""The YOLOv8 detector family on ultralytics: build and weight transfer (``detector``), our
checkpoint (``checkpoint``), training (``train`` with ``trainer``), batched prediction
(``predict``), ONNX export (``export``), INT8 quantisation (``quantize``) and keeping
ultralytics offline (``offline``). Reached through ``runtime/yolo_backend.py``, the row of
``shared.schemas.detector_families``; the Faster R-CNN family is ``ml/faster_rcnn/``."""
