"""How does AGSSP's lift grow with the pretraining budget? (issue 21, item 4)

The lift benchmark's data, split, ToCoAD maps, pseudo boxes and finetune recipe
(``benchmarks.agssp_lift``: same home and state file, so the maps, the boxes and the
scratch rows are shared with it, and a run cut here resumes there or here). Every pretrained
row and budget is keyed by the map recipe too (``agssp_lift.map_tag``): a budget pretrained on
another preset's maps is never read back as this one's. For each of
``--budgets`` (epochs; default 4, 16 and 48) AGBP distils the ToCoAD maps for that many
epochs and AGDP trains on the pseudo boxes for as many, from that backbone; then every seed
finetunes from the AGDP detector. Budget 0 is scratch.

Writes ``benchmarks/results/agssp_budget.json`` (per budget: epochs, pretraining image-steps,
pretraining minutes on this machine, mAP@0.5 and mAP@0.5:0.95 per seed with mean and std,
the lift over scratch) and ``agssp_budget.png`` beside it, and names the knee: the smallest
budget whose lift reaches 90 % of the largest measured lift. ``--maps tocoad random`` adds the
random-box control at every budget (``budgets_by_maps``; ``budgets`` stays the first source's).

    python -m benchmarks.agssp_budget --pool-limit 600 --imgsz 160 --epochs 80
"""

from __future__ import annotations

import argparse
import json
from datetime import datetime
from pathlib import Path
from typing import Any

from benchmarks import agssp_lift as lift

KNEE_SHARE = 0.9  # the knee: the smallest budget with this share of the best lift
POOL = "bench/pool/"


def _arguments() -> argparse.Namespace:
    parser = lift.build_parser()
    parser.add_argument("--budgets", type=int, nargs="+", default=[4, 16, 48])
    parser.add_argument("--budget-out", type=Path, help="default: results/agssp_budget.json")
    parser.set_defaults(dataset="neu-det", maps=["tocoad"])
    args = lift.resolve(parser, parser.parse_args())
    if any(b < 1 for b in args.budgets):
        parser.error("budgets are epochs >= 1 (budget 0, scratch, is always measured)")
    if args.quick:
        args.budgets = args.budgets[:2]
    quick = "_quick" if args.quick else ""
    args.budget_out = args.budget_out or args.out.with_name(f"agssp_budget{quick}.json")
    return args


def pretrain_budget(
    runner: lift.Runner, args: argparse.Namespace, rec: dict[str, Any], maps: dict[str, Any],
    epochs: int, source_name: str,
) -> dict[str, Any]:  # fmt: skip
    """AGBP then AGDP, each for ``epochs``, on one map source's maps and pseudo boxes
    (``source_name`` as the state names it); returns the artifacts and each job's wall time."""
    seed, tag = args.seeds[0], f"budget{epochs}+{source_name}"
    agbp_config = {**rec["agbp"], "epochs": epochs, "backbone": "yolov8n", "seed": seed}
    source = {"category": args.dataset, "images_prefix": POOL, "maps_prefix": maps["maps_prefix"]}
    agbp = runner.pretrain(
        f"{tag}/agbp",
        {"sources": [source], "config": agbp_config, "artifact_name": f"budget{epochs}-agbp"},
    )
    agdp_body = {
        "images_prefix": POOL, "labels_prefix": maps["labels"],
        "backbone_artifact": agbp["artifacts"][0], "scale": "n",
        "config": {**rec["agdp"], "epochs": epochs, "seed": seed},
        "val_fraction": lift.AGDP_VAL_FRACTION, "artifact_name": f"budget{epochs}-agdp",
    }  # fmt: skip
    agdp = runner.submitted(f"{tag}/agdp", "finetune", "/v1/agdp-jobs", agdp_body)
    return {
        "agbp": agbp["artifacts"][0], "agdp": agdp["artifacts"][0],
        "agbp_s": _wall(agbp), "agdp_s": _wall(agdp),
    }  # fmt: skip


def _wall(record: dict[str, Any]) -> float:
    start, end = record.get("started_at"), record.get("finished_at")
    if not (start and end):
        return 0.0
    return round((datetime.fromisoformat(end) - datetime.fromisoformat(start)).total_seconds(), 1)


Jobs = dict[int, dict[int, tuple[str, str]]]  # budget epochs -> seed -> (state key, job id)


def submit_all(
    runner: lift.Runner, args: argparse.Namespace, ref: str, rec: dict[str, Any], pool: list[str]
) -> tuple[dict[str, Jobs], dict[str, dict[int, dict[str, Any]]]]:
    """Every (map source, budget, seed) finetune not yet done; budget 0 = scratch (one set,
    shared by every source). Returns per source their (key, job id) and each budget's
    pretraining record."""
    scratch = {
        seed: lift.detector_job(runner, args, ref, rec, {}, "tocoad", "scratch", seed)
        for seed in args.seeds
    }  # the lift's own scratch rows
    jobs: dict[str, Jobs] = {}
    made: dict[str, dict[int, dict[str, Any]]] = {}
    for maps in args.maps:
        jobs[maps], made[maps] = _submit_source(runner, args, ref, rec, maps, pool)
        jobs[maps][0] = scratch
    return jobs, made


