"""Several processes: which rank this is, the process group, and starting workers with PyTorch's launcher.

Nothing here is a protocol of our own:

- ranks come from the environment that ``torchrun`` / ``accelerate launch`` set for each worker
  (``RANK``, ``LOCAL_RANK``, ``WORLD_SIZE``, ``MASTER_ADDR``...);
- ``recipe run --nproc-per-node N`` starts the workers with ``torch.distributed.run`` (its Python API:
  ``parse_args`` + ``run``, the code behind ``torchrun``), each worker being ``python -m recipetune run ...``;
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
from dataclasses import dataclass
from typing import Any, Iterator

LAUNCH_OPTIONS = ("nproc_per_node", "nnodes", "node_rank", "rdzv_endpoint")
"""``recipe run`` options that belong to the launcher, not to the workers."""


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


# ---------------------------------------------------------------------------------------------- launching
@dataclass
class LaunchRequest:
    """How many workers to start here, and how this node meets the others."""

    nproc_per_node: int = 1
    nnodes: int = 1
    node_rank: int | None = None
    rdzv_endpoint: str | None = None

    @property
    def world_size(self) -> int:
        return self.nproc_per_node * self.nnodes

    @property
    def launches(self) -> bool:
        return self.world_size > 1 or self.nnodes > 1

    def torchrun_args(self) -> list[str]:
        """The arguments of ``torchrun`` for this request (before the worker's ``-m recipetune ...``).

        One node: ``--standalone`` (a local rendezvous on a free port). Several: ``--node-rank`` picks the
        static rendezvous (ranks by node rank, the endpoint is rank 0's host, as ``--master-addr/--master-port``);
        without it the elastic c10d rendezvous at the endpoint numbers the nodes as they arrive.
        """
        args = ["--nproc-per-node", str(self.nproc_per_node)]
        if self.nnodes == 1 and not self.rdzv_endpoint:
            return args + ["--standalone"]
        args += ["--nnodes", str(self.nnodes), "--rdzv-endpoint", self.rdzv_endpoint or "localhost:29500"]
        if self.node_rank is not None:
            args += ["--rdzv-backend", "static", "--node-rank", str(self.node_rank)]
        else:
            args += ["--rdzv-backend", "c10d", "--rdzv-id", os.environ.get("RECIPETUNE_RDZV_ID", "recipetune")]
        return args


@dataclass
class LaunchFailure:
    rank: int
    exitcode: int
    message: str


def launch(request: LaunchRequest, worker_args: list[str]) -> LaunchFailure | None:
    """Start this node's workers (``python -m recipetune WORKER_ARGS``) with ``torch.distributed.run`` and wait.

    Returns None when every worker succeeded, else the first failure (its global rank and message): the elastic
    agent has then stopped the other workers.
    """
    from torch.distributed import run as torchrun
    from torch.distributed.elastic.multiprocessing.api import SignalException
    from torch.distributed.elastic.multiprocessing.errors import ChildFailedError

    args = torchrun.parse_args([*request.torchrun_args(), "-m", "recipetune", *worker_args])
    try:
        torchrun.run(args)
    except SignalException as exc:  # Ctrl-C / SIGTERM: the agent has passed it on to the workers and stopped them
        raise KeyboardInterrupt(str(exc)) from exc
    except ChildFailedError as exc:
        failed_rank, failure = exc.get_first_failure()
        message = failure.message
        if isinstance(message, dict):
            message = message.get("message", str(message))
        message = str(message).removeprefix(f"{WorkerError.__name__}: ")
        if failure.exitcode < 0 and "Signal" not in str(message):
            message = f"killed by signal {-failure.exitcode} ({failure.signal_name()})"
        return LaunchFailure(int(failed_rank), failure.exitcode, str(message))
    return None


def cuda_device_count() -> int:
    """GPUs this machine's torch sees (0 without CUDA)."""
    import torch

    return torch.cuda.device_count() if torch.cuda.is_available() else 0


def global_batch_message(global_batch: int, per_device: int, processes: int) -> str:
    per_step = per_device * processes
    return (f"global_batch_size = {global_batch} is not a multiple of per_device_train_batch_size x processes = "
            f"{per_device} x {processes} = {per_step}; pick one that is (e.g. "
            f"{per_step * max(1, round(global_batch / per_step))})")


def launch_problems(recipe: Any, request: LaunchRequest, flag: bool) -> list[Any]:
    """What this machine rules out for ``request`` (more processes than GPUs, DeepSpeed missing, a global batch
    that does not divide); ``flag``: the process count came from ``--nproc-per-node``, not the recipe."""
    import importlib.util

    from .problems import Problem

    table = recipe.header.distributed
    problems = []
    if request.nnodes > 1 and not request.rdzv_endpoint:
        problems.append(Problem("", f"--nnodes {request.nnodes} needs --rdzv-endpoint HOST:PORT: where the machines "
                                "meet (node 0's address and a free port)"))
    if request.node_rank is not None and request.node_rank >= request.nnodes:
        problems.append(Problem("", f"--node-rank {request.node_rank} is not below --nnodes {request.nnodes}"))
    gpus = cuda_device_count()
    if gpus and request.nproc_per_node > gpus:
        where = f"--nproc-per-node {request.nproc_per_node}: " if flag else ""
        problems.append(Problem("" if flag else "distributed.nproc_per_node",
                                f"{where}{request.nproc_per_node} processes per node is more than the {gpus} GPU(s) this "
                                f"machine has; use at most {gpus}"))
    if not gpus and table.strategy == "fsdp" and request.world_size > 1:
        problems.append(Problem("distributed.strategy", 'strategy "fsdp" shards on GPUs; on CPUs Accelerate trains '
                                "as ddp (every process holds the whole model)", severity="warning"))
    if not gpus and table.strategy == "deepspeed":
        problems.append(Problem("distributed.strategy", 'strategy "deepspeed" needs NVIDIA GPUs; "ddp" runs on CPUs too'))
    if table.strategy == "deepspeed" and importlib.util.find_spec("deepspeed") is None:
        problems.append(Problem("distributed.strategy", 'strategy "deepspeed" needs the deepspeed package: '
                                "pip install 'recipetune[deepspeed]', or use strategy = \"fsdp\""))
    for variable, strategy in (("ACCELERATE_USE_FSDP", "fsdp"), ("ACCELERATE_USE_DEEPSPEED", "deepspeed")):
        if os.environ.get(variable, "").lower() == "true" and table.strategy != strategy:
            problems.append(Problem("distributed.strategy", f"accelerate launch was set up for {strategy} ({variable}) "
                                    f'but the recipe says strategy = "{table.strategy}": the recipe decides; set '
                                    f'strategy = "{strategy}" or launch without it'))
    train = recipe.train.options if recipe.train is not None else None
    global_batch = getattr(train, "global_batch_size", None)
    if global_batch and global_batch % (train.per_device_train_batch_size * request.world_size):
        problems.append(Problem("train.global_batch_size", global_batch_message(
            global_batch, train.per_device_train_batch_size, request.world_size)))
    return problems


def worker_arguments(ctx: Any) -> list[str]:
    """The ``recipe run`` command line again, without the launcher's options: what each worker runs.

    Built from click's parsed parameters, so options other plugins or later versions add travel too.
    """
    import click

    options: list[str] = []
    positional: list[str] = []
    for param in ctx.command.params:
        value = ctx.params.get(param.name)
        if param.name in LAUNCH_OPTIONS or value is None:
            continue
        if isinstance(param, click.Argument):
            positional += list(value) if param.nargs == -1 else [str(value)]
        elif getattr(param, "is_flag", False):
            if value and value != param.default:
                options.append(param.opts[0])
        elif value != param.default:
            options += [param.opts[0], str(value)]
    return [ctx.info_name, *options, "--", *positional]


def launch_from_cli(recipe: Any, ctx: Any, launch_params: dict[str, Any]) -> int:
    """``recipe run --nproc-per-node N``: check what this machine allows, start the workers, report the first
    failure by its rank. Returns the exit status."""
    import click

    from .cli import EXIT_FAILED, EXIT_PROBLEMS, _print_problems
    from .recipe.loader import locate_problems

    request = launch_request(recipe, launch_params)
    problems = locate_problems(recipe, launch_problems(recipe, request, flag=launch_params.get("nproc_per_node") is not None))
    if problems:
        _print_problems(problems)
    if any(p.severity == "error" for p in problems):
        return EXIT_PROBLEMS
    click.echo(f"launching {request.nproc_per_node} process(es) on this node"
               + (f", {request.world_size} on {request.nnodes} nodes" if request.nnodes > 1 else "")
               + f" (strategy {recipe.header.distributed.strategy}) through torch.distributed.run", err=True)
    try:
        failure = launch(request, worker_arguments(ctx))
    except KeyboardInterrupt:
        click.echo("\ninterrupted: every worker was stopped (each finishes its step and the run saves a checkpoint "
                   "first); the same command resumes it from there", err=True)
        return 130
    if failure is None:
        return 0
    click.echo(f"error: rank {failure.rank} failed (exit code {failure.exitcode}): {failure.message}; "
               "every other rank was stopped", err=True)
    return EXIT_FAILED


def launch_request(recipe: Any, params: dict[str, Any]) -> LaunchRequest:
    nproc = params.get("nproc_per_node") or recipe.header.distributed.nproc_per_node or 1
    return LaunchRequest(nproc_per_node=nproc, nnodes=params.get("nnodes") or 1, node_rank=params.get("node_rank"),
                         rdzv_endpoint=params.get("rdzv_endpoint"))


def wants_launch(recipe: Any, params: dict[str, Any]) -> bool:
    """Whether ``recipe run`` should start workers (not when it is one of them already)."""
    return not launched_worker() and launch_request(recipe, params).launches


def join_job(recipe: Any, output_dir: str | None) -> str | None:
    """In a worker of a job: check what the machine allows, join the process group, and agree on one run
    folder (rank 0's choice). One process: returns ``output_dir`` unchanged."""
    if not is_distributed():
        return output_dir
    from .cli import EXIT_PROBLEMS, _print_problems
    from .recipe.loader import locate_problems
    from .run import default_output_dir

    request = LaunchRequest(nproc_per_node=int(os.environ.get("LOCAL_WORLD_SIZE", world_size())),
                            nnodes=max(1, world_size() // int(os.environ.get("LOCAL_WORLD_SIZE", world_size()))))
    problems = [p for p in locate_problems(recipe, launch_problems(recipe, request, flag=True)) if p.severity == "error"]
    if problems:
        if is_main():
            _print_problems(problems)
        sys.exit(EXIT_PROBLEMS)
    table = recipe.header.distributed
    init_worker(table.backend, table.timeout_minutes)
    chosen = output_dir or (str(recipe.header.output_dir) if recipe.header.output_dir else str(default_output_dir(recipe)))
    return broadcast_from_main(chosen)


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
