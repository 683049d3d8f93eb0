"""YOLOv8 detection core: ONNX/ultralytics detectors, letterbox + NMS, and a dynamic batcher.

Pure numpy/onnxruntime/torch code; nothing here knows about HTTP, queues or object storage.
"""
