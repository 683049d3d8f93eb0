"""Typed ToCoAD configuration (tocoad-spec §12) with CPU defaults; unknown keys are rejected.

Every number has a finite range (and no inf/NaN), so a job config cannot ask for 1e30
iterations or an infinite learning rate: such values are refused with 422 at submission.
"""

from __future__ import annotations

from typing import Annotated, Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

# The named recipes of ``ml.tocoad.presets`` (their values live there, beside the model).
PresetName = Literal["tiny", "demo", "cpu", "gpu"]

BackboneName = Literal["wrn50", "resnet18", "resnet18_quarter"]
LayerName = Literal["layer1", "layer2", "layer3", "layer4"]
MapSource = Literal["bank", "segmentation", "fused"]
AspectMode = Literal["tile", "pad", "squash"]
_MAX_ITERS = 1_000_000


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True, allow_inf_nan=False)


class GeneratorConfig(_Strict):
    """Synthetic anomaly generator G (tocoad-spec §3)."""

    kind: Literal["perlin", "cutpaste"] = Field("perlin", description="perlin (paper best)")
    perlin_scale_exp: tuple[int, int] = Field(
        (0, 6), description="lattice cells per axis are 2**a, a in [lo, hi)"
    )
    perlin_threshold: float = Field(0.5, ge=-1.0, le=1.0, description="mask = noise > threshold")
    beta_range: tuple[float, float] = Field(
        (0.0, 0.8), description="share of the normal image kept inside the mask"
    )
    p_keep_normal: float = Field(0.5, ge=0.0, le=1.0, description="share of unaltered samples")
    rotate_prob: float = Field(
        0.0, ge=0.0, le=1.0, description="DRAEM uses 0.3; keep 0 for orientation-bound objects"
    )
    n_procedural_textures: int = Field(
        200, ge=1, le=10_000, description="size of the in-memory texture bank"
    )
    p_self_source: float = Field(
        0.5, ge=0.0, le=1.0, description="share of textures cut from other normal images"
    )
    p_labelled: float = Field(
        0.5,
        ge=0.0,
        le=1.0,
        description="share of synthetic anomalies pasted from labelled defects, when the fit "
        "is given some (the rest come from `kind`)",
    )
    p_native: float = Field(
        0.5,
        ge=0.0,
        le=1.0,
        description="share of Stage I samples that are a labelled defect image itself (its "
        "paste side), target the union of its boxes, when the fit is given labelled defects; "
        "0 draws exactly as before this option. 0.5: on NEU-DET (demo preset) it took the "
        "pseudo boxes from below random boxes to precision 0.49 / recall 0.26 at IoU 0.3",
    )

    @field_validator("perlin_scale_exp")
    @classmethod
    def _exp_range(cls, value: tuple[int, int]) -> tuple[int, int]:
        lo, hi = value
        if not 0 <= lo < hi <= 6:
            raise ValueError(f"perlin_scale_exp {value} must satisfy 0 <= lo < hi <= 6")
        return value

    @field_validator("beta_range")
    @classmethod
    def _beta(cls, value: tuple[float, float]) -> tuple[float, float]:
        if not 0.0 <= value[0] <= value[1] <= 1.0:
            raise ValueError(f"beta_range {value} must satisfy 0 <= lo <= hi <= 1")
        return value


class Stage1Config(_Strict):
    """Stage I, discriminative network pretraining (tocoad-spec §5)."""

    iters: int = Field(3000, ge=0, le=_MAX_ITERS)
    batch_size: int = Field(8, ge=1, le=1024)
    lr: float = Field(1.0e-4, gt=0, le=10.0)
    milestones: tuple[Annotated[float, Field(ge=0.0, le=1.0)], ...] = Field(
        (0.8, 0.9), max_length=16, description="fractions of iters"
    )
    lr_decay: float = Field(0.2, gt=0, le=1.0, description="lr factor at each milestone")
    focal_alpha: float = Field(0.5, ge=0.0, le=1.0)
    focal_gamma: float = Field(2.0, ge=0.0, le=10.0)
    dice_weight: float = Field(
        0.0, ge=0.0, le=100.0, description="unofficial code adds 0.5; paper none"
    )
    train_backbone: Literal["auto"] | bool = Field(
        "auto", description="auto: train F jointly iff no backbone weights are given"
    )
    val_size: int = Field(32, ge=0, le=4096, description="fixed synthetic validation images")
    val_every: int = Field(500, ge=1, le=_MAX_ITERS)


