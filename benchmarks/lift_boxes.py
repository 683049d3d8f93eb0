"""``python -m benchmarks.agssp_lift --boxes-only``: only the map -> pseudo-box steps of the
lift benchmark (``benchmarks.agssp_lift``), for every map source, in minutes and with no
training: each source's pipeline (the same request as a full run's, so the same gate, checked
by the labelled defects held out of the ToCoAD fit) is stopped once its pseudo boxes are made,
and the boxes are scored against the pool's truth (``lift_maps.box_quality``). Writes
``pseudo_boxes`` alone to ``<results>_boxes.json``.
"""

from __future__ import annotations

import argparse
import hashlib
import json
from typing import Any

from benchmarks.agssp_lift import (
    MAPS_FIRST,
    ORACLE,
    Runner,
    boxes_of,
    data_record,
    pipeline_body,
    prepare,
    recipe,
    run_record,
    start_suite,
)
from benchmarks.lift_maps import box_record, pool_truth, stage_random


def boxes_tag(args: argparse.Namespace) -> str:
    """What the pseudo boxes depend on, in state keys: the ToCoAD preset, its overrides (when
    any) and the fit's labelled defects (not the pretraining budget)."""
    tag = f"{args.tocoad_preset}-{'nolab' if args.no_labelled_defects else 'lab'}"
    if args.tocoad_overrides:
        text = json.dumps(args.tocoad_overrides, sort_keys=True)
        tag += "-" + hashlib.sha256(text.encode()).hexdigest()[:8]
    return tag


def boxes_only(
    runner: Runner, args: argparse.Namespace, ref: str, rec: dict[str, Any], pool: list[str]
) -> dict[str, Any]:
    """Every map source's pipeline up to its pseudo boxes, then stopped (``--boxes-only``):
    ``pseudo_boxes`` as in a full run, in minutes. Its own pipelines and random maps, so a
    full run in the same home never reads what this made."""
    from shared.storage.filesystem import FileObjectStore

    store = FileObjectStore(args.home / "store")
    truth = pool_truth(store, ref, pool)
    tag = boxes_tag(args)
    random_prefix = f"bench/boxes-{tag}/random/"
    found: dict[str, Any] = {}
    made: dict[str, dict[str, Any]] = {}
    for maps in args.maps:
        provided = {"random": random_prefix, "oracle": ORACLE}.get(maps)
        if maps == "random" and not store.exists(random_prefix + "manifest.json"):
            stage_random(
                store, pool, made[MAPS_FIRST]["labels"], category=args.dataset,
                prefix=random_prefix, grid=args.random_grid, seed=args.split_seed,
            )  # fmt: skip
        body = pipeline_body(args, ref, rec, provided, f"lift-boxes-{maps}")
        record = runner.pipeline_until(f"boxes:{maps}@{tag}", body, "pseudo_boxes")
        made[maps] = boxes_of(record, provided)
        found[maps] = {**box_record(store, made[maps], pool, truth), "pipeline": record["id"]}
        runner.save()
    found["truth_share_with_defects"] = json.loads(store.get_bytes(ORACLE + "truth.json"))["share"]
    return found


def main_boxes_only(args: argparse.Namespace) -> None:
    """``--boxes-only``: maps -> pseudo boxes of every source, written to
    ``<results>_boxes.json`` (its own sittings in the shared state file)."""
    ref, splits, pool = prepare(args)
    out = args.out.with_name(f"{args.out.stem}_boxes.json")
    proc, urls = start_suite(args.home, args.home / "suite.log")
    try:
        runner = Runner(
            urls, args.out.with_suffix(".state.json"), args.home, benchmark="agssp_lift_boxes"
        )
        found = boxes_only(runner, args, ref, recipe(args), pool)
        runner.save()
    finally:
        proc.terminate()
        proc.wait(60)
    doc = {
        **run_record(runner, args, "agssp_lift"),
        "benchmark": "agssp_lift_boxes",
        "data": data_record(args, ref, splits, pool),
        "pseudo_boxes": found,
        "recipe": {
            "tocoad_preset": args.tocoad_preset,
            "tocoad_overrides": args.tocoad_overrides,
            "labelled_defects": not args.no_labelled_defects,
            "seed": args.seeds[0],
        },
    }
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(doc, indent=2))
    print(json.dumps(found, indent=1))
