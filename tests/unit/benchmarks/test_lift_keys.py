"""The lift benchmark's state keys name the ToCoAD map recipe of every row built on its maps,
so a resumed run never reads back rows made with other maps; the committed state stays
readable and its map-independent rows (scratch, oracle) stay reusable."""

from __future__ import annotations

import argparse
import itertools
import json
import shutil
import subprocess
import time
from pathlib import Path

import pytest

from benchmarks import agssp_lift as lift
from shared.schemas.artifacts import check_segment

pytestmark = pytest.mark.unit

COMMITTED = lift.ROOT / "benchmarks" / "results" / "agssp_lift_neu-det.state.json"


def _args(*extra: str) -> argparse.Namespace:
    parser = lift.build_parser()
    return lift.resolve(parser, parser.parse_args(["--dataset", "neu-det", *extra]))


def test_map_tag_follows_the_resolved_tocoad_config() -> None:
    demo = lift.map_tag(_args("--tocoad-preset", "demo"))
    assert demo.startswith("demo-lab-")
    assert lift.map_tag(_args("--tocoad-preset", "cpu")) != demo
    assert lift.map_tag(_args("--tocoad-preset", "demo", "--no-labelled-defects")).startswith(
        "demo-nolab-"
    )
    off = _args("--tocoad-preset", "demo", "--tocoad-overrides", '{"generator": {"p_native": 0}}')
    assert lift.map_tag(off) != demo
    assert lift.p_native(off) == 0.0
    # the default written out is the same recipe, so the same rows
    default = lift.p_native(_args("--tocoad-preset", "demo"))
    same = json.dumps({"generator": {"p_native": default}})
    assert lift.map_tag(_args("--tocoad-preset", "demo", "--tocoad-overrides", same)) == demo


def test_only_rows_built_on_tocoad_maps_carry_the_map_tag() -> None:
    args = _args("--tocoad-preset", "demo")
    tag = lift.map_tag(args)
    assert lift.lift_key(args, "tocoad", "scratch", 1) == "any/scratch/1"
    assert lift.lift_key(args, "tocoad", "scratch_matched", 1) == "any/scratch_matched@8-4/1"
    assert lift.lift_key(args, "oracle", "agssp", 2) == "oracle/agssp@8-4/2"
    assert lift.lift_key(args, "tocoad", "agssp", 0) == f"tocoad+{tag}/agssp@8-4/0"
    assert lift.lift_key(args, "random", "agssp", 0) == f"random+{tag}/agssp@8-4/0"
    assert lift.lift_key(args, "tocoad", "ssl", 0) == f"tocoad+{tag}/ssl@8-4/0"
    assert tag in lift.random_prefix(args)
    assert tag in lift.scope(args)
    # the untagged form is the committed state's
    assert lift.row_key("tocoad", "agssp", 0, "8-4") == "tocoad/agssp@8-4/0"


def test_a_tagged_key_is_a_valid_model_name() -> None:
    key = lift.lift_key(_args("--tocoad-preset", "demo"), "random", "agssp", 0)
    name = f"lift-{key.rsplit('/', 1)[0]}".replace("_", "-").replace("/", "-").replace("@", "-at-")
    assert check_segment(name, "name") == name


def test_committed_state_reuses_only_map_independent_rows(tmp_path: Path) -> None:
    state = tmp_path / "state.json"
    shutil.copy(COMMITTED, state)
    home = tmp_path / "home"
    home.mkdir()
    runner = lift.Runner({}, state, home)
    args = _args("--tocoad-preset", "cpu", "--pool-limit", "600")
    assert runner.is_done("tocoad/agssp@8-4/0")  # the committed rows are read back
    assert runner.is_done(lift.lift_key(args, "tocoad", "scratch", 0))
    assert not runner.is_done(lift.lift_key(args, "tocoad", "agssp", 0))
    assert not runner.is_done(lift.lift_key(args, "random", "agssp", 0))
    # rows on ToCoAD's maps must be pretrained again; the oracle's are done
    assert lift._needs(runner, args, "tocoad")
    assert lift._needs(runner, args, "random")
    assert not lift._needs(runner, args, "oracle")
    assert lift.scope(args) not in runner.state["made"]  # the committed '8-4' is not this one


class _Suite:
    """A suite process that never answers its health checks."""

    def __init__(self, *args: object, **kwargs: object) -> None:
        self.stopped = False
        _Suite.last = self

    last: _Suite

    def poll(self) -> None:
        return None

    def terminate(self) -> None:
        self.stopped = True

    def wait(self, timeout: float) -> int:
        return 0


