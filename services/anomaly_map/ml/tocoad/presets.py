"""Named ToCoAD schedules (tocoad-spec §10, §12): ``tiny`` for CI, ``demo`` for a first run on a
laptop, ``cpu`` for 2 cores, ``gpu``.

A preset is a partial config; a job's own overrides are merged on top, section by section.

- ``tiny``: tocoad-spec §10's CI config (64 px, quarter-width ResNet-18, a handful of steps);
  a fit takes seconds and its maps mean nothing.
- ``demo``: the ``cpu`` recipe cut to 300 Stage I steps (a fit of 762 Magnetic-tile normals
  took 6-7 minutes on 2 cores, most of it the memory bank and tiling). Measured in
  ``benchmarks/results/tocoad_quality_demo.json``: image AUROC 0.714, pixel AUROC 0.584,
  AUPRO 0.604, above the trivial baselines on image AUROC and AUPRO only; with labelled
  defects pasted it was worse (0.669 / 0.603 / 0.342): 300 steps are too few to learn them.
  The ``cpu-demo`` pipeline uses it anyway (its maps are trained, if weakly, where ``tiny``'s
  mean nothing), and its report says they are weak. On NEU-DET (a pool of defects only; 600
  pool images, 39 labelled images pasted, ``benchmarks/results/agssp_lift_neu-det_demo_boxes.json``)
  its pseudo boxes matched the truth at IoU 0.3 with precision 0.063 / recall 0.159 when Stage I
  only pasted the labelled defects, below random boxes of the same sizes (0.104 / 0.093); with
  half of the samples the labelled images themselves (``generator.p_native`` 0.5, now the
  default) 0.492 / 0.263 against random 0.281 / 0.106 (same sitting, same 300 steps).
- ``cpu``: ResNet-18 from scratch at 128 px on aspect-kept tiles, Stage I only (1600 steps)
  with D's segmentation output as the map. A fit on a few hundred images takes 13-20 minutes
  on 2 quiet cores (Stage I 0.5-0.74 s/step, tocoad-spec §10 and issue 11), so the whole
  quality benchmark stays under 30 minutes. Chosen from the bounded variants in
  ``benchmarks/results/tocoad_variants.json`` (1 thread, 200 training normals, 150 test
  images): at 600 Stage I steps D's map reached image AUROC 0.775 / AUPRO 0.564 / pixel AUROC
  0.623, and 40 Stage II steps on top lowered it to 0.722 / 0.525 / 0.589, so the CPU budget
  goes to Stage I (the bank on Stage-I features had the best pixel AUROC, 0.658, but AUPRO
  0.411 and image AUROC 0.653). Tiles beat squashing (150 steps: pixel AUROC 0.619 vs 0.585,
  AUPRO 0.358 vs 0.288) and matched padding (0.620, AUPRO 0.322); procedural-only anomaly
  textures were worse than the 50/50 mix with self-sourced ones (0.552 vs 0.619).
- ``gpu``: the paper's recipe as far as it is known (tocoad-spec §12: WRN50 at 256 px, 20k
  Stage I steps as §5 suggests for a GPU, 2k Stage II steps, 10 % coreset, bank maps).
"""

from __future__ import annotations

from typing import Any

from services.anomaly_map.params.tocoad import PresetName, TocoadConfig

PRESETS: dict[str, dict[str, Any]] = {
    "tiny": {
        "image_size": 64,
        "backbone": "resnet18_quarter",
        "aspect": "tile",
        "stage1": {"iters": 4, "batch_size": 2, "val_size": 2, "val_every": 4},
        "stage2": {"iters": 2, "batch_size": 2, "proj_dim": 16, "pred_dim": 8},
        "bank": {"coreset_ratio": 0.5, "embed_dim": 32},
        "generator": {"n_procedural_textures": 4},
        "checkpoint_every": 2,
        "log_every": 1,
    },
    "demo": {
        "image_size": 128,
        "backbone": "resnet18",
        "aspect": "tile",
        "map_source": "segmentation",
        "stage1": {"iters": 300, "batch_size": 8, "val_size": 8, "val_every": 100},
        "stage2": {"iters": 0, "batch_size": 8},
        "bank": {"coreset_ratio": 0.01},
        "generator": {"n_procedural_textures": 50},
        "checkpoint_every": 100,
        "log_every": 10,
    },
    "cpu": {
        "image_size": 128,
        "backbone": "resnet18",
        "aspect": "tile",
        "map_source": "segmentation",
        "stage1": {"iters": 1600, "batch_size": 8, "val_size": 16, "val_every": 400},
        "stage2": {"iters": 0, "batch_size": 8},
        "bank": {"coreset_ratio": 0.01},
        "generator": {"n_procedural_textures": 100},
        "checkpoint_every": 250,
        "log_every": 10,
    },
    "gpu": {
        "image_size": 256,
        "backbone": "wrn50",
        "aspect": "tile",
        "map_source": "bank",
        "stage1": {"iters": 20000, "batch_size": 8},
        "stage2": {"iters": 2000, "batch_size": 8, "proj_dim": 2048, "pred_dim": 512},
        "bank": {"coreset_ratio": 0.1},
        "checkpoint_every": 500,
        "log_every": 20,
    },
}


def merge(base: dict[str, Any], overrides: dict[str, Any]) -> dict[str, Any]:
    """``base`` with ``overrides`` on top; nested dicts (config sections) merge key by key."""
    out = dict(base)
    for key, value in overrides.items():
        if isinstance(value, dict) and isinstance(out.get(key), dict):
            out[key] = merge(out[key], value)
        else:
            out[key] = value
    return out


def preset_config(name: PresetName, overrides: dict[str, Any] | None = None) -> TocoadConfig:
    """The validated config of a preset with ``overrides`` merged in.

    Raises:
        pydantic.ValidationError: the merged config is invalid (unknown keys, out of range).
    """
    return TocoadConfig.model_validate(merge(PRESETS[name], overrides or {}))
