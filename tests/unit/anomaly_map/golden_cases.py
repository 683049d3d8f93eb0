"""Golden cases: KeAD, WinCLIP and ToCoAD maps of tiny seeded models on fixed inputs.

``test_golden.py`` compares these with the arrays stored in ``tests/fixtures/golden/``. After a
deliberate numeric change, re-pin them (and say why in the commit)::

    OMP_NUM_THREADS=1 python -m tests.unit.anomaly_map.golden_cases --write

Everything is seeded: the tiny CLIP (tests/fixtures/tiny-vit.json) and the quarter-width
ResNet-18 take their random init from ``torch.manual_seed``; images come from numpy's PCG64.
"""

from __future__ import annotations

import argparse
from pathlib import Path

import numpy as np
import torch

from services.anomaly_map.ml.clip.backbone import load_clip
from services.anomaly_map.ml.clip.outputs import AnomalyScorer
from services.anomaly_map.ml.clip.prompts import CategoryDescription
from services.anomaly_map.ml.kead.scorer import KeadModel
from services.anomaly_map.ml.tocoad.backbone import create_backbone
from services.anomaly_map.ml.tocoad.data import resize_images
from services.anomaly_map.ml.tocoad.discriminator import Discriminator
from services.anomaly_map.ml.tocoad.model import TocoadModel, build_memory_bank
from services.anomaly_map.ml.tocoad.presets import preset_config
from services.anomaly_map.ml.winclip.scorer import WinClipModel

FIXTURES = Path(__file__).resolve().parents[2] / "fixtures"
GOLDEN = FIXTURES / "golden"
DESCRIPTION = CategoryDescription(
    name="golden_tile",
    object_phrase="tile surface",
    good=("{} without holes",),
    defect=("{} with a crack defect, it appears as a thin dark line",),
)


def images(count: int, height: int, width: int, seed: int) -> list[np.ndarray]:
    """Fixed uint8 RGB images: a ramp plus noise, with a bright bar on odd ones."""
    rng = np.random.default_rng(seed)
    out = []
    for index in range(count):
        ramp = np.linspace(40, 200, width, dtype=np.float32)[None, :, None]
        pixels = ramp + rng.normal(0, 12, (height, width, 3))
        if index % 2:
            pixels[height // 3 : height // 3 + 3, width // 4 : 3 * width // 4] = 250
        out.append(np.clip(pixels, 0, 255).astype(np.uint8))
    return out


def _clip_case(scorer: AnomalyScorer) -> dict[str, np.ndarray]:
    text = scorer.text_features(DESCRIPTION)
    bank = scorer.build_memory_bank(scorer.preprocess(images(2, 30, 50, seed=1)))
    out = scorer.score(scorer.preprocess(images(2, 45, 60, seed=2)), text, bank)
    return {
        "text": text.numpy(),
        "map": out.anomaly_map.numpy(),
        "zero_shot_map": out.zero_shot_map.numpy(),
        "image_score": out.image_score.numpy(),
    }


def clip_cases(model_dir: Path) -> dict[str, dict[str, np.ndarray]]:
    """KeAD (official levels, PIL resampling) and WinCLIP on the seeded tiny CLIP."""
    import open_clip

    open_clip.add_model_config(FIXTURES / "tiny-vit.json")
    torch.manual_seed(0)
    bundle = load_clip("tiny-vit", model_dir=model_dir, device="cpu", allow_random_weights=True)
    return {"kead": _clip_case(KeadModel(bundle)), "winclip": _clip_case(WinClipModel(bundle))}


def tocoad_case() -> dict[str, np.ndarray]:
    """ToCoAD maps of non-square inputs on seeded networks: fused (bank and D) and bank maps
    of padded inputs, bank maps of tiled inputs."""
    cfg = preset_config("tiny", {"map_source": "fused", "aspect": "pad"})
    torch.manual_seed(0)
    backbone = create_backbone(cfg.backbone).eval()
    disc = Discriminator(backbone.channels, backbone.is_bottleneck, cfg.use_f2_skip).eval()
    device = torch.device("cpu")
    normals = resize_images(images(3, 40, 80, seed=3), cfg.image_size, cfg.aspect)
    bank = build_memory_bank(backbone, normals, cfg, device)
    model = TocoadModel(cfg, backbone, bank, disc, device)
    maps, scores = model.score(images(2, 50, 90, seed=4))
    bank_model = TocoadModel(cfg.model_copy(update={"map_source": "bank"}), backbone, bank)
    bank_maps, bank_scores = bank_model.score(images(2, 50, 90, seed=4))
    tile_cfg = cfg.model_copy(update={"map_source": "bank", "aspect": "tile"})
    tile_maps, tile_scores = TocoadModel(tile_cfg, backbone, bank).score(images(2, 50, 90, seed=4))
    return {
        "map": maps,
        "image_score": scores,
        "bank_map": bank_maps,
        "bank_score": bank_scores,
        "tile_map": tile_maps,
        "tile_score": tile_scores,
    }


def compute(model_dir: Path) -> dict[str, dict[str, np.ndarray]]:
    torch.set_num_threads(1)
    return {**clip_cases(model_dir), "tocoad": tocoad_case()}


def main() -> None:
    import tempfile

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--write", action="store_true", help="re-pin the stored arrays")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        cases = compute(Path(tmp))
    if args.write:
        GOLDEN.mkdir(parents=True, exist_ok=True)
        for name, arrays in cases.items():
            np.savez(GOLDEN / f"{name}.npz", **{k: v.astype(np.float32) for k, v in arrays.items()})
            print(f"wrote {GOLDEN / name}.npz: {sorted(arrays)}")


if __name__ == "__main__":
    main()