def test_a_suite_that_never_starts_is_stopped(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    clock = itertools.count(0, 100)  # each look at the clock: 100 s later
    monkeypatch.setattr(subprocess, "Popen", _Suite)
    monkeypatch.setattr(lift, "_healthy", lambda url: False)
    monkeypatch.setattr(lift, "_free_base", lambda count=6: 21000)
    monkeypatch.setattr(time, "monotonic", lambda: float(next(clock)))
    monkeypatch.setattr(time, "sleep", lambda s: None)
    with pytest.raises(RuntimeError, match="did not start"):
        lift.start_suite(tmp_path, tmp_path / "suite.log")
    assert _Suite.last.stopped


class _PipelineRunner(lift.Runner):
    """A runner whose suite is a dict: the pipeline it started, the finetunes it submitted."""

    def __init__(self, state: Path, home: Path) -> None:
        super().__init__({}, state, home)
        self.submitted: list[str] = []
        self.followed: list[bool] = []

    def pipeline(
        self, key: str, body: dict[str, object], finetune: bool = True
    ) -> tuple[dict[str, object], bool]:
        self.state.setdefault("pipeline_seed", {}).setdefault(key, body["seed"])
        self.followed.append(finetune)
        steps = [
            {"name": "pseudo_boxes", "outputs": {"out_prefix": "labels/", "maps_prefix": "m/"}},
            {"name": "agbp", "outputs": {"artifact": "agbp-1"}},
            {"name": "agdp", "outputs": {"artifact": "agdp-1"}},
            {"name": "finetune", "job_id": "pipeline-finetune"},
        ]
        return {"id": "p1", "steps": steps}, finetune

    def finetune(self, key: str, body: dict[str, object]) -> str:
        self.submitted.append(key)
        return f"job-{len(self.submitted)}"


def test_the_pipelines_finetune_is_only_the_row_of_its_own_seed(tmp_path: Path) -> None:
    home = tmp_path / "home"
    home.mkdir()
    runner = _PipelineRunner(tmp_path / "state.json", home)
    first = _args("--tocoad-preset", "demo", "--seeds", "0", "1")
    rec = lift.recipe(first)
    made = {"tocoad": lift.run_maps_source(runner, first, "tocoad", "ref", rec)}
    key0, job0 = lift.detector_job(runner, first, "ref", rec, made, "tocoad", "agssp", 0)
    assert job0 == "pipeline-finetune"
    assert runner.submitted == []
    runner.state.setdefault("done", {})[key0] = {"job": job0, "map50": 0.1, "map5095": 0.05}
    # a later sitting asks for seed 2 alone: the pipeline (seed 0) is followed only to AGDP,
    # and seed 2 gets a finetune of its own rather than seed 0's result
    later = _args("--tocoad-preset", "demo", "--seeds", "2")
    made = {"tocoad": lift.run_maps_source(runner, later, "tocoad", "ref", rec)}
    assert runner.followed == [True, False]
    key2, job2 = lift.detector_job(runner, later, "ref", rec, made, "tocoad", "agssp", 2)
    assert job2 != "pipeline-finetune"
    assert runner.submitted == [key2]
    assert key2.endswith("/2")


def test_a_state_refuses_rows_of_another_finetune_recipe(tmp_path: Path) -> None:
    home = tmp_path / "home"
    home.mkdir()
    state = tmp_path / "state.json"
    runner = lift.Runner({}, state, home)
    runner.check_finetune(lift.recipe(_args("--epochs", "80"))["finetune"])
    runner.save()
    again = lift.Runner({}, state, home)
    again.check_finetune(lift.recipe(_args("--epochs", "80"))["finetune"])  # same: accepted
    with pytest.raises(SystemExit, match="epochs"):
        again.check_finetune(lift.recipe(_args("--epochs", "389"))["finetune"])


def test_recipes_stored_before_val_every_validated_every_epoch() -> None:
    old = {"epochs": 80, "batch": 8}
    assert lift.same_finetune(old, {**old, "val_every": 1})
    assert not lift.same_finetune(old, {**old, "val_every": 5})
    assert not lift.same_finetune(None, old)
    assert lift.same_finetune(old, {**old, "val_every": 1, "min_steps": 0})
    assert not lift.same_finetune(old, {**old, "min_steps": 2500})
    sent = lift.recipe(_args())["finetune"]  # always sent explicitly
    assert (sent["val_every"], sent["min_steps"]) == (1, 0)


class _Trimmed:
    """A runner whose seed-2 finetune was canceled by an operator."""

    def result(self, key: str, job_id: str) -> dict[str, float] | None:
        if key.endswith("/2"):
            return None
        return {"job": job_id, "map50": 0.2 if key.endswith("/0") else 0.4, "map5095": 0.1}


def test_a_canceled_row_is_left_out_of_the_summary_and_named() -> None:
    jobs = {"tocoad": {"agssp": {s: (f"tocoad/agssp@16-16/{s}", f"j{s}") for s in (0, 1, 2)}}}
    found = lift.summarize(_Trimmed(), jobs)  # type: ignore[arg-type]
    row = found["tocoad"]["agssp"]
    assert [r["seed"] for r in row["seeds"]] == [0, 1]
    assert row["map50_mean"] == pytest.approx(0.3)
    assert row["canceled_seeds"] == [2]
