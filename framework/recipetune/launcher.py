"""``recipe run --nproc-per-node N``: start the workers with PyTorch's elastic launcher, and join a job as one.

The launcher is ``torch.distributed.run`` (its Python API: ``parse_args`` + ``run``, the code behind ``torchrun``);
each worker runs ``python -m recipetune run ...`` again, without the launcher's options. Before anything starts,
:func:`launch_problems` says what this machine rules out. A worker (started by this, by ``torchrun`` or by
``accelerate launch``) joins the process group and takes rank 0's run folder (:func:`join_job`).
"""

from __future__ import annotations

import os
import sys
from dataclasses import dataclass
from typing import Any

from .distributed import (WorkerError, broadcast_from_main, global_batch_message, init_worker, is_distributed, is_main,
                          launched_worker, world_size)

LAUNCH_OPTIONS = ("nproc_per_node", "nnodes", "node_rank", "rdzv_endpoint")
"""``recipe run`` options that belong to the launcher, not to the workers."""


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
        elif "To enable traceback" in str(message):  # no error file: it failed outside a stage (recipe problems...)
            message = "it ended without an error report: its own message is printed above"
        return LaunchFailure(int(failed_rank), failure.exitcode, str(message))
    return None


def cuda_device_count() -> int:
    """GPUs this machine's torch sees (0 without CUDA)."""
    import torch

    return torch.cuda.device_count() if torch.cuda.is_available() else 0


def launch_problems(recipe: Any, request: LaunchRequest, flag: bool) -> list[Any]:
    """What this machine rules out for ``request`` (more processes than GPUs, DeepSpeed missing, a global batch
    that does not divide); ``flag``: the process count came from ``--nproc-per-node``, not the recipe."""
    import importlib.util

    from .problems import Problem

    table = recipe.header.distributed
    problems = []
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


def command_line_problems(request: LaunchRequest) -> list[Any]:
    """Launcher options that do not go together (checked where ``recipe run`` launches, not in the workers)."""
    from .problems import Problem

    problems = []
    if request.nnodes > 1 and not request.rdzv_endpoint:
        problems.append(Problem("", f"--nnodes {request.nnodes} needs --rdzv-endpoint HOST:PORT: where the machines "
                                "meet (node 0's address and a free port)"))
    if request.node_rank is not None and request.node_rank >= request.nnodes:
        problems.append(Problem("", f"--node-rank {request.node_rank} is not below --nnodes {request.nnodes}"))
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
    problems = [*command_line_problems(request), *locate_problems(
        recipe, launch_problems(recipe, request, flag=launch_params.get("nproc_per_node") is not None))]
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
