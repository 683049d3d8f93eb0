"""Training hyper-parameters for AGDP and finetuning: defined in ``shared.schemas.detector``
so that the torch-free finetune API validates with the same classes."""

from shared.schemas.detector import AgdpConfig, DetectorTrainConfig, FinetuneConfig

__all__ = ["AgdpConfig", "DetectorTrainConfig", "FinetuneConfig"]
