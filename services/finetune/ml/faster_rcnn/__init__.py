"""The Faster R-CNN family's model code (imported by its backend,
``services/finetune/runtime/faster_rcnn_backend.py``, only): the network and its boxes
(``model``), training (``train``), samples (``data``), checkpoints and start weights
(``checkpoint``), the ONNX graph (``export``) and the export's check on val images
(``onnx_check``)."""
