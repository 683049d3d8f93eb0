"""Does AGSSP pretraining lift a detector trained on a few labels? Measured on the real suite.

``--dataset magnetic-tile`` (the default, ``../shared/data/magnetic-tile``) is imported with
boxes from its masks; ``--dataset neu-det`` with its VOC boxes. Either way: a fixed
validation split (by seed; Magnetic-tile's holds defect-free images too), a labelled
training set of ``--labelled-per-class`` defect images per class (the dataset's ``mini-N``
split: 10 x 5 classes = 50 on Magnetic-tile), and every other image as the unlabelled pool.
Anomaly maps of the pool come from three sources, each run through the same pipeline (maps ->
pseudo boxes -> AGBP -> AGDP -> finetune):

- ``tocoad``: ToCoAD fitted on the pool at ``--tocoad-preset``, its Stage I also pasting the
  labelled set's defect boxes (the pipeline's default), pseudo boxes behind the label-free gate;
- ``random``: the control that asks whether the maps carry information: per pool image the
  same number of boxes as ToCoAD's pseudo boxes, sizes drawn from ToCoAD's box sizes, placed
  uniformly at random, given as maps (the boxes filled in);
- ``oracle``: the method's ceiling, the pool's own labels (the masks, or the boxes filled in).

Then, for every seed, the same finetune recipe from each start (``results.<maps>.<init>``):

- ``tocoad``: ``scratch``; ``scratch_matched`` (scratch with extra epochs whose image-steps
  equal the AGBP + AGDP pretraining's: more optimisation alone); ``ssl`` (AGBP with a map-free
  objective, MoCo v3 alone, same epochs: in-domain self-supervision without the maps);
  ``agbp`` (the distilled backbone only); ``agssp`` (AGBP + AGDP);
- ``random`` and ``oracle``: ``agssp``.

``pseudo_boxes.<maps>`` reports the share of pool images given boxes and boxes per image
(the oracle's row is the truth), the gate (with the pipeline's check by held-out labelled
defect images for ``tocoad``: ``gate_reference_*`` and ``labelled_defects``, the sides the fit
and the check used), and ``quality``: the pseudo boxes against the pool's true boxes (box
precision and recall at IoU 0.3 and 0.5, the share of boxed images that truly hold a defect;
the truth is the benchmark's, never the suite's). ``--boxes-only`` runs just the map ->
pseudo-box steps of every source (pipelines stopped there; minutes, no training) and writes
``pseudo_boxes`` alone to ``<results>_boxes.json``. The provided sources' gates are
unchecked, as in the pipeline (``maps=provided`` has no defect-maps step); the check would
change nothing there: oracle maps score 1 on every defect image, random maps copy ToCoAD's
boxed images.

State keys name what a row depends on: ``any/scratch/<seed>`` (nothing but the finetune
recipe), ``any/scratch_matched@<budget>/<seed>``, ``oracle/<init>@<budget>/<seed>``, and for
rows built on ToCoAD's maps (``tocoad``, ``random``) the map recipe too (``map_tag``:
preset, labelled defects or not, a hash of the resolved ToCoAD config, ``generator.p_native``
included), e.g. ``tocoad+demo-lab-1a2b3c4d/agssp@8-4/0``. Keys without that tag are the
committed runs' (before it): read, never reused for a run that names a map recipe.

Everything runs through the suite's public routes (its own ``agssp up`` on a free port with
a private ``AGSSP_HOME``), so the measured path is the product's. Job ids are kept in a state
file next to the results: a run that is cut resumes where it stopped (finished jobs are read
back, running ones are followed). Writes ``benchmarks/results/agssp_lift.json`` with
``results.<maps>.<init>.{map50_mean,map50_std,map5095_mean,map5095_std,seeds}``.

    python -m benchmarks.agssp_lift [--quick] [--seeds 0 1 2] [--home var/bench-lift]
    python -m benchmarks.agssp_lift --dataset neu-det    # -> results/agssp_lift_neu-det.json
    python -m benchmarks.agssp_lift --boxes-only         # -> results/agssp_lift_boxes.json
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import shutil
import socket
import statistics
import subprocess
import sys
import time
import uuid
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any

import httpx
import numpy as np

from benchmarks import provenance
from benchmarks.lift_maps import (
    box_record,
    grid_map,
    labels_quality,
    pool_truth,
    stage_random,
    truth_share,
    write_maps,
)
from shared.schemas.detector_families import DEFAULT_FAMILY, FAMILIES, agbp_backbone

if TYPE_CHECKING:  # the suite's modules load lazily, after the argument check
    from services.finetune.stores.datasets import DatasetRef
    from shared.storage.base import ObjectStore

ROOT = Path(__file__).resolve().parents[1]
SHARED_DATA = ROOT.parent / "shared" / "data"
SERVICES = ("anomaly_map", "pretrain", "finetune", "inference")
# The detector starts measured per map source (see the module docstring).
ROWS: dict[str, tuple[str, ...]] = {
    "tocoad": ("scratch", "scratch_matched", "ssl", "agbp", "agssp"),
    "random": ("agssp",),
    "oracle": ("agssp",),
}
MAPS_FIRST = "tocoad"  # random boxes copy its counts and sizes, so it runs first
MAP_DEPENDENT = ("tocoad", "random")  # rows whose key carries the ToCoAD map recipe
_END = {"SUCCEEDED", "FAILED", "CANCELED"}
ORACLE, RANDOM = "bench/oracle/", "bench/random/"
AGDP_VAL_FRACTION = 0.2  # the pipeline's default: AGDP validates on this share of the pool
AGDP_TRAIN_SHARE = 1 - AGDP_VAL_FRACTION


@dataclass(frozen=True)
class Source:
    """A labelled data set the benchmark knows how to import (finetune's import formats)."""

    marker: str  # a folder that identifies the data set
    format: str
    images: str
    annotations: str
    describe: str  # the category's surface description for the anomaly-map step


SOURCES = {
    "magnetic-tile": Source("MT_Free", "masks", ".", ".", "magnetic tile surface"),
    "neu-det": Source("annotations", "voc", "images", "annotations", "steel strip surface"),
}


def build_parser() -> argparse.ArgumentParser:
    """The lift's options; ``benchmarks.agssp_budget`` adds its own to the same parser."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--dataset", choices=sorted(SOURCES), default="magnetic-tile")
    parser.add_argument("--data", type=Path, help="default: ../shared/data/<dataset>")
    parser.add_argument("--home", type=Path, help="default: var/bench-lift[-<dataset>]")
    parser.add_argument("--out", type=Path, help="default: results/agssp_lift[_<dataset>].json")
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--maps", nargs="+", choices=sorted(ROWS), default=list(ROWS))
    parser.add_argument(
        "--rows",
        nargs="+",
        choices=sorted({row for rows in ROWS.values() for row in rows}),
        default=None,
        help="only these rows (e.g. scratch agssp for a slow detector family); default all",
    )
    parser.add_argument(
        "--detector",
        choices=list(FAMILIES),
        default=DEFAULT_FAMILY,
        help="detector family of every row; AGBP pretrains the backbone it builds on",
    )
    parser.add_argument(
        "--no-labelled-defects",
        action="store_true",
        help="fit ToCoAD on the pool alone (the maps before issue 21)",
    )
    parser.add_argument("--random-grid", type=int, default=64)
    parser.add_argument("--labelled-per-class", type=int, default=10)
    parser.add_argument("--val-fraction", type=float, default=0.12)
    parser.add_argument("--split-seed", type=int, default=0)
    parser.add_argument("--pool-limit", type=int, default=0, help="0 = every remaining image")
    parser.add_argument("--tocoad-preset", default="cpu")
    parser.add_argument(
        "--tocoad-overrides",
        type=json.loads,
        default={},
        help="ToCoAD config keys laid over the preset, as JSON (e.g. "
        '\'{"generator": {"p_native": 0.3}}\'); the anomaly-map service validates them',
    )
    parser.add_argument("--imgsz", type=int, default=256)
    parser.add_argument("--epochs", type=int, default=30)
    parser.add_argument("--batch", type=int, default=16, help="AGBP and AGDP batch")
    parser.add_argument("--finetune-batch", type=int, default=8)
    parser.add_argument("--lr0", type=float, default=0.01, help="finetuning learning rate")
    parser.add_argument(
        "--val-every",
        type=int,
        default=1,
        help="finetunes validate every N epochs (and the last): a long finetune on a few "
        "labels spends most of its time validating (62 %% of a 389-epoch one, py-spy)",
    )
    parser.add_argument(
        "--warmup-epochs",
        type=float,
        default=0.0,
        help="ultralytics warms up for at least 100 iterations whenever this is > 0: with 50 "
        "images that is most of a short run, so the default is no warm-up",
    )
    parser.add_argument("--agbp-epochs", type=int, default=8)
    parser.add_argument("--agbp-size", type=int, default=160)
    parser.add_argument("--agdp-epochs", type=int, default=4)
    parser.add_argument("--oracle-grid", type=int, default=32)
    parser.add_argument(
        "--boxes-only",
        action="store_true",
        help="only maps -> pseudo boxes for every source, scored against the pool's truth; "
        "writes <results>_boxes.json (no AGBP, AGDP or finetune)",
    )
    parser.add_argument("--quick", action="store_true", help="tiny run that checks the path")
    parser.add_argument("--fresh", action="store_true", help="forget the state file")
    return parser


def resolve(parser: argparse.ArgumentParser, args: argparse.Namespace) -> argparse.Namespace:
    """Defaults that depend on other options (paths, the --quick recipe)."""
    if "random" in args.maps and MAPS_FIRST not in args.maps:
        parser.error("--maps random copies the tocoad boxes: give tocoad too")
    args.maps = sorted(args.maps, key=list(ROWS).index)
    named = args.dataset != "magnetic-tile"  # Magnetic-tile keeps the first run's names
    args.data = args.data or SHARED_DATA / args.dataset
    home, out = (
        (f"bench-lift-{args.dataset}", f"agssp_lift_{args.dataset}")
        if named
        else ("bench-lift", "agssp_lift")
    )
    if args.detector != DEFAULT_FAMILY:  # another family: its own home, state and results
        home, out = f"{home}-{args.detector}", f"{out}_{args.detector}"
    out = f"{out}.json"
    # --quick imports a mini-2 split: it must never share a home with a full run
    args.home = args.home or ROOT / "var" / (f"{home}-quick" if args.quick else home)
    args.out = args.out or ROOT / "benchmarks" / "results" / out
    if args.quick:
        args.labelled_per_class, args.pool_limit, args.tocoad_preset = 2, 40, "tiny"
        args.imgsz, args.epochs, args.batch, args.finetune_batch = 64, 1, 4, 4
        args.agbp_epochs, args.agbp_size, args.agdp_epochs = 1, 64, 1
        args.seeds, args.out = args.seeds[:2], args.out.with_name(f"{args.out.stem}_quick.json")
    return args


def _arguments() -> argparse.Namespace:
    parser = build_parser()
    return resolve(parser, parser.parse_args())


def recipe(args: argparse.Namespace) -> dict[str, dict[str, Any]]:
    """Per-step configs; they cover every key of the pipeline's ``cpu`` preset on purpose,
    so a pipeline's finetune and a directly submitted one train with identical configs."""
    detector = {
        "epochs": args.epochs, "batch": args.finetune_batch, "imgsz": args.imgsz, "patience": 0,
        "lr0": args.lr0, "warmup_epochs": args.warmup_epochs,
    }  # fmt: skip
    agdp: dict[str, Any] = {"epochs": args.agdp_epochs, "batch": args.batch, "imgsz": args.imgsz}
    if args.detector != DEFAULT_FAMILY:
        detector["family"] = agdp["family"] = args.detector
    # always sent: a direct finetune's default is the paper's every 10, the pipeline's
    # presets validate every epoch; recipes stored before the option ran at 1 (same_finetune)
    detector["val_every"] = args.val_every
    detector["min_steps"] = 0  # the lift's epochs are its own, not the cpu preset's steps
    return {
        "tocoad": dict(args.tocoad_overrides),
        "agbp": {
            "objective": "distill", "amp": False, "num_workers": 0, "checkpoint_every": 0,
            "epochs": args.agbp_epochs, "batch_size": args.batch,
            "input_size": args.agbp_size, "resize_base": args.agbp_size,
        },
        "agdp": agdp,
        "finetune": detector,
    }  # fmt: skip


def same_finetune(stored: dict[str, Any] | None, wanted: dict[str, Any]) -> bool:
    """Whether a finetune recipe stored in a state is ``wanted``; one stored before
    ``val_every`` and ``min_steps`` were sent ran with 1 and 0 (validated every epoch, trained
    its epochs)."""
    before = {"val_every": 1, "min_steps": 0}
    return stored is not None and {**before, **stored} == {**before, **wanted}


# -- the suite ------------------------------------------------------------------------------
def _free_base(count: int = 6) -> int:
    for base in range(21000, 29000, 10):
        if all(_bindable(base + i) for i in range(count)):
            return base
    raise RuntimeError("no free block of ports on loopback")


def _bindable(port: int) -> bool:
    with socket.socket() as sock:
        try:
            sock.bind(("127.0.0.1", port))
        except OSError:
            return False
    return True


def start_suite(home: Path, log: Path) -> tuple[subprocess.Popen[bytes], dict[str, str]]:
    """``agssp up`` on free ports with ``home`` as AGSSP_HOME; returns it and the URLs."""
    base = _free_base()
    env = dict(os.environ, AGSSP_HOME=str(home), YOLO_OFFLINE="1", YOLO_AUTOINSTALL="False")
    for name in ("REDIS_URL", "S3_ENDPOINT_URL"):
        env.pop(name, None)
    argv = [sys.executable, "-m", "agssp.main", "up", "--base-port", str(base)]
    proc = subprocess.Popen(argv, env=env, stdout=log.open("ab"), stderr=subprocess.STDOUT)
    urls = {name: f"http://127.0.0.1:{base + i}" for i, name in enumerate(SERVICES)}
    urls["pipeline"] = f"http://127.0.0.1:{base + 5}"
    deadline = time.monotonic() + 300
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"the suite stopped; see {log}")
        if all(_healthy(u) for u in urls.values()):
            return proc, urls
        time.sleep(1)
    # not left running: a sitting paused (SIGSTOP) past the deadline would orphan the suite
    proc.terminate()
    proc.wait(60)
    raise RuntimeError(f"the suite did not start in 300 s; see {log}")


