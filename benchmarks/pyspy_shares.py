"""Turn a py-spy speedscope recording of the inference server into shares of time.

Every sample of every Python thread is put in one category by its innermost frame that a
rule knows (``RULES``, first match from the leaf up); a thread waiting (its leaf is a queue
or lock wait, or the idle event loop) is ``idle``. Two views come out:

* per thread, the share of wall time in each category (``wall``): for the batcher's thread
  this says how much of the time the model was running at all;
* the server's CPU seconds by category (``cpu``): each Python thread's CPU time from
  ``/proc`` spread over its non-idle categories in proportion to its samples, the event
  loop's unexplained rest as ``event_loop`` (uvloop and httptools run in C, below any
  Python frame), and threads py-spy does not see (ONNX Runtime's intra-op pool) as
  ``ort_forward``.

Pure functions on plain data: the benchmark (``benchmarks.detect_pyspy``) does the I/O.
"""

from __future__ import annotations

import os
import re
from collections import Counter
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

CATEGORIES = (
    "ort_forward",
    "decode",
    "letterbox_tensor",
    "postprocess",
    "serialise",
    "event_loop",
    "handoff",
    "other",
)
IDLE = "idle"

# (category, function-name regex, file-name regex); the first rule matching a frame, from
# the leaf up, decides. Waits come first: a thread blocked in a queue is idle wherever.
RULES: tuple[tuple[str, str, str], ...] = (
    (IDLE, r"^(Condition\.)?wait$", r"threading\.py$"),
    (IDLE, r"^_worker$", r"concurrent/futures/thread\.py$|^thread\.py$"),
    ("ort_forward", r"^(Session\.)?run$", r"onnxruntime_inference_collection\.py$"),
    ("ort_forward", r"infer|run", r"openvino"),
    ("ort_forward", r"^(OnnxDetector\.)?(_run|forward)$", r"onnx_detector\.py$"),
    ("decode", r"decode_image", r"intake\.py$"),
    ("letterbox_tensor", r"letterbox|to_input_tensor|as_rgb", r""),
    ("postprocess", r"_postprocess|decode_and_nms|nms|scale_boxes|normalized_boxes", r""),
    ("postprocess", r"^_detections$", r"usecases/detect\.py$|^detect\.py$"),
    ("serialise", r"DetectResponse|serialize_response|jsonable_encoder|render", r""),
    ("serialise", r"", r"pydantic"),
    ("handoff", r"", r"concurrent/futures|^_base\.py$|queue\.py$|threading\.py$"),
    ("handoff", r"", r"batcher\.py$|to_thread|anyio/_backends|^_asyncio\.py$"),
    ("handoff", r"_chain_future|call_soon_threadsafe|run_in_executor|_call_set_state", r""),
)
# The event loop's resting frame: uvloop waits (and runs its C callbacks) below it.
LOOP_REST = re.compile(r"^(Runner\.run|run_until_complete|run_forever|run)$")
_THREAD = re.compile(r'Thread (\d+)(?: "(.*)")?')


@dataclass(frozen=True)
class ThreadProfile:
    """One thread's samples, each reduced to a category (``idle`` included)."""

    tid: int
    name: str
    counts: Counter[str]
    rest: int  # samples resting in the event loop's C code (idle or C work: /proc decides)

    @property
    def samples(self) -> int:
        return sum(self.counts.values()) + self.rest


def role(name: str) -> str:
    """What a Python thread is for, from its name."""
    if name == "MainThread":
        return "event_loop"
    if name.startswith("batcher"):
        return "batcher"
    if re.match(r"^(uvloop|asyncio)_\d+$", name):
        return "decode_pool"  # the loop's default executor: asyncio.to_thread
    if name.startswith("AnyIO worker"):
        return "anyio_workers"  # starlette's run_in_threadpool: sync dependencies
    return "other"


def categorise(stack: Sequence[tuple[str, str]], main: bool) -> str:
    """The category of one sample: ``stack`` is (function, file) pairs, root first."""
    for function, filename in reversed(stack):
        for category, fn_re, file_re in RULES:
            if re.search(fn_re, function) and re.search(file_re, filename):
                return category
    if main:
        return "event_loop"
    return "other"


