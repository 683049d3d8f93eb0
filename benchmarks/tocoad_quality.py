"""ToCoAD quality on a masked data set (Magnetic-tile by default), against two baselines.

Data: any images + masks folder the importer recognises (``--dataset PATH``: images/ +
masks/, masks beside their images, YOLO segmentation labels; ``benchmarks.mask_sets``).
Split (fixed, seeded): defect-free images, 80 % fit the model; the test set is the other 20 %
plus every defect image with its mask, less the ``--labelled-per-class`` defect images per
class (seeded) that go to the fit side as the labelled defects: never a test image, and every
variant is scored on the same reduced test. Duplicate pictures are kept on one side: on
Magnetic-tile 241 images fall in 106 groups (one tile under several exposures, ``exp1``-``exp6``),
22 of which straddled the per-image split used before (4 with a labelled defect), so the
results written before this split are optimistic by that much leakage.

Variants scored on the same test images (maps compared with masks at S x S, masks squashed and
binarised at 0.5 as in ``services.anomaly_map.usecases.evaluations``):

- ``tocoad``: the full fit (Stage I, Stage II, bank) with the preset's map source;
- ``stage1_only``: D's segmentation probability right after Stage I;
- ``bank_only``: a memory bank on F right after Stage I (no Stage II);
- ``median_residual``: |grey - median filter(grey)|, smoothed (no training);
- ``pixel_gaussian``: per-pixel z-score against the mean and std of the training normals;
- ``tocoad_<source>``: extra rows, the full fit scored with its other map sources;
- ``tocoad_labelled``: a second full fit whose Stage I also pastes the labelled defects (their
  mask regions, feathered, with geometric and photometric jitter; ``ml.tocoad.defects``), with
  ``generator.p_native`` 0: the variant as measured before native samples existed;
- ``tocoad_native``: a third full fit that pastes them too and also trains on the labelled
  images themselves (``generator.p_native`` of the Stage I samples, the config's share, 0.5 by
  default), their masks as targets, as the suite's fit job does with boxes.

``--fits`` picks which fits run (``plain`` for the first four rows, ``labelled``, ``native``);
the baselines always run.

Writes ``benchmarks/results/tocoad_quality.json``; with ``--variant-name`` the numbers are also
appended to ``benchmarks/results/tocoad_variants.json`` (a variant experiment). ``--quick``
checks the whole path in a minute or two on a tiny preset and a test subset (numbers
meaningless). Run on a quiet machine::

    OMP_NUM_THREADS=2 python -m benchmarks.tocoad_quality --preset cpu
"""

from __future__ import annotations

import argparse
import copy
import json
import os
import sys
import tempfile
import time
from collections.abc import Callable, Sequence
from functools import partial
from pathlib import Path
from typing import Any

import cv2
import numpy as np
import torch
from scipy import ndimage

from benchmarks import provenance
from benchmarks.mask_sets import (
    SPLIT_SEED,
    MaskedImage,
    Split,
    find_masked_images,
    limit_test,
    make_split,
    read_masks,
)
from services.anomaly_map.ml.metrics import aupro, image_auroc, pixel_auroc
from services.anomaly_map.ml.tocoad.backbone import ResNetFeatures
from services.anomaly_map.ml.tocoad.data import resize_images
from services.anomaly_map.ml.tocoad.defects import (
    DefectExemplar,
    NativeSample,
    exemplars_from_mask,
    natives_from_mask,
)
from services.anomaly_map.ml.tocoad.discriminator import Discriminator
from services.anomaly_map.ml.tocoad.fit import fit_tocoad
from services.anomaly_map.ml.tocoad.model import TocoadModel, build_memory_bank
from services.anomaly_map.ml.tocoad.presets import PRESETS, merge, preset_config
from services.anomaly_map.params.tocoad import TocoadConfig
from shared.errors import InvalidInputError
from shared.ml.hooks import TrainHooks

