"""Pure ML code of the finetune service: dataset formats, YOLOv8 detectors, AGDP/finetune
training, COCO evaluation and ONNX export (agssp-spec §5). No transport or storage imports.
"""