class Stage2Config(_Strict):
    """Stage II, negative-guided contrastive learning (tocoad-spec §6)."""

    iters: int = Field(2000, ge=0, le=_MAX_ITERS)
    batch_size: int = Field(8, ge=2, le=1024, description="BatchNorm in the heads needs >= 2")
    lr_backbone: float | None = Field(
        None, gt=0, le=10.0, description="None: 1e-5 with pretrained weights, 1e-4 from scratch"
    )
    lr_heads: float = Field(1.0e-4, gt=0, le=10.0)
    weight_decay: float = Field(1.0e-5, ge=0, le=1.0)
    layers: tuple[LayerName, ...] = Field(("layer3", "layer4"), min_length=1)
    train_layers: Literal["auto", "l34", "all"] = Field(
        "auto", description="auto: l34 with pretrained weights, all from scratch"
    )
    proj_dim: int = Field(512, ge=2, le=8192, description="SimSiam uses 2048")
    pred_dim: int = Field(128, ge=1, le=8192, description="SimSiam uses 512")
    proj_hidden_ratio: float = Field(
        0.5, gt=0, le=8.0, description="projector hidden = C_l * ratio"
    )
    lambda_neg: float = Field(1.0, ge=0, le=100.0)
    explicit_negatives: bool = Field(False, description="mechanism B")
    lambda_rep: float = Field(0.1, ge=0, le=100.0)
    rep_margin: float = Field(0.0, ge=-10.0, le=10.0)
    bn_mode: Literal["auto", "train", "eval"] = Field(
        "auto", description="auto: eval with pretrained weights, train from scratch"
    )
    texture_category: bool = Field(False, description="also vertical flips and rot90 in views")


class BankConfig(_Strict):
    """PatchCore-like memory bank and test-time scoring (tocoad-spec §7)."""

    layers: tuple[LayerName, ...] = Field(("layer2", "layer3"), min_length=1)
    patch_size: int = Field(3, ge=1, le=15)
    embed_dim: int = Field(1024, ge=1, le=8192)
    coreset_ratio: float = Field(0.01, gt=0, le=1.0, description="GPU default 0.1")
    proj_dim: int = Field(
        128, ge=1, le=4096, description="random projection for the coreset search"
    )
    n_starts: int = Field(10, ge=1, le=1000)
    k: int = Field(1, ge=1, le=64)
    smoothing_sigma: float = Field(4.0, ge=0, le=64.0)
    batch_size: int = Field(16, ge=1, le=1024, description="images per feature forward")

    @field_validator("patch_size")
    @classmethod
    def _odd(cls, value: int) -> int:
        if value % 2 == 0:
            raise ValueError(f"patch_size {value} must be odd so patches stay centred")
        return value


class TocoadConfig(_Strict):
    """Everything that defines a ToCoAD run; saved with the model bundle."""

    image_size: int = Field(128, le=1024, description="S; GPU 256, CI 64")
    backbone: BackboneName = "resnet18"
    backbone_weights: str | None = Field(
        None, description="local torchvision-format state_dict; None trains from scratch"
    )
    generator: GeneratorConfig = GeneratorConfig()
    stage1: Stage1Config = Stage1Config()
    stage2: Stage2Config = Stage2Config()
    bank: BankConfig = BankConfig()
    use_f2_skip: bool = Field(False, description="D also receives layer2 (tocoad-spec §4.2)")
    use_d_map: bool = Field(False, description="same as map_source='fused' (older configs)")
    map_source: MapSource = Field(
        "bank",
        description="bank: memory-bank distances (paper); segmentation: D's probability "
        "(Stage I output); fused: 0.5 scaled bank + 0.5 D (tocoad-spec §7.7)",
    )
    aspect: AspectMode = Field(
        "squash",
        description="tile: short side to S, overlapping S x S tiles (thin defects keep the most "
        "pixels); pad: long side to S, reflect-padded; squash: resize to S x S (tocoad-spec §2)",
    )
    checkpoint_every: int = Field(200, ge=1, le=_MAX_ITERS)
    log_every: int = Field(20, ge=1, le=_MAX_ITERS)
    seed: int = Field(0, ge=0, le=2**31 - 1)

    @field_validator("image_size")
    @classmethod
    def _size(cls, value: int) -> int:
        # tocoad-spec §3: the finest Perlin lattice has 32 cells, and layer4 is at S/32.
        if value < 32 or value % 32:
            raise ValueError(f"image_size {value} must be a multiple of 32 (e.g. 64, 128, 256)")
        return value

    @model_validator(mode="after")
    def _layers_exist(self) -> TocoadConfig:
        if self.stage2.train_layers == "l34" and not set(self.stage2.layers) <= {
            "layer3",
            "layer4",
        }:
            raise ValueError("stage2.train_layers 'l34' needs stage2.layers within layer3/layer4")
        return self

    @property
    def source(self) -> MapSource:
        """What the maps are made of (``use_d_map`` is the older spelling of 'fused')."""
        return "fused" if self.use_d_map and self.map_source == "bank" else self.map_source

    @property
    def needs_discriminator(self) -> bool:
        """True when scoring uses D (segmentation or fused maps)."""
        return self.source != "bank"

    @property
    def pretrained(self) -> bool:
        """True when F starts from a supplied weights file (the paper's recipe)."""
        return self.backbone_weights is not None