def _maps_source(
    runner: lift.Runner, args: argparse.Namespace, ref: str, rec: dict[str, Any], maps: str,
    pool: list[str],
) -> dict[str, Any]:  # fmt: skip
    """One map source's pipeline up to AGDP; the random boxes are staged first from the
    ToCoAD pipeline's, as the lift stages them, where this home lacks them."""
    if maps == "random":
        from shared.storage.filesystem import FileObjectStore

        tocoad = lift.run_maps_source(runner, args, lift.MAPS_FIRST, ref, rec)
        lift.ensure_random(FileObjectStore(args.home / "store"), args, pool, tocoad["labels"])
    return lift.run_maps_source(runner, args, maps, ref, rec)


def _submit_source(
    runner: lift.Runner, args: argparse.Namespace, ref: str, rec: dict[str, Any], maps: str,
    pool: list[str],
) -> tuple[Jobs, dict[int, dict[str, Any]]]:  # fmt: skip
    """One map source's budgets: pretraining where a seed is not done, then the finetunes."""
    tag = lift.map_tag(args)
    name = lift.source_name(maps, tag)
    # per map source and recipe: a budget pretrained on other maps is never read back as this
    made: dict[str, dict[str, Any]] = runner.state.setdefault("budget_made", {}).setdefault(
        name, {}
    )
    found: dict[str, Any] | None = None
    jobs: Jobs = {}
    for epochs in args.budgets:
        # the lift's own key at this budget: a lift run at (epochs, epochs) reuses these rows
        budget = f"{epochs}-{epochs}"
        keys = {s: lift.row_key(maps, "agssp", s, budget, tag) for s in args.seeds}
        if not all(runner.is_done(k) for k in keys.values()):
            found = found or _maps_source(runner, args, ref, rec, maps, pool)
            made[str(epochs)] = pretrain_budget(runner, args, rec, found, epochs, name)
            runner.save()
        if found and found["agssp_pipeline_job"]:  # the pipeline's own finetune: lift budget
            runner.state.setdefault("budget_lift_default", {})[name] = found["agssp_pipeline_job"]
        jobs[epochs] = {}
        for seed, key in keys.items():
            init = {"kind": "agdp", "artifact": made.get(str(epochs), {}).get("agdp")}
            config = {**rec["finetune"], "seed": seed}
            body = lift.detector_body(args, ref, config, f"budget{epochs}-{maps}-agssp", init)
            jobs[epochs][seed] = key, runner.finetune(key, body)
    return jobs, {int(k): v for k, v in made.items()}


def summarize(
    runner: lift.Runner, args: argparse.Namespace, jobs: Jobs,
    made: dict[int, dict[str, Any]], pool: int,
) -> list[dict[str, Any]]:  # fmt: skip
    """One row per budget of one map source: its cost and its mAP, with the lift over
    scratch."""
    rows = []
    for epochs, by_seed in sorted(jobs.items()):
        results = {s: runner.result(*by_seed[s]) for s in sorted(by_seed)}
        kept = [{"seed": s, **r} for s, r in results.items() if r is not None]
        if not kept:  # every seed of this budget canceled
            continue
        found = lift.stats(kept)
        cost = made.get(epochs, {})
        rows.append({
            "epochs": epochs,
            "image_steps": epochs * pool + epochs * round(pool * lift.AGDP_TRAIN_SHARE),
            "pretrain_s": round(cost.get("agbp_s", 0.0) + cost.get("agdp_s", 0.0), 1),
            **found,
        })  # fmt: skip
    scratch = rows[0]["map50_mean"]
    for row in rows:
        row["lift_map50"] = row["map50_mean"] - scratch
    return rows


def _lift_default(runner: lift.Runner, args: argparse.Namespace) -> dict[str, Any] | None:
    """The lift benchmark's own budget (its ToCoAD pipeline's finetune, seed 0 only)."""
    key = lift.lift_key(args, "tocoad", "agssp", args.seeds[0])
    found_jobs = runner.state.get("budget_lift_default")
    name = lift.source_name("tocoad", lift.map_tag(args))
    job = found_jobs.get(name) if isinstance(found_jobs, dict) else None
    if not (runner.is_done(key) or job):
        return None
    found = runner.result(key, str(job))
    if found is None:  # canceled
        return None
    return {"agbp_epochs": args.agbp_epochs, "agdp_epochs": args.agdp_epochs, **found}