ROOT = Path(__file__).resolve().parents[1]
DATA = ROOT.parent / "shared" / "data" / "magnetic-tile"
RESULTS = ROOT / "benchmarks" / "results"
QUICK = {
    "image_size": 64,
    "backbone": "resnet18_quarter",
    "stage1": {"iters": 20, "batch_size": 4, "val_size": 4, "val_every": 20},
    "stage2": {"iters": 5, "batch_size": 4, "proj_dim": 32, "pred_dim": 16},
    "bank": {"coreset_ratio": 0.1, "embed_dim": 64},
    "generator": {"n_procedural_textures": 8},
    "log_every": 5,
}
FITS = ("plain", "labelled", "native")


def labelled_samples(
    items: Sequence[MaskedImage], cfg: TocoadConfig
) -> tuple[list[DefectExemplar], list[NativeSample]]:
    """The labelled defects' mask regions as exemplars at the model's scale and, when
    ``cfg.generator.p_native`` > 0, the labelled images as native samples (target: their
    masks), as ``services.anomaly_map.usecases.tocoad_fits`` builds them from boxes."""
    exemplars: list[DefectExemplar] = []
    natives: list[NativeSample] = []
    for item in items:
        image, mask = read_rgb(item.path), item.mask()
        exemplars += exemplars_from_mask(image, mask, cfg.image_size, cfg.aspect)
        if cfg.generator.p_native > 0:
            natives += natives_from_mask(image, mask, cfg.image_size, cfg.aspect)
    return exemplars, natives


def without_natives(cfg: TocoadConfig) -> TocoadConfig:
    """``cfg`` with ``generator.p_native`` 0: ``tocoad_labelled`` as it was measured before."""
    generator = cfg.generator.model_copy(update={"p_native": 0.0})
    return cfg.model_copy(update={"generator": generator})


def read_rgb(path: Path) -> np.ndarray:
    image = cv2.imread(str(path), cv2.IMREAD_COLOR)
    if image is None:
        raise SystemExit(f"cannot read {path}")
    return cv2.cvtColor(image, cv2.COLOR_BGR2RGB)


def _timed(run: Callable[[], tuple[np.ndarray, np.ndarray]], count: int) -> tuple[Any, float]:
    started = time.perf_counter()
    result = run()
    return result, 1000.0 * (time.perf_counter() - started) / max(count, 1)


def _metrics(
    maps: np.ndarray, scores: np.ndarray, split: Split, masks: np.ndarray, ms: float
) -> dict[str, float]:
    return {
        "image_auroc": round(image_auroc(np.array(split.labels), scores), 4),
        "pixel_auroc": round(pixel_auroc(masks, maps), 4),
        "aupro": round(aupro(masks, maps), 4),
        "ms_per_image": round(ms, 2),
    }


