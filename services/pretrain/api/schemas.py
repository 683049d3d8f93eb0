"""Public request schemas of the pretrain API (the job parameters the workers read back)."""

from __future__ import annotations

from pydantic import ConfigDict

from services.pretrain.params import AgbpJobParams, PseudoLabelParams, SourceSpec, StartWeights

__all__ = ["PretrainJobRequest", "PseudoLabelJobRequest", "SourceSpec", "StartWeights"]


class PretrainJobRequest(AgbpJobParams):
    """AGBP pretraining: sources of (category, images, maps), AgbpConfig fields, start weights."""

    model_config = ConfigDict(
        extra="forbid",
        json_schema_extra={
            "examples": [
                {
                    "sources": [
                        {
                            "category": "steel",
                            "images_prefix": "datasets/steel/images/",
                            "maps_prefix": "maps/steel/20260101T120000-1a2b3c4d/",
                        }
                    ],
                    "config": {"backbone": "yolov8s", "epochs": 200, "batch_size": 256},
                    "start_weights": {"artifact": "imagenet-yolov8s:latest"},
                }
            ]
        },
    )


class PseudoLabelJobRequest(PseudoLabelParams):
    """Pseudo-defect boxes of one category from its anomaly maps (agssp-spec §3)."""

    model_config = ConfigDict(
        extra="forbid",
        json_schema_extra={
            "examples": [
                {
                    "category": "steel",
                    "images_prefix": "datasets/steel/images/",
                    "maps_prefix": "maps/steel/20260101T120000-1a2b3c4d/",
                    "c": 0.1,
                    "regions": "contours",
                }
            ]
        },
    )