def read_speedscope(data: Mapping[str, Any]) -> list[ThreadProfile]:
    """Per-thread category counts of a ``py-spy record --format speedscope --threads`` file."""
    frames = [(str(f["name"]), str(f.get("file") or "")) for f in data["shared"]["frames"]]
    out = []
    for profile in data["profiles"]:
        match = _THREAD.search(str(profile["name"]))
        if match is None:
            continue
        tid, name = int(match.group(1)), match.group(2) or ""
        main = role(name) == "event_loop"
        counts: Counter[str] = Counter()
        rest = 0
        for sample in profile["samples"]:
            stack = [frames[i] for i in sample]
            if main and stack and LOOP_REST.match(stack[-1][0]):
                rest += 1
            else:
                counts[categorise(stack, main)] += 1
        out.append(ThreadProfile(tid, name, counts, rest))
    return out


def thread_cpu(pid: int) -> dict[int, tuple[str, float]]:
    """Each live thread of ``pid``: its name and user + system CPU seconds so far."""
    tick = os.sysconf("SC_CLK_TCK")
    out = {}
    for task in Path(f"/proc/{pid}/task").iterdir():
        try:
            stat = (task / "stat").read_text()
        except OSError:
            continue  # the thread ended
        name = stat[stat.index("(") + 1 : stat.rindex(")")]
        fields = stat[stat.rindex(")") + 2 :].split()
        out[int(task.name)] = (name, (int(fields[11]) + int(fields[12])) / tick)
    return out


def cpu_delta(
    before: Mapping[int, tuple[str, float]], after: Mapping[int, tuple[str, float]]
) -> dict[int, tuple[str, float]]:
    """CPU seconds each thread used between two ``thread_cpu`` readings."""
    return {t: (n, s - before.get(t, (n, 0.0))[1]) for t, (n, s) in after.items()}


def wall_shares(profiles: Sequence[ThreadProfile]) -> dict[str, dict[str, float]]:
    """Per thread role, the share of its wall time in each category (roles pooled)."""
    by_role: dict[str, Counter[str]] = {}
    for p in profiles:
        counts = by_role.setdefault(role(p.name), Counter())
        counts.update(p.counts)
        counts["loop_c_or_idle"] += p.rest
    return {
        r: {k: round(v / max(sum(c.values()), 1), 4) for k, v in c.most_common()}
        for r, c in by_role.items()
    }


def cpu_by_category(
    profiles: Sequence[ThreadProfile], cpu: Mapping[int, tuple[str, float]], rate: float
) -> dict[str, float]:
    """The server's CPU seconds by category (see the module docstring for the rules).

    Args:
        profiles: From ``read_speedscope``.
        cpu: Per-thread CPU seconds over the recording (``cpu_delta``).
        rate: py-spy's samples per second, to turn the event loop's samples into seconds.
    """
    seconds: dict[str, float] = dict.fromkeys(CATEGORIES, 0.0)
    seen = set()
    for p in profiles:
        seen.add(p.tid)
        used = cpu.get(p.tid, (p.name, 0.0))[1]
        busy = {k: v for k, v in p.counts.items() if k != IDLE}
        total = sum(busy.values())
        if role(p.name) == "event_loop":
            # Python-level handlers count at their sampled time (at most the thread's CPU);
            # the rest of the loop's CPU ran in C (uvloop, httptools) under its resting frame.
            python_s = min(used, total / rate)
            seconds["event_loop"] += used - python_s
            used = python_s
        if total == 0:
            seconds["other"] += used
            continue
        for category, n in busy.items():
            seconds[category] += used * n / total
    for tid, (name, used) in cpu.items():
        if tid not in seen and used > 0:
            seconds["ort_forward" if name == "python" else "other"] += used
    ranked = sorted(seconds.items(), key=lambda kv: -kv[1])
    return {k: round(v, 3) for k, v in ranked if v > 0}
