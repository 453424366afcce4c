"""Several processes: which rank this is, the process group, and starting workers with PyTorch's launcher.

Nothing here is a protocol of our own:

- ranks come from the environment that ``torchrun`` / ``accelerate launch`` set for each worker
  (``RANK``, ``LOCAL_RANK``, ``WORLD_SIZE``, ``MASTER_ADDR``...);
- ``recipe run --nproc-per-node N`` starts the workers with ``torch.distributed.run`` (:mod:`.launcher`), each
  worker being ``python -m recipetune run ...``;
- workers talk through ``torch.distributed`` collectives (gloo on CPUs, NCCL on GPUs);
- a failing worker records its error with torch's elastic ``ErrorHandler``; the launcher reads it back from
  the ``ChildFailedError`` that ``torch.distributed.run`` raises, and every other worker is stopped by the
  elastic agent.

Without ``WORLD_SIZE`` > 1 every function here is a no-op that imports nothing: one process runs as before.
"""

from __future__ import annotations

import os
import socket
import sys
from contextlib import contextmanager
from typing import Any, Iterator

def rank() -> int:
    """This process's global rank (0 when not launched)."""
    return int(os.environ.get("RANK", "0") or 0)


def local_rank() -> int:
    """This process's rank on its node: the GPU it uses."""
    return int(os.environ.get("LOCAL_RANK", "0") or 0)


def world_size() -> int:
    """Processes in the job (1 when not launched)."""
    return int(os.environ.get("WORLD_SIZE", "1") or 1)


def is_distributed() -> bool:
    return world_size() > 1


def is_main() -> bool:
    """Whether this process writes the run folder (rank 0, or the only process)."""
    return rank() == 0


def launched_worker() -> bool:
    """Whether this process was started by torchrun / accelerate launch (it must not launch again)."""
    return "LOCAL_RANK" in os.environ and "WORLD_SIZE" in os.environ


def _group():
    """``torch.distributed`` when a process group is up, else None (never imports torch itself)."""
    if not is_distributed() or "torch" not in sys.modules:
        return None
    import torch.distributed as dist

    return dist if dist.is_available() and dist.is_initialized() else None


def init_worker(backend: str = "auto", timeout_minutes: int = 30) -> str | None:
    """Join the process group of a launched job: NCCL on GPUs (one per local rank), gloo on CPUs.

    Accelerate and transformers' Trainer use this group instead of making their own. Returns the backend, or
    None for a single process.
    """
    if not is_distributed():
        return None
    from datetime import timedelta

    import torch
    import torch.distributed as dist

    use_cuda = torch.cuda.is_available()
    if use_cuda:
        torch.cuda.set_device(local_rank())
    chosen = ("nccl" if use_cuda else "gloo") if backend == "auto" else backend
    if not dist.is_initialized():
        import atexit

        dist.init_process_group(backend=chosen, timeout=timedelta(minutes=timeout_minutes))
        atexit.register(_leave_group)
    return chosen


def _leave_group() -> None:
    """At exit: destroy the process group (a local step) so NCCL does not warn about a group left open."""
    import torch.distributed as dist

    if dist.is_available() and dist.is_initialized():
        dist.destroy_process_group()


def barrier() -> None:
    group = _group()
    if group is not None:
        group.barrier()


def broadcast_from_main(value: Any) -> Any:
    """Rank 0's ``value`` on every rank (any picklable object)."""
    group = _group()
    if group is None:
        return value
    box = [value]
    group.broadcast_object_list(box, src=0)
    return box[0]


def gather(value: Any) -> list[Any]:
    """Every rank's ``value``, in rank order, on every rank."""
    group = _group()
    if group is None:
        return [value]
    out: list[Any] = [None] * world_size()
    group.all_gather_object(out, value)
    return out


@contextmanager
def main_first() -> Iterator[None]:
    """Rank 0 runs the block first; the others wait for it, then run it (e.g. to read what it cached)."""
    if not is_main():
        barrier()
    yield
    if is_main():
        barrier()


def rank_hardware() -> dict[str, Any]:
    """What this rank runs on: host, device and its memory."""
    info: dict[str, Any] = {"rank": rank(), "local_rank": local_rank(), "host": socket.gethostname(), "pid": os.getpid()}
    torch = sys.modules.get("torch")
    if torch is not None and torch.cuda.is_available():
        index = torch.cuda.current_device()
        props = torch.cuda.get_device_properties(index)
        info.update(device=f"cuda:{index}", gpu=props.name, gpu_memory_gib=round(props.total_memory / 2**30, 2))
    else:
        info["device"] = "cpu"
    return info


def describe_job(recipe: Any) -> dict[str, Any] | None:
    """World size, strategy, backend and every rank's hardware (for ``resolved.json``); None for one process.

    A collective: every rank calls it at the same point.
    """
    if not is_distributed():
        return None
    ranks = gather(rank_hardware())
    group = _group()
    table = recipe.header.distributed
    nodes = int(os.environ.get("GROUP_WORLD_SIZE") or len({r["host"] for r in ranks}))  # torchrun: its agents
    return {"world_size": world_size(), "nodes": nodes, "strategy": table.strategy,
            "backend": group.get_backend() if group is not None else None, "ranks": ranks}


def record_failure(message: str) -> None:
    """Leave this worker's error where torch's elastic launcher looks for it (its error file), so the launcher
    can say which rank failed and why. Does nothing outside a launched worker."""
    if not os.environ.get("TORCHELASTIC_ERROR_FILE"):
        return
    from torch.distributed.elastic.multiprocessing.errors import get_error_handler

    try:
        raise WorkerError(message)
    except WorkerError as exc:
        get_error_handler().record_exception(exc)


class WorkerError(Exception):
    """A worker's error as the launcher shows it (its message is what the worker printed)."""


def global_batch_message(global_batch: int, per_device: int, processes: int) -> str:
    per_step = per_device * processes
    return (f"global_batch_size = {global_batch} is not a multiple of per_device_train_batch_size x processes = "
            f"{per_device} x {processes} = {per_step}; pick one that is (e.g. "
            f"{per_step * max(1, round(global_batch / per_step))})")


def quiet_other_ranks() -> None:
    """One log on the terminal: ranks other than 0 print warnings and errors only (their run.rankN.log has all)."""
    if is_main():
        return
    import logging

    for handler in logging.getLogger().handlers:
        handler.setLevel(logging.WARNING)
    # and no progress bars of their own (huggingface_hub's switch covers transformers' loading bars)
    os.environ.setdefault("HF_HUB_DISABLE_PROGRESS_BARS", "1")
    os.environ.setdefault("HF_DATASETS_DISABLE_PROGRESS_BARS", "1")