def _healthy(url: str) -> bool:
    try:
        return httpx.get(f"{url}/healthz", timeout=2).status_code == 200
    except httpx.HTTPError:
        return False


# -- data -------------------------------------------------------------------------------------
def import_dataset(args: argparse.Namespace, home: Path) -> tuple[str, dict[str, Any]]:
    """The labelled data set into the suite's store (boxes from masks or annotation files);
    returns (ref, splits)."""
    from services.finetune.config import FinetuneSettings
    from services.finetune.params import DatasetImportParams
    from services.finetune.stores.datasets import DatasetCatalog, DatasetRef
    from services.finetune.usecases.datasets import import_local_dataset
    from shared.config import CommonSettings, PathSettings
    from shared.storage.filesystem import FileObjectStore

    store = FileObjectStore(home / "store")
    settings = FinetuneSettings(common=CommonSettings(paths=PathSettings(home=home)))
    source = SOURCES[args.dataset]
    params = DatasetImportParams(
        name=args.dataset, prefix="local/", format=source.format, images=source.images,
        annotations=source.annotations, val_fraction=args.val_fraction, seed=args.split_seed,
        mini=[args.labelled_per_class],
        split_method="shuffle",  # the split every committed row of the state file was made on
    )  # fmt: skip
    version = f"lift-s{args.split_seed}-v{int(args.val_fraction * 100)}"
    ref = DatasetRef(args.dataset, version)
    if not store.exists(ref.key("manifest.json")):
        import_local_dataset(store, args.data, params, version, settings)
    return str(ref), DatasetCatalog(store).splits(ref)


