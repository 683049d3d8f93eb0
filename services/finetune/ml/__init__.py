"""Pure ML code of the finetune service (agssp-spec §5): dataset formats and layouts, splits,
the COCO evaluator, the seam to the detector backends (``backend``), and one module or folder
per detector family (``yolov8/``, ``faster_rcnn``). No transport or storage imports.
"""