def median_residual(images: Sequence[np.ndarray], size: int) -> tuple[np.ndarray, np.ndarray]:
    """|grey - median(grey)| at S x S (kernel S/8), Gaussian-smoothed (sigma 2); score = max."""
    kernel = max(3, (size // 8) | 1)
    maps = []
    for image in resize_images(images, size):
        grey = cv2.cvtColor(image, cv2.COLOR_RGB2GRAY)
        residual = np.abs(grey.astype(np.float32) - cv2.medianBlur(grey, kernel))
        maps.append(ndimage.gaussian_filter(residual, 2.0))
    out = np.stack(maps).astype(np.float32)
    return out, out.reshape(len(out), -1).max(1)


class PixelGaussian:
    """Per-pixel mean and std of the training normals (squashed to S x S, grey)."""

    def __init__(self, images: Sequence[np.ndarray], size: int) -> None:
        grey = self._grey(images, size)
        self.size, self.mean, self.std = size, grey.mean(0), grey.std(0) + 1.0

    @staticmethod
    def _grey(images: Sequence[np.ndarray], size: int) -> np.ndarray:
        squashed = resize_images(images, size)
        return np.stack([cv2.cvtColor(i, cv2.COLOR_RGB2GRAY) for i in squashed]).astype(np.float32)

    def __call__(self, images: Sequence[np.ndarray]) -> tuple[np.ndarray, np.ndarray]:
        z = np.abs(self._grey(images, self.size) - self.mean) / self.std
        maps = np.stack([ndimage.gaussian_filter(m, 2.0) for m in z]).astype(np.float32)
        return maps, maps.reshape(len(maps), -1).max(1)


class Stage1Snapshot:
    """Copies of F and D right after Stage I, for the stage1_only and bank_only variants."""

    def __init__(self) -> None:
        self.parts: tuple[ResNetFeatures, Discriminator] | None = None
        self.at = 0.0

    def __call__(self, backbone: ResNetFeatures, disc: Discriminator) -> None:
        self.parts = (copy.deepcopy(backbone).eval(), copy.deepcopy(disc).eval())
        self.at = time.perf_counter()

    def models(
        self, cfg: TocoadConfig, normals: np.ndarray, device: torch.device
    ) -> dict[str, TocoadModel]:
        assert self.parts is not None, "Stage I did not run"
        backbone, disc = self.parts
        seg_cfg = cfg.model_copy(update={"map_source": "segmentation", "use_d_map": False})
        bank_cfg = cfg.model_copy(update={"map_source": "bank", "use_d_map": False})
        bank = build_memory_bank(backbone, normals, bank_cfg, device)
        return {
            "stage1_only": TocoadModel(seg_cfg, backbone, bank, disc, device),
            "bank_only": TocoadModel(bank_cfg, backbone, bank, None, device),
        }


def _progress(percent: float, message: str, metrics: Any) -> None:
    print(f"[{percent:5.1f} %] {message}", flush=True)


def _variants(model: TocoadModel, snapshot: Stage1Snapshot, train: list[np.ndarray]) -> Any:
    cfg = model.cfg
    models = {"tocoad": model, **snapshot.models(cfg, model_normals(train, cfg), model.device)}
    # Extra rows from the same fit: the full model's other map sources (tocoad-spec §7.7).
    for source in ("bank", "segmentation", "fused"):
        if source != cfg.source and model.discriminator is not None:
            other = cfg.model_copy(update={"map_source": source, "use_d_map": False})
            models[f"tocoad_{source}"] = TocoadModel(
                other, model.backbone, model.bank, model.discriminator, model.device
            )
    return models


def run(args: argparse.Namespace, save: Callable[[dict[str, Any]], None]) -> dict[str, Any]:
    """Score the baselines, fit, score every variant; ``save`` gets the report after each step
    (so a run stopped by a time limit still leaves what it measured)."""
    overrides = json.loads(args.config) if args.config else {}
    if args.quick:
        overrides = merge(QUICK, overrides)
    cfg = preset_config(args.preset, overrides)
    items, layout = find_masked_images(args.data)
    full = make_split(items, args.labelled_per_class)
    split = limit_test(full, args.test_limit or (48 if args.quick else None))
    train_paths = [
        it.path for it in split.train[: args.train_limit or (32 if args.quick else None)]
    ]
    device = torch.device(args.device) if args.device != "auto" else None
    print(f"train {len(train_paths)}, test {len(split.test)} ({sum(split.labels)} defects)")
    train = [read_rgb(p) for p in train_paths]
    test = [read_rgb(it.path) for it in split.test]
    masks = read_masks(split.test, cfg.image_size)
    results: dict[str, dict[str, float]] = {}
    report: dict[str, Any] = {
        "preset": args.preset,
        "quick": args.quick,
        "overrides": overrides,
        "config": cfg.model_dump(mode="json"),
        "dataset": {"path": str(args.data), "layout": layout, "images": len(items)},
        "split": {
            "seed": SPLIT_SEED,
            "duplicate_groups": full.duplicate_groups,
            "train": len(train_paths),
            "test": len(split.test),
            "test_defects": int(sum(split.labels)),
            "labelled_defects": len(split.labelled),
            "labelled_per_class": args.labelled_per_class,
        },
        "fit_s": None,
        "stage1_s": None,
        "results": results,
    }
    size = cfg.image_size
    (maps, scores), ms = _timed(lambda: median_residual(test, size), len(test))
    results["median_residual"] = _metrics(maps, scores, split, masks, ms)
    gaussian = PixelGaussian(train, size)
    (maps, scores), ms = _timed(lambda: gaussian(test), len(test))
    results["pixel_gaussian"] = _metrics(maps, scores, split, masks, ms)
    print("baselines", dict(results), flush=True)
    save(report)
    if "plain" in args.fits:
        _plain_fit(cfg, train, test, split, masks, device, report)
        save(report)
    for fit in ("labelled", "native"):
        if fit in args.fits:
            fit_cfg = without_natives(cfg) if fit == "labelled" else cfg
            _labelled_fit(fit, fit_cfg, train, test, split, masks, device, report)
            save(report)
    return report


def _labelled_fit(
    name: str,
    cfg: TocoadConfig,
    train: list[np.ndarray],
    test: list[np.ndarray],
    split: Split,
    masks: np.ndarray,
    device: torch.device | None,
    report: dict[str, Any],
) -> None:
    """A full fit given the labelled defects (exemplars, and native samples when
    ``cfg.generator.p_native`` > 0), scored as ``tocoad_<name>``."""
    exemplars, natives = labelled_samples(split.labelled, cfg)
    started = time.perf_counter()
    model = fit_tocoad(
        train, cfg, hooks=TrainHooks(on_progress=_progress), device=device or "auto",
        defects=exemplars, natives=natives,
    )  # fmt: skip
    report[f"{name}_fit_s"] = round(time.perf_counter() - started, 1)
    report[f"{name}_exemplars"] = len(exemplars)
    report[f"{name}_native_samples"] = len(natives)
    report[f"{name}_p_native"] = cfg.generator.p_native
    (maps, scores), ms = _timed(partial(model.score, test), len(test))
    report["results"][f"tocoad_{name}"] = _metrics(maps, scores, split, masks, ms)
    print(f"tocoad_{name}", report["results"][f"tocoad_{name}"], flush=True)


def _plain_fit(
    cfg: TocoadConfig,
    train: list[np.ndarray],
    test: list[np.ndarray],
    split: Split,
    masks: np.ndarray,
    device: torch.device | None,
    report: dict[str, Any],
) -> None:
    """Today's fit (normals only) and its Stage-I and map-source variants."""
    results = report["results"]
    snapshot = Stage1Snapshot()
    started = time.perf_counter()
    model = fit_tocoad(
        train,
        cfg,
        hooks=TrainHooks(on_progress=_progress),
        device=device or "auto",
        after_stage1=snapshot,
    )
    report["fit_s"] = round(time.perf_counter() - started, 1)
    report["stage1_s"] = round(snapshot.at - started, 1)
    for name, variant in _variants(model, snapshot, train).items():
        (maps, scores), ms = _timed(partial(variant.score, test), len(test))
        results[name] = _metrics(maps, scores, split, masks, ms)
        print(name, results[name], flush=True)


def model_normals(images: Sequence[np.ndarray], cfg: TocoadConfig) -> np.ndarray:
    """The training normals as the fit saw them (S x S, the config's aspect handling)."""
    return resize_images(images, cfg.image_size, cfg.aspect)


def machine() -> dict[str, Any]:
    return provenance.machine() | {
        "torch": torch.__version__,
        "torch_threads": torch.get_num_threads(),
        "cuda": torch.cuda.get_device_name(0) if torch.cuda.is_available() else None,
    }


def _append_variant(path: Path, name: str, report: dict[str, Any]) -> None:
    existing: dict[str, Any] = {"variants": []}
    if path.exists():
        existing = json.loads(path.read_text())
    keep = [
        *("command", "preset", "overrides", "config", "split", "fit_s", "stage1_s", "results"),
        *("load_average", "machine", "wall_s", "complete"),
    ]
    entry = {"name": name, **{k: report[k] for k in keep}, "created_at": report["created_at"]}
    existing["variants"] = [v for v in existing["variants"] if v["name"] != name] + [entry]
    path.write_text(json.dumps(existing, indent=1) + "\n")


def parse(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--preset", default="cpu", choices=sorted(PRESETS))
    parser.add_argument("--config", default=None, help="TocoadConfig overrides as JSON")
    parser.add_argument(
        "--dataset", "--data", dest="data", type=Path, default=DATA,
        help="images + masks folder (any layout `agssp data import` reads); default Magnetic-tile",
    )  # fmt: skip
    parser.add_argument("--device", default="auto")
    parser.add_argument("--threads", type=int, default=0, help="torch threads; 0 = default")
    parser.add_argument("--quick", action="store_true", help="tiny schedule and test subset")
    parser.add_argument("--test-limit", type=int, default=None, help="evenly spaced subset")
    parser.add_argument("--train-limit", type=int, default=None)
    parser.add_argument(
        "--labelled-per-class",
        type=int,
        default=10,
        help="defect pictures per class moved to the fit side (a duplicate group is one)",
    )
    parser.add_argument(
        "--fits",
        nargs="+",
        choices=FITS,
        default=list(FITS),
        help="which fits run (the baselines always do): plain (tocoad and its Stage-I and "
        "map-source rows), labelled (pasted defects, p_native 0), native (pasted defects and "
        "the labelled images themselves, the config's p_native)",
    )
    parser.add_argument(
        "--out", type=Path, default=None,
        help="default: results/tocoad_quality.json, or tocoad_quality_<folder>.json for --dataset",
    )  # fmt: skip
    parser.add_argument("--variant-name", default=None, help="also record in tocoad_variants.json")
    parser.add_argument("--variants-out", type=Path, default=RESULTS / "tocoad_variants.json")
    return parser.parse_args(argv)


def _default_out(args: argparse.Namespace) -> Path:
    """Magnetic-tile's results in the committed file, another set's beside it, and a quick
    check's (numbers meaningless) in the temp folder."""
    if args.quick and not args.variant_name:
        return Path(tempfile.gettempdir()) / "tocoad_quality_quick.json"
    own = args.data.resolve() == DATA.resolve()
    return RESULTS / ("tocoad_quality.json" if own else f"tocoad_quality_{args.data.name}.json")


def main(argv: list[str] | None = None) -> None:
    args = parse(argv)
    if not args.data.is_dir():
        raise SystemExit(f"no data set at {args.data} (--dataset names an images + masks folder)")
    if args.out is None:
        args.out = _default_out(args)
    if args.threads:
        torch.set_num_threads(args.threads)
    load_start = os.getloadavg()
    started = time.perf_counter()
    command = " ".join(["python -m benchmarks.tocoad_quality", *(argv or sys.argv[1:])])

    def save(partial_report: dict[str, Any], complete: bool = False) -> None:
        report = {
            "benchmark": "tocoad_quality",
            "command": command,
            "machine": machine(),
            "load_average": {"start": list(load_start), "end": list(os.getloadavg())},
            **partial_report,
            "complete": complete,
            "wall_s": round(time.perf_counter() - started, 1),
            "created_at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        }
        if args.variant_name:
            _append_variant(args.variants_out, args.variant_name, report)
        else:
            args.out.parent.mkdir(parents=True, exist_ok=True)
            args.out.write_text(json.dumps(report, indent=1) + "\n")

    try:
        report = run(args, save)
    except InvalidInputError as exc:
        raise SystemExit(f"tocoad_quality: {exc}") from exc
    save(report, complete=True)
    where = args.variants_out if args.variant_name else args.out
    print(f"wrote {where} in {round(time.perf_counter() - started, 1)} s")


if __name__ == "__main__":
    main()