def stage_pool(args: argparse.Namespace, home: Path, ref: str, splits: dict[str, Any]) -> list[str]:
    """Copy the unlabelled pool (train minus the labelled mini split) and write its oracle
    maps; returns the pool's image keys."""
    from services.finetune.stores.datasets import DatasetRef
    from shared.storage.filesystem import FileObjectStore

    store = FileObjectStore(home / "store")
    dataset = DatasetRef(*ref.split(":", 1))
    labelled = set(splits[f"mini-{args.labelled_per_class}"])
    pool = [name for name in splits["train"] if name not in labelled]
    if args.pool_limit and len(pool) > args.pool_limit:
        # every k-th image: the split lists may be grouped by class, a prefix would not be
        pool = pool[:: len(pool) // args.pool_limit][: args.pool_limit]
    keys = [f"bench/pool/{name}" for name in pool]
    if store.exists(ORACLE + "manifest.json"):
        return keys
    masks = _oracle_masks(args, store, dataset, pool)
    for name, key in zip(pool, keys, strict=True):
        store.put_bytes(key, store.get_bytes(dataset.image_key(name)))
    maps = {
        key: grid_map(masks[name], args.oracle_grid) for name, key in zip(pool, keys, strict=True)
    }
    store.put_bytes(ORACLE + "truth.json", json.dumps({"share": truth_share(masks)}).encode())
    write_maps(store, ORACLE, args.dataset, maps)
    return keys


def _oracle_masks(
    args: argparse.Namespace, store: ObjectStore, dataset: DatasetRef, pool: list[str]
) -> dict[str, np.ndarray]:
    """Per pool image, the oracle's defect mask: the pixel mask where the data set has one,
    else its labelled boxes filled in (float32, 0 = normal)."""
    from services.finetune.ml.dataset import DetectionDataset
    from services.finetune.stores.datasets import DatasetCatalog

    if SOURCES[args.dataset].format == "masks":
        from services.finetune.ml.masks import read_mask
        from services.finetune.usecases.datasets import import_folder

        _, files = import_folder(args.data, "masks", images=".", annotations=".")
        return {n: read_mask(files[n].with_suffix(".png")).astype(np.float32) for n in pool}
    records = DetectionDataset.model_validate_json(DatasetCatalog(store).dataset_bytes(dataset))
    by_name = {im.file_name: im for im in records.images}
    masks = {}
    for name in pool:
        image = by_name[name]
        mask = np.zeros((image.height, image.width), np.float32)
        for box in image.boxes:
            mask[int(box.y1) : int(np.ceil(box.y2)), int(box.x1) : int(np.ceil(box.x2))] = 1.0
        masks[name] = mask
    return masks


# -- jobs -------------------------------------------------------------------------------------
class Runner:
    """Submits and follows pipelines and jobs, remembering them in a state file.

    Job ids are valid only in the home (``AGSSP_HOME``) that ran them; finished finetune
    results (``done``) and what each sitting cost (``sittings``) are not. A state file met
    with another home (a fresh checkout: ``var/`` is not in git, the state file is) keeps
    those two and forgets the ids, so a run cut in one checkout resumes in the next, redoing
    only the pretraining that unfinished rows still need.
    """

    KEPT_ACROSS_HOMES = (
        "done", "sittings", "made", "box_stats", "budget_made", "finetune_recipe"
    )  # fmt: skip

    def __init__(
        self, urls: dict[str, str], state_path: Path, home: Path, benchmark: str = "agssp_lift"
    ) -> None:
        self.urls = urls
        self.state_path = state_path
        self.state: dict[str, Any] = (
            json.loads(state_path.read_text()) if state_path.exists() else {}
        )
        self._adopt(home)
        now = time.time()
        self.benchmark = benchmark  # the state is shared with agssp_budget: sittings say whose
        self.sitting = {
            "benchmark": benchmark, "started": now, "last_seen": now,
            "loadavg_start": os.getloadavg(),
        }  # fmt: skip
        self.state.setdefault("sittings", []).append(self.sitting)
        self.http = httpx.Client(timeout=60)

    def _adopt(self, home: Path) -> None:
        marker = home / "bench-home-id"
        if not marker.exists():
            marker.write_text(uuid.uuid4().hex)
        home_id = marker.read_text().strip()
        if self.state.get("home_id") != home_id:
            kept = {k: self.state[k] for k in self.KEPT_ACROSS_HOMES if k in self.state}
            self.state = {**kept, "home_id": home_id}

    def save(self) -> None:
        self.sitting["last_seen"] = time.time()
        self.sitting["loadavg_last"] = os.getloadavg()
        self.state_path.write_text(json.dumps(self.state, indent=1))

    def is_done(self, key: str) -> bool:
        return key in self.state.get("done", {})

    def result(self, key: str, job_id: str) -> dict[str, Any] | None:
        """A finished finetune's mAP (followed to its end once, then read from the state);
        None for one that was canceled (an operator trimming a run: the row is left out)."""
        done = self.state.setdefault("done", {})
        if key not in done:
            record = self._wait(f"{self.urls['finetune']}/v1/jobs/{job_id}", job_id, canceled=True)
            if record["state"] == "CANCELED":
                return None
            metrics = record["outputs"]["metrics"]
            done[key] = {"job": job_id, "map50": metrics["map50"], "map5095": metrics["map50_95"]}
            self.save()
        return dict(done[key])

    def harvest(self) -> None:
        """Record every submitted finetune that has succeeded, whichever row the run waits
        on: the rows are read in table order, the worker finishes them in queue order, and a
        sitting cut short must keep every row it paid for (job ids die with the home)."""
        done = self.state.setdefault("done", {})
        for key, job_id in self.state.get("jobs", {}).items():
            if key in done:
                continue
            record = self.http.get(f"{self.urls['finetune']}/v1/jobs/{job_id}").json()
            metrics = record.get("outputs", {}).get("metrics")
            if record.get("state") == "SUCCEEDED" and metrics:
                done[key] = {
                    "job": job_id,
                    "map50": metrics["map50"],
                    "map5095": metrics["map50_95"],
                }

    def sittings(self) -> list[dict[str, Any]]:
        """This benchmark's sittings so far (each alone on the machine)."""
        found = self.state.get("sittings", [])
        return [s for s in found if s.get("benchmark", "agssp_lift") == self.benchmark]

    def compute_s(self) -> float:
        """Wall time of this benchmark's sittings so far, the cuts between them excluded."""
        return float(sum(s["last_seen"] - s["started"] for s in self.sittings()))

    def pipeline(
        self, key: str, body: dict[str, Any], finetune: bool = True
    ) -> tuple[dict[str, Any], bool]:
        """Run (or follow) a pipeline; returns its record and whether its finetune step used
        today's finetune recipe (then that job is the AGSSP seed-0 run; otherwise, or when
        ``finetune`` is False because that row is already done, the pipeline is followed
        only to its AGDP step and stopped there)."""
        ids = self.state.setdefault("pipelines", {})
        recipes = self.state.setdefault("pipeline_finetune", {})
        if key not in ids:
            response = self.http.post(f"{self.urls['pipeline']}/v1/pipelines", json=body)
            response.raise_for_status()
            ids[key] = response.json()["id"]
            recipes[key] = body["overrides"]["finetune"]
            self.state.setdefault("pipeline_seed", {})[key] = body["seed"]
            self.save()
        url = f"{self.urls['pipeline']}/v1/pipelines/{ids[key]}"
        if finetune and same_finetune(recipes.get(key), body["overrides"]["finetune"]):
            return self._wait(url, key), True
        return self._wait_step(url, key, "agdp"), False

    def check_finetune(self, finetune: dict[str, Any]) -> None:
        """Refuse a finetune recipe other than the one this state's rows were made with: a row
        key names the pretraining and the maps, not the finetune, so a run at other epochs or
        learning rate would read back the rows of another recipe as its own."""
        found = self.state.setdefault("finetune_recipe", finetune)
        if not same_finetune(found, finetune):
            differ = sorted(k for k in {*found, *finetune} if found.get(k) != finetune.get(k))
            sys.exit(
                f"{self.state_path} holds rows finetuned with another recipe ({', '.join(differ)}"
                f": {found}); give this recipe its own --out"
            )

    def pipeline_seed(self, key: str, default: int) -> int:
        """The seed the pipeline ``key`` of this home was started with (its finetune step is
        the AGSSP row of that seed), or ``default`` for one not started yet."""
        return int(self.state.get("pipeline_seed", {}).get(key, default))

    def pipeline_until(self, key: str, body: dict[str, Any], step: str) -> dict[str, Any]:
        """Run (or follow) a pipeline up to ``step``, then stop it; returns its record."""
        ids = self.state.setdefault("pipelines", {})
        if key not in ids:
            response = self.http.post(f"{self.urls['pipeline']}/v1/pipelines", json=body)
            response.raise_for_status()
            ids[key] = response.json()["id"]
            self.save()
        return self._wait_step(f"{self.urls['pipeline']}/v1/pipelines/{ids[key]}", key, step)

    def _wait_step(self, url: str, what: str, step: str) -> dict[str, Any]:
        while True:
            record: dict[str, Any] = self.http.get(url).json()
            if _step(record, step)["state"] == "SUCCEEDED":
                if record["state"] not in _END:
                    self.http.post(f"{url}/cancel").raise_for_status()
                    print(f"{what}: {step} done; stopped (the later steps are not wanted)")
                return record
            if record["state"] in _END:
                raise RuntimeError(f"{what} ended {record['state']}: {record.get('error')}")
            time.sleep(5)

    def finetune(self, key: str, body: dict[str, Any]) -> str:
        if self.is_done(key):
            return str(self.state["done"][key]["job"])
        jobs = self.state.setdefault("jobs", {})
        if key not in jobs:
            response = self.http.post(f"{self.urls['finetune']}/v1/finetune-jobs", json=body)
            if response.is_error:
                raise RuntimeError(f"finetune {key} refused: {response.text}")
            jobs[key] = response.json()["id"]
            self.save()
        return str(jobs[key])

    def job(self, job_id: str) -> dict[str, Any]:
        return self._wait(f"{self.urls['finetune']}/v1/jobs/{job_id}", job_id)

    def pretrain(self, key: str, body: dict[str, Any]) -> dict[str, Any]:
        """Run (or follow) an AGBP job submitted straight to the pretrain service."""
        return self.submitted(key, "pretrain", "/v1/pretrain-jobs", body)

    def submitted(self, key: str, service: str, route: str, body: dict[str, Any]) -> dict[str, Any]:
        """Run (or follow) one job of ``service`` posted to ``route``; returns its record."""
        jobs = self.state.setdefault("pretrain", {})
        if key not in jobs:
            response = self.http.post(f"{self.urls[service]}{route}", json=body)
            if response.is_error:
                raise RuntimeError(f"{key} refused: {response.text}")
            jobs[key] = response.json()["id"]
            self.save()
        return self._wait(f"{self.urls[service]}/v1/jobs/{jobs[key]}", key)

    def _wait(self, url: str, what: str, canceled: bool = False) -> dict[str, Any]:
        """Follow a job or pipeline to its end; its record. Raises unless it SUCCEEDED (or,
        with ``canceled``, was CANCELED)."""
        last = ""
        while True:
            record: dict[str, Any] = self.http.get(url).json()
            line = f"{what}: {record['state']} {record.get('progress', '')}"
            if line != last:
                print(line, flush=True)
                last = line
                self.harvest()
                self.save()  # the sitting's last_seen: a cut run still counts its time
            if record["state"] in _END:
                if record["state"] == "SUCCEEDED" or (canceled and record["state"] == "CANCELED"):
                    return record
                raise RuntimeError(f"{what} ended {record['state']}: {record.get('error')}")
            time.sleep(5)


def _step(record: dict[str, Any], name: str) -> dict[str, Any]:
    step: dict[str, Any] = next(s for s in record["steps"] if s["name"] == name)
    return step


def pipeline_body(
    args: argparse.Namespace,
    ref: str,
    rec: dict[str, Any],
    provided: str | None,
    name: str,
) -> dict[str, Any]:
    """The pipeline request of one map source: the pipeline's defaults (gate auto, checked by
    the labelled defects held out of the ToCoAD fit), the benchmark's recipe."""
    return {
        "name": name,
        "category": args.dataset,
        "category_spec": {"map": SOURCES[args.dataset].describe, "method": "tocoad"},
        "unlabelled_prefix": "bench/pool/",
        "labelled": {
            "dataset": ref,
            "split": f"mini-{args.labelled_per_class}",
            "val_split": "val",
        },
        "maps": "provided" if provided else "tocoad",
        "maps_prefix": provided,
        "labelled_defects": not args.no_labelled_defects,
        "gate": "auto",
        "preset": "cpu",
        "detector": args.detector,
        "seed": args.seeds[0],
        "baseline": False,
        "overrides": {**rec, "tocoad_preset": args.tocoad_preset},
    }


def boxes_of(record: dict[str, Any], provided: str | None) -> dict[str, Any]:
    """What a pipeline's map and pseudo-box steps made: maps, labels, the gate with its
    reference fields, and which side of the labelled defects the fit and the check used."""
    boxes = _step(record, "pseudo_boxes")["outputs"]
    names = {s["name"] for s in record["steps"]}
    check = _step(record, "defect_maps")["outputs"] if "defect_maps" in names else {}
    fit = _step(record, "tocoad_fit")["outputs"] if "tocoad_fit" in names else {}
    return {
        "pipeline": record["id"],
        "maps_prefix": boxes.get("maps_prefix") or _maps_prefix(record, provided),
        "labels": boxes["out_prefix"],
        "gate": {
            **{k: v for k, v in boxes.items() if k.startswith("gate")},
            "reference_maps_prefix": check.get("maps_prefix"),
        },
        "labelled_defects": {
            "fit": fit.get("defect_images"),
            "gate_check": check.get("defect_images"),
        },
    }


def run_maps_source(
    runner: Runner, args: argparse.Namespace, maps: str, ref: str, rec: dict[str, Any]
) -> dict[str, Any]:
    """One pipeline for a map source; returns its artifacts and job ids. Its finetune step is
    the AGSSP row of the seed it was started with (the first of ``--seeds`` then; a later
    sitting in the same home may ask for other seeds, and must not take that row for theirs)."""
    provided = {"random": random_prefix(args), "oracle": ORACLE}.get(maps)
    body = pipeline_body(args, ref, rec, provided, f"lift-{maps}")
    key = f"{source_name(maps, map_tag(args))}@{budget_tag(args)}"
    seed = runner.pipeline_seed(key, int(body["seed"]))
    wanted = seed in args.seeds and not runner.is_done(lift_key(args, maps, "agssp", seed))
    record, same_recipe = runner.pipeline(key, body, finetune=wanted)
    return {
        **boxes_of(record, provided),
        "agbp": _step(record, "agbp")["outputs"]["artifact"],
        "agdp": _step(record, "agdp")["outputs"]["artifact"],
        "agssp_pipeline_job": _step(record, "finetune")["job_id"] if same_recipe else None,
        "agssp_pipeline_seed": seed,
    }


def _maps_prefix(record: dict[str, Any], provided: str | None) -> str:
    return provided or str(_step(record, "maps")["outputs"]["maps_prefix"])


def run_ssl(
    runner: Runner, args: argparse.Namespace, rec: dict[str, Any], tocoad: dict[str, Any]
) -> str:
    """AGBP with a map-free objective (MoCo v3 alone: distill weight 0), same recipe
    otherwise; returns its backbone artifact. The maps are read but weigh nothing."""
    config = {
        **rec["agbp"], "backbone": agbp_backbone(args.detector, "n"),
        "objective": "mocov3_distill", "distill_weight": 0.0,
        "task_weight": 1.0, "seed": args.seeds[0],
    }  # fmt: skip
    source = {
        "category": args.dataset, "images_prefix": "bench/pool/",
        "maps_prefix": tocoad["maps_prefix"],
    }  # fmt: skip
    body = {"sources": [source], "config": config, "artifact_name": "lift-ssl"}
    key = f"ssl+{map_tag(args)}@{budget_tag(args)}"  # it reads the ToCoAD run's pool maps
    return str(runner.pretrain(key, body)["artifacts"][0])


def matched_epochs(args: argparse.Namespace, pool: int, labelled: int) -> int:
    """Finetune epochs whose extra image-steps equal AGBP's + AGDP's (AGDP trains on the
    pool less its validation share, the pipeline's val_fraction of 0.2)."""
    pretrain_steps = int(args.agbp_epochs) * pool + int(args.agdp_epochs) * round(
        pool * AGDP_TRAIN_SHARE
    )
    return int(args.epochs) + -(-pretrain_steps // max(1, labelled))


def budget_tag(args: argparse.Namespace) -> str:
    """The pretraining budget in state keys: '<AGBP epochs>-<AGDP epochs>'."""
    return f"{args.agbp_epochs}-{args.agdp_epochs}"


def map_tag(args: argparse.Namespace) -> str:
    """The ToCoAD map recipe in state keys: '<preset>-<lab|nolab>-<hash>', the hash of the
    whole resolved ToCoAD config (the preset with ``--tocoad-overrides`` laid over it, so a
    preset's changed default, e.g. ``generator.p_native``, changes it too)."""
    from services.anomaly_map.ml.tocoad.presets import preset_config

    config = preset_config(args.tocoad_preset, args.tocoad_overrides).model_dump(mode="json")
    digest = hashlib.sha256(json.dumps(config, sort_keys=True).encode()).hexdigest()[:8]
    return f"{args.tocoad_preset}-{'nolab' if args.no_labelled_defects else 'lab'}-{digest}"


def p_native(args: argparse.Namespace) -> float:
    """The resolved ``generator.p_native`` of the ToCoAD fit (preset and overrides)."""
    from services.anomaly_map.ml.tocoad.presets import preset_config

    return float(preset_config(args.tocoad_preset, args.tocoad_overrides).generator.p_native)


def source_name(maps: str, maps_tag: str | None) -> str:
    """A map source as the state names it: ``tocoad`` and ``random`` (it copies ToCoAD's
    boxes) carry the map recipe's tag ('tocoad+cpu-lab-1a2b3c4d'); ``oracle`` (the pool's
    own labels) and a ``None`` tag (the keys before the tag: the committed state's) do not."""
    return f"{maps}+{maps_tag}" if maps_tag and maps in MAP_DEPENDENT else maps


def row_key(maps: str, init: str, seed: int, tag: str, maps_tag: str | None = None) -> str:
    """The state's name of one finetune. Scratch ignores the maps and the pretraining (one
    key for all); scratch_matched only the maps; every other row is named with the budget
    ``tag`` it was pretrained at and, when built on ToCoAD's maps, their recipe ``maps_tag``
    (``map_tag``): rows of another map recipe are never read back as this one's. Keys
    without a ``maps_tag`` are the committed state's (recipe before the tag existed)."""
    if init == "scratch":
        return f"any/scratch/{seed}"
    if init == "scratch_matched":
        return f"any/{init}@{tag}/{seed}"
    return f"{source_name(maps, maps_tag)}/{init}@{tag}/{seed}"


def lift_key(args: argparse.Namespace, maps: str, init: str, seed: int) -> str:
    """``row_key`` of this run's recipe (budget and map tags)."""
    return row_key(maps, init, seed, budget_tag(args), map_tag(args))


def scope(args: argparse.Namespace) -> str:
    """Where the state keeps what this run's pretraining made (``made``, ``box_stats``):
    '<budget>+<map tag>'; the committed state's entries sit under '<budget>' alone."""
    return f"{budget_tag(args)}+{map_tag(args)}"


def ensure_random(
    store: ObjectStore, args: argparse.Namespace, pool: list[str], tocoad_labels: str
) -> None:
    """Stage the random boxes of this map recipe from ToCoAD's labels, unless they are there."""
    if store.exists(random_prefix(args) + "manifest.json"):
        return
    stage_random(
        store, pool, tocoad_labels, category=args.dataset, prefix=random_prefix(args),
        grid=args.random_grid, seed=args.split_seed,
    )  # fmt: skip


def random_prefix(args: argparse.Namespace) -> str:
    """The random maps copy the ToCoAD boxes of one map recipe: a prefix of their own."""
    return f"{RANDOM.rstrip('/')}-{map_tag(args)}/"


def detector_jobs(
    runner: Runner, args: argparse.Namespace, ref: str, rec: dict[str, Any], made: dict[str, Any]
) -> dict[str, dict[str, dict[int, tuple[str, str]]]]:
    """Submit every (maps, init, seed) finetune not yet run; returns their (key, job id)."""
    jobs: dict[str, dict[str, dict[int, tuple[str, str]]]] = {}
    for maps in args.maps:
        jobs[maps] = {init: {} for init in rows_of(args, maps)}
        for seed in args.seeds:
            for init in rows_of(args, maps):
                jobs[maps][init][seed] = detector_job(
                    runner, args, ref, rec, made, maps, init, seed
                )
    return jobs


def rows_of(args: argparse.Namespace, maps: str) -> tuple[str, ...]:
    """The rows of a map source this run measures (``--rows`` narrows ``ROWS``)."""
    rows = getattr(args, "rows", None)
    return tuple(r for r in ROWS[maps] if rows is None or r in rows)


def _start(made: dict[str, Any], maps: str, init: str) -> dict[str, Any]:
    if init in ("scratch", "scratch_matched"):
        return {"kind": "scratch"}
    if init == "ssl":
        return {"kind": "agbp", "artifact": made["ssl"]}
    kind = "agbp" if init == "agbp" else "agdp"
    return {"kind": kind, "artifact": made[maps][kind]}


def detector_body(
    args: argparse.Namespace, ref: str, config: dict[str, Any], name: str, init: dict[str, Any]
) -> dict[str, Any]:
    """A finetune request on the labelled mini split, evaluated on ``val``."""
    return {
        "dataset": ref,
        "split": f"mini-{args.labelled_per_class}",
        "val_split": "val",
        "scale": "n",
        "config": config,
        "model_name": name,
        "init": init,
    }


def detector_job(
    runner: Runner,
    args: argparse.Namespace,
    ref: str,
    rec: dict[str, Any],
    made: dict[str, Any],
    maps: str,
    init: str,
    seed: int,
) -> tuple[str, str]:
    key = lift_key(args, maps, init, seed)
    if runner.is_done(key):
        return key, str(runner.state["done"][key]["job"])
    pipeline_job = made[maps].get("agssp_pipeline_job")
    if init == "agssp" and pipeline_job and made[maps].get("agssp_pipeline_seed") == seed:
        return key, str(pipeline_job)
    config = {**rec["finetune"], "seed": seed}
    if init == "scratch_matched":
        config["epochs"] = made["matched_epochs"]
    # a registry name: the key's '@' (the budget tag) and '/' are not allowed there
    name = f"lift-{key.rsplit('/', 1)[0]}".replace("_", "-").replace("/", "-").replace("@", "-at-")
    return key, runner.finetune(
        key, detector_body(args, ref, config, name, _start(made, maps, init))
    )


def summarize(
    runner: Runner, jobs: dict[str, dict[str, dict[int, tuple[str, str]]]]
) -> dict[str, Any]:
    results: dict[str, Any] = {}
    for maps, inits in jobs.items():
        results[maps] = {}
        for init, by_seed in inits.items():
            found = {s: runner.result(*by_seed[s]) for s in sorted(by_seed)}
            rows = [{"seed": s, **row} for s, row in found.items() if row is not None]
            canceled = [s for s, row in found.items() if row is None]
            if rows:
                results[maps][init] = stats(rows) | (
                    {"canceled_seeds": canceled} if canceled else {}
                )
    return results


def stats(rows: list[dict[str, Any]]) -> dict[str, Any]:
    def spread(values: list[float]) -> float:
        return statistics.stdev(values) if len(values) > 1 else 0.0

    m50 = [r["map50"] for r in rows]
    m95 = [r["map5095"] for r in rows]
    return {
        "map50_mean": statistics.fmean(m50), "map50_std": spread(m50),
        "map5095_mean": statistics.fmean(m95), "map5095_std": spread(m95), "seeds": rows,
    }  # fmt: skip


def machine() -> dict[str, Any]:
    return provenance.machine()


def _needs(runner: Runner, args: argparse.Namespace, maps: str) -> bool:
    """Whether a row built on this map source's pretraining still has a seed to run."""
    rows = [init for init in rows_of(args, maps) if not init.startswith("scratch")]
    return any(not runner.is_done(lift_key(args, maps, i, s)) for i in rows for s in args.seeds)


def pretrain_all(
    runner: Runner, args: argparse.Namespace, ref: str, rec: dict[str, Any], pool: list[str]
) -> dict[str, Any]:
    """Every map source's pipeline up to AGDP (random after tocoad: it copies its boxes),
    and the map-free SSL backbone; a source whose rows are all done is not pretrained again
    (its artifacts and box statistics are the state's, from the home that made them)."""
    from shared.storage.filesystem import FileObjectStore

    store = FileObjectStore(args.home / "store")
    truth = pool_truth(store, ref, pool)
    tag = scope(args)  # what was made at another budget or map recipe is not this run's
    made: dict[str, Any] = runner.state.setdefault("made", {}).setdefault(tag, {})
    wanted = {maps: _needs(runner, args, maps) for maps in args.maps}
    if wanted.get("random"):
        wanted[MAPS_FIRST] = True
    for maps in args.maps:
        if not wanted[maps]:
            print(f"{maps}: every row built on it is done; not pretrained again", flush=True)
            continue
        if maps == "random":
            ensure_random(store, args, pool, made[MAPS_FIRST]["labels"])
        made[maps] = run_maps_source(runner, args, maps, ref, rec)
        found = runner.state.setdefault("box_stats", {}).setdefault(tag, {})
        found[maps] = box_record(store, made[maps], pool, truth)
        runner.save()
    ssl_wanted = "ssl" in rows_of(args, MAPS_FIRST)
    if ssl_wanted and any(
        not runner.is_done(lift_key(args, MAPS_FIRST, "ssl", s)) for s in args.seeds
    ):
        made["ssl"] = run_ssl(runner, args, rec, made[MAPS_FIRST])
    return made


def box_stats(
    runner: Runner, args: argparse.Namespace, ref: str, pool: list[str]
) -> dict[str, Any]:
    """Per map source: pool images with pseudo boxes and boxes per image, its gate, the boxes'
    quality; and the share of pool images that truly hold a defect. A source recorded before
    the quality was measured gets it here when its labels are in this home."""
    from shared.storage.filesystem import FileObjectStore

    store = FileObjectStore(args.home / "store")
    tag = scope(args)
    counted = runner.state.get("box_stats", {}).get(tag, {})
    made = runner.state.get("made", {}).get(tag, {})
    found: dict[str, Any] = {maps: counted.get(maps) for maps in args.maps}
    for maps, row in found.items():
        labels = made.get(maps, {}).get("labels")
        if row is not None and "quality" not in row and labels and store.list(labels):
            row["quality"] = labels_quality(store, labels, pool, pool_truth(store, ref, pool))
    found["truth_share_with_defects"] = json.loads(store.get_bytes(ORACLE + "truth.json"))["share"]
    return found


def prepare(args: argparse.Namespace) -> tuple[str, dict[str, Any], list[str]]:
    """Check the data, honour --fresh, import the labelled set and stage the pool."""
    marker = SOURCES[args.dataset].marker
    if not (args.data / marker).is_dir():
        sys.exit(f"{args.data} is not {args.dataset} (no {marker} folder)")
    if args.fresh:
        args.out.with_suffix(".state.json").unlink(missing_ok=True)
        shutil.rmtree(args.home, ignore_errors=True)
    args.home.mkdir(parents=True, exist_ok=True)
    ref, splits = import_dataset(args, args.home)
    return ref, splits, stage_pool(args, args.home, ref, splits)


def run_record(runner: Runner, args: argparse.Namespace, name: str) -> dict[str, Any]:
    """The head of a results file: command, machine, and what every sitting cost."""
    return {
        "benchmark": name,
        "dataset": args.dataset,
        "command": " ".join([f"python -m benchmarks.{name}", *sys.argv[1:]]),
        "date": datetime.now(UTC).isoformat(timespec="seconds"),
        "machine": machine(),
        "compute_s": round(runner.compute_s(), 1),  # every sitting's wall time, cuts excluded
        "sittings": runner.sittings(),
    }


def data_record(
    args: argparse.Namespace, ref: str, splits: dict[str, Any], pool: list[str]
) -> dict[str, Any]:
    """The split a results file was measured on."""
    return {
        "dataset": ref,
        "labelled_split": f"mini-{args.labelled_per_class}",
        "labelled_images": len(splits[f"mini-{args.labelled_per_class}"]),
        "val_images": len(splits["val"]),
        "pool_images": len(pool),
    }


def main() -> None:
    args = _arguments()
    if args.boxes_only:
        from benchmarks.lift_boxes import main_boxes_only  # it builds on this module

        main_boxes_only(args)
        return
    ref, splits, pool = prepare(args)
    labelled = len(splits[f"mini-{args.labelled_per_class}"])
    proc, urls = start_suite(args.home, args.home / "suite.log")
    try:
        runner = Runner(urls, args.out.with_suffix(".state.json"), args.home)
        rec = recipe(args)
        runner.check_finetune(rec["finetune"])
        made = pretrain_all(runner, args, ref, rec, pool)
        made["matched_epochs"] = matched_epochs(args, len(pool), labelled)
        results = summarize(runner, detector_jobs(runner, args, ref, rec, made))
        runner.save()
    finally:
        proc.terminate()
        proc.wait(60)
    doc = {
        **run_record(runner, args, "agssp_lift"),
        "data": data_record(args, ref, splits, pool),
        "pseudo_boxes": box_stats(runner, args, ref, pool),
        "recipe": {
            **rec,
            "tocoad_preset": args.tocoad_preset,
            "map_tag": map_tag(args),  # the state keys' name of the ToCoAD map recipe
            "tocoad_p_native": p_native(args),
            "labelled_defects": not args.no_labelled_defects,
            "detector": args.detector,
            "scale": "n",
            "seeds": args.seeds,
        },
        "artifacts": made,
        "results": results,
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(doc, indent=2))
    print(json.dumps(doc["results"], indent=1))


if __name__ == "__main__":
    main()
