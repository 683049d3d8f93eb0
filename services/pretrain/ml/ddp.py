"""AGBP on several GPUs of one node: one spawned process per GPU, DDP inside ``train_agbp``.

The job process stays the parent: children send progress, checkpoints and the result back
through a queue (as ``torch.save`` bytes) and read a shared stop flag, so only the parent
touches the job record and the object store. Untested on real multi-GPU hardware here;
``backend="gloo"`` runs the same path on CPU processes.
"""

from __future__ import annotations

import io
import queue
import socket
from multiprocessing.synchronize import Event
from pathlib import Path
from typing import Any

import torch
import torch.distributed as dist
import torch.multiprocessing as mp
from torch.multiprocessing.spawn import spawn

from services.pretrain.ml.data import PairSource
from services.pretrain.ml.train import AgbpResult, train_agbp
from services.pretrain.params import AgbpConfig
from shared.ml.hooks import TrainHooks

_POLL_S = 1.0


def _to_bytes(obj: Any) -> bytes:
    buffer = io.BytesIO()
    torch.save(obj, buffer)
    return buffer.getvalue()


def _from_bytes(raw: bytes) -> Any:
    # Our own children's states: tensors and plain types only.
    return torch.load(io.BytesIO(raw), map_location="cpu", weights_only=True)


def _free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def train_agbp_ddp(
    cfg: AgbpConfig,
    data: PairSource,
    *,
    hooks: TrainHooks,
    world: int,
    weights: Path | None = None,
    backend: str = "nccl",
) -> AgbpResult:
    """Run ``train_agbp`` in ``world`` processes (rank r on ``cuda:r`` for NCCL, CPU for gloo).

    ``cfg.batch_size`` is per process. ``data`` and ``cfg`` are pickled into the children.

    Raises:
        RuntimeError: a child failed (its traceback is in the message) or sent no result.
    """
    ctx = mp.get_context("spawn")
    events: Any = ctx.Queue()
    stop = ctx.Event()
    args = (world, _free_port(), backend, cfg, data, weights, hooks.resume_state, events, stop)
    procs: Any = spawn(_rank_main, args=args, nprocs=world, join=False)  # type: ignore[no-untyped-call]
    result: AgbpResult | None = None
    done = False
    while not done:
        done = procs.join(timeout=_POLL_S)
        result = _drain(events, hooks, result)
        if not done and hooks.should_stop():
            stop.set()
    if result is None:
        raise RuntimeError("DDP training ended without a result from rank 0")
    return result


def _drain(events: Any, hooks: TrainHooks, result: AgbpResult | None) -> AgbpResult | None:
    while True:
        try:
            kind, payload = events.get_nowait()
        except queue.Empty:
            return result
        if kind == "progress":
            percent, message, metrics = payload
            hooks.on_progress(percent, message, metrics)
        elif kind == "checkpoint":
            hooks.on_checkpoint(_from_bytes(payload))
        elif kind == "result":
            state = _from_bytes(payload)
            result = AgbpResult(
                state_dict=state["state_dict"],
                history=state["history"],
                config=AgbpConfig.model_validate(state["config"]),
                steps=int(state["steps"]),
                stopped=bool(state["stopped"]),
            )


def _rank_main(
    rank: int,
    world: int,
    port: int,
    backend: str,
    cfg: AgbpConfig,
    data: PairSource,
    weights: Path | None,
    resume: dict[str, Any] | None,
    events: Any,
    stop: Event,
) -> None:
    device = torch.device("cuda", rank) if backend == "nccl" else torch.device("cpu")
    if device.type == "cuda":
        torch.cuda.set_device(device)
    dist.init_process_group(
        backend, init_method=f"tcp://127.0.0.1:{port}", rank=rank, world_size=world
    )
    try:
        hooks = TrainHooks(
            on_progress=lambda p, m, x: events.put(("progress", (p, m, dict(x)))),
            should_stop=stop.is_set,
            on_checkpoint=lambda state: events.put(("checkpoint", _to_bytes(state))),
            resume_state=resume,
        )
        result = train_agbp(cfg, data, hooks=hooks, device=device, weights=weights)
        if rank == 0:
            state = {
                "state_dict": result.state_dict,
                "history": result.history,
                "config": result.config.model_dump(mode="json"),
                "steps": result.steps,
                "stopped": result.stopped,
            }
            events.put(("result", _to_bytes(state)))
    finally:
        dist.destroy_process_group()