def knee(rows: list[dict[str, Any]]) -> dict[str, Any]:
    """The smallest budget whose lift reaches KNEE_SHARE of the largest measured lift."""
    best = max(rows[1:], key=lambda r: r["lift_map50"])
    if best["lift_map50"] <= 0:
        return {"epochs": None, "why": "no budget lifted mAP@0.5 above scratch"}
    first = next(r for r in rows[1:] if r["lift_map50"] >= KNEE_SHARE * best["lift_map50"])
    return {
        "epochs": first["epochs"],
        "why": f"smallest budget with {KNEE_SHARE:.0%} of the best lift "
        f"({best['lift_map50'] * 100:.1f} mAP@0.5 points at {best['epochs']} epochs)",
    }


LABELS = {"tocoad": "AGSSP-ToCoAD", "random": "AGSSP-random boxes", "oracle": "AGSSP-oracle"}


def draw(by_maps: dict[str, list[dict[str, Any]]], path: Path, title: str) -> None:
    """mAP@0.5 (mean and seed std) against the budget per map source, scratch as a band."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6.4, 4.2), dpi=120)
    scratch = next(iter(by_maps.values()))[0]
    low = (scratch["map50_mean"] - scratch["map50_std"]) * 100
    high = (scratch["map50_mean"] + scratch["map50_std"]) * 100
    ax.axhspan(low, high, color="0.85", label="scratch (mean ± std)")
    ax.axhline(scratch["map50_mean"] * 100, color="0.5", linestyle="--", linewidth=1)
    for shift, (maps, rows) in enumerate(by_maps.items()):
        pretrained = rows[1:]
        spread = 1.0 + 0.05 * shift  # side by side where budgets coincide
        ax.errorbar(
            [r["epochs"] * spread for r in pretrained],
            [r["map50_mean"] * 100 for r in pretrained],
            yerr=[r["map50_std"] * 100 for r in pretrained], marker="o", capsize=4,
            label=f"{LABELS.get(maps, maps)} (mean ± std over seeds)",
        )  # fmt: skip
        for r in pretrained if shift == 0 else []:
            where = (r["epochs"], r["map50_mean"] * 100)
            label = f"{r['pretrain_s'] / 60:.1f} min"
            ax.annotate(label, where, textcoords="offset points", xytext=(6, -12), fontsize=8)
    epochs = sorted({r["epochs"] for rows in by_maps.values() for r in rows[1:]})
    ax.set_xscale("log")
    ax.set_xlim(min(epochs) / 1.6, max(epochs) * 1.6)  # one budget alone would fill the axis
    ax.minorticks_off()
    ax.set_xticks(epochs, [str(e) for e in epochs])
    ax.set_xlabel("AGBP and AGDP epochs each (labels: pretraining wall time)")
    ax.set_ylabel("mAP@0.5 on val (%)")
    ax.set_title(title, fontsize=10)
    ax.legend(fontsize=8, loc="best")
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)


def main() -> None:
    args = _arguments()
    ref, splits, pool = lift.prepare(args)
    proc, urls = lift.start_suite(args.home, args.home / "suite.log")
    try:
        state = args.out.with_suffix(".state.json")  # the lift's: maps and scratch are shared
        runner = lift.Runner(urls, state, args.home, benchmark="agssp_budget")
        rec = lift.recipe(args)
        runner.check_finetune(rec["finetune"])
        jobs, made = submit_all(runner, args, ref, rec, pool)
        by_maps = {m: summarize(runner, args, jobs[m], made[m], len(pool)) for m in args.maps}
        default = _lift_default(runner, args)
        runner.save()
    finally:
        proc.terminate()
        proc.wait(60)
    labelled = len(splits[f"mini-{args.labelled_per_class}"])
    doc = {
        **lift.run_record(runner, args, "agssp_budget"),
        "data": {
            "dataset": ref,
            "labelled_images": labelled,
            "val_images": len(splits["val"]),
            "pool_images": len(pool),
        },
        "recipe": {**rec, "tocoad_preset": args.tocoad_preset, "scale": "n", "seeds": args.seeds},
        "map_tag": lift.map_tag(args),  # the state keys' name of the ToCoAD map recipe
        "budgets": by_maps[args.maps[0]],  # the first map source's (tocoad by default)
        "budgets_by_maps": by_maps,
        "lift_budget_seed0": default,
        "knee": knee(by_maps[args.maps[0]]),
    }
    args.budget_out.parent.mkdir(parents=True, exist_ok=True)
    args.budget_out.write_text(json.dumps(doc, indent=2))
    title = (
        f"{args.dataset}: {labelled} labels, pool {len(pool)}, {args.imgsz} px, "
        f"{args.epochs} finetune epochs, {len(args.seeds)} seeds, {args.tocoad_preset} maps"
    )
    draw(by_maps, args.budget_out.with_suffix(".png"), title)
    print(json.dumps({"budgets_by_maps": by_maps, "knee": doc["knee"]}, indent=1))


if __name__ == "__main__":
    main()
