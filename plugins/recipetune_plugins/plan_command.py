"""Command ``recipe plan RECIPE [--gpu NAME|GiB]``: what a run will need, before any weight is loaded.

From the model's ``config.json`` (a local folder, a converted GGUF, or the Hugging Face cache), the data
(the format stage's own code and cache: only the tokenizer is loaded) and the recipe: parameter counts,
GPU memory by part (:mod:`.memory_estimate`), whether it fits the target GPU, the largest micro-batch
that would, whether packing is on and why (:mod:`.packing`), and the expected steps and time from the
throughput the GPU benchmark measured (``throughput.json`` beside this module, written from
``bench/gpu`` results). Works on a laptop for a target GPU: ``--gpu H100`` or ``--gpu 24GiB``.

    recipe plan recipes/llama32_finetome.toml --gpu H100
    recipe plan recipes/quickstart.toml                  # this machine (its GPU, or its RAM on a CPU)
"""

from __future__ import annotations

import json
import math
import re
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import click

from recipetune import hookimpl

GPUS = {
    "B200": 178.4, "H200": 139.8, "H100": 79.2, "H100-80GB": 79.2, "A100": 79.2, "A100-80GB": 79.2,
    "A100-40GB": 39.4, "L40S": 44.4, "L40": 44.4, "A6000": 47.4, "A10G": 22.0, "A10": 22.0, "L4": 22.0, "T4": 14.7,
    "V100": 15.8, "V100-32GB": 31.7, "RTX4090": 23.6, "RTX3090": 23.6, "RTX4080": 15.6, "RTX3060": 11.7,
}
"""Memory (GiB, as torch reports it) of GPUs by the name ``--gpu`` takes (case, spaces and dashes ignored)."""

THROUGHPUT_FILE = Path(__file__).with_name("throughput.json")


@dataclass
class Target:
    name: str
    gib: float
    gpu: bool
    key: str | None = None  # the GPUS key, for the throughput table


def parse_gpu(text: str) -> Target:
    """``H100``, ``rtx 4090``, ``24GiB``, ``24`` -> the target's memory."""
    value = text.strip()
    number = re.fullmatch(r"(\d+(?:\.\d+)?)\s*(gib|gb|g)?", value, flags=re.IGNORECASE)
    if number:
        gib = float(number.group(1)) * (0.931 if (number.group(2) or "").lower() == "gb" else 1.0)
        return Target(f"a {gib:g} GiB GPU", gib, True)
    squashed = re.sub(r"[\s_-]", "", value).upper()
    for key, gib in GPUS.items():
        if re.sub(r"[\s_-]", "", key).upper() == squashed:
            return Target(key, gib, True, key)
    from recipetune import UserError

    raise UserError(f"--gpu {text!r}: not a GPU this knows ({', '.join(GPUS)}) nor a size such as 24GiB")


def this_machine() -> Target:
    from .memory_estimate import gpu_free_gib

    gpu = gpu_free_gib()
    if gpu is not None:
        name = gpu[1].removeprefix("GPU ")
        key = next((k for k in GPUS if re.sub(r"[\s_-]", "", k).upper() in re.sub(r"[\s_-]", "", name).upper()), None)
        return Target(f"this machine's {name} ({gpu[0]:.1f} GiB free)", gpu[0], True, key)
    try:
        with open("/proc/meminfo") as fh:
            info = dict(line.split(":", 1) for line in fh)
        gib = int(info["MemAvailable"].split()[0]) / 2**20
    except (OSError, KeyError, ValueError):
        gib = float("inf")
    return Target(f"this machine's RAM (no GPU; {gib:.1f} GiB available)", gib, False, "CPU")


def throughput(target: Target, backend: str, parameters: int, packed: bool = False) -> tuple[float, str] | None:
    """Expected trained tokens per second: the measured entry of this GPU and backend (packed or padded, when
    measured) nearest in size, scaled by parameters (the work per token grows with them)."""
    try:
        table = json.loads(THROUGHPUT_FILE.read_text())["entries"]
    except (OSError, ValueError, KeyError):
        return None
    rows = [r for r in table if r["gpu"] == target.key and r["backend"] == backend]
    rows = [r for r in rows if r.get("packed", False) == packed] or rows
    if not rows:
        return None
    best = min(rows, key=lambda r: abs(math.log(r["parameters"] / parameters)))
    rate = best["tokens_per_s"] * best["parameters"] / parameters
    kind = "packed" if best.get("packed") else "padded"
    return rate, (f"{best['tokens_per_s']:.0f} tokens/s measured for {best['parameters'] / 1e9:.2f}B, {kind}, on "
                  f"{best['gpu']} ({best['source']})")


@dataclass
class Plan:
    lines: list[str] = field(default_factory=list)
    data: dict[str, Any] = field(default_factory=dict)
    verdict: str | None = None
    fix: str | None = None


def data_lengths(recipe, use_cache: bool = True) -> tuple[list[int], dict] | None:
    """Sample lengths and stats of the format stage (from its cache when present); None when the data or the
    tokenizer is not on this machine."""
    if recipe.format is None:
        return None
    from recipetune import UserError

    from .data_command import load_tokenizer

    try:
        tokenizer = load_tokenizer(recipe, local_only=True)  # a plan never downloads (nor waits on retries)
        from recipetune.data.pipeline import build_dataset

        dataset = build_dataset(recipe, tokenizer, None, progress=sys.stderr.isatty(), use_cache=use_cache)
    except (UserError, OSError, ValueError) as exc:
        return [], {"error": str(exc).splitlines()[0][:200]}
    return [len(s["input_ids"]) for s in dataset.train], dict(dataset.stats)


def bfd_rows(lengths: list[int], window: int) -> int:
    """Rows best-fit decreasing packing makes (the same algorithm as TRL's, without building them)."""
    import bisect

    spaces: list[int] = []  # free space of each open row, sorted
    rows = 0
    for n in sorted((min(n, window) for n in lengths), reverse=True):
        i = bisect.bisect_left(spaces, n)
        if i < len(spaces):
            space = spaces.pop(i) - n
        else:
            rows += 1
            space = window - n
        if space > 0:
            bisect.insort(spaces, space)
    return rows


def build_plan(recipe, target: Target, with_data: bool = True, gpus: int = 1) -> Plan:
    from recipetune.report import trainable_share

    from .memory_estimate import fit_verdict, memory_lines, recipe_config, recipe_estimate
    from .packing import decide
    from .parameters import planned_parameters

    plan = Plan()
    out = plan.lines
    lo = recipe.load.options
    train = recipe.train.options if recipe.train is not None else None
    adapt = recipe.adapt.options if recipe.adapt is not None and recipe.adapt.use == "lora" else None
    out.append(f"plan for {recipe.name}: load.use={recipe.load.use}, model {getattr(lo, 'model', '?')}")
    out.append(f"target: {target.name}")
    cfg = recipe_config(recipe)
    if cfg is None:
        out.append("model: its config.json is not on this machine (download it, or give a local folder): "
                   "no parameter count or memory estimate")
        return plan
    counts = planned_parameters(cfg, adapt if recipe.adapt is not None else None)
    if counts:
        out.append(f"parameters: {trainable_share(*counts) if train is not None else f'{counts[1]:,}'}")
    est = recipe_estimate(recipe, on_gpu=target.gpu, cfg=cfg)
    if est is None:
        out.append(f"memory: no estimate for model type {cfg.get('model_type')!r} (Llama-like configs only)")
        return plan
    where = "GPU memory" if target.gpu else "memory (CPU)"
    out.append(f"{where} by part (estimate, peak; within ~15% of the measured runs in docs/benchmarks.md):")
    out += [f"  {line}" for line in memory_lines(est)]
    plan.verdict, plan.fix = fit_verdict(est, target.gib, target.name)
    out.append(f"fit: {plan.verdict} in {target.gib:.1f} GiB" + (f" — fix: {plan.fix}" if plan.fix else ""))
    plan.data.update(parts=est.parts, peak_reserved_gib=round(est.total_gib, 3), verdict=plan.verdict,
                     parameters=counts, target_gib=target.gib)
    if gpus > 1 and train is not None:  # several GPUs: what each strategy keeps per GPU (docs/distributed.md)
        from .distributed_memory import STRATEGIES, per_gpu_estimate, strategy_lines

        table = recipe.header.distributed
        out.append(f"on {gpus} GPUs, peak per GPU by strategy (the recipe's: {table.strategy}):")
        out += [f"  {line}" for line in strategy_lines(est, cfg, gpus, target.gib, table.zero_stage)]
        plan.data["per_gpu_gib"] = {s: round(per_gpu_estimate(est, cfg, gpus, s, table.zero_stage).total_gib, 3)
                                    for s in STRATEGIES}
    if train is None:
        out.append("training: none (the recipe has no [train] table)")
        return plan
    window = (train.packing_length or (recipe.format.max_seq_length if recipe.format and recipe.format.max_seq_length
                                       else getattr(lo, "max_seq_length", 2048)))
    tokens = est.tokens
    most = est.max_tokens(target.gib)
    out.append(f"micro-batch: {train.per_device_train_batch_size} x {window} = {tokens} tokens; the largest that fits "
               f"is ~{most} tokens ({most // window} rows of {window})")
    plan.data.update(micro_batch_tokens=tokens, max_micro_batch_tokens=most)
    lengths, stats = (data_lengths(recipe) if with_data else None) or ([], {})
    if stats.get("error"):
        out.append(f"data: not read ({stats['error']})")
    if not lengths:
        out.append("data: statistics unknown (packing is decided when training starts; recipe data RECIPE reads them)")
        return plan
    attn = getattr(lo, "attn_implementation", "sdpa")
    decision = decide(train.packing, recipe.load.use, cfg.get("model_type"), attn, lengths,
                      train.per_device_train_batch_size, window)
    total_tokens = sum(min(n, window) for n in lengths)
    rows = bfd_rows(lengths, window) if decision.on else len(lengths)
    out.append(f"data: {len(lengths)} samples, {total_tokens} tokens (mean {total_tokens / len(lengths):.0f}, "
               f"max {max(lengths)}); cache {stats.get('cache', '?')}")
    out.append(f"packing: {'on' if decision.on else 'off'} ({decision.reason})"
               + (f"; {rows} rows of {window} tokens" if decision.on else ""))
    per_step = (getattr(train, "global_batch_size", None)
                or train.per_device_train_batch_size * train.gradient_accumulation_steps * gpus)
    steps_per_epoch = max(1, math.ceil(rows / per_step))
    steps = train.max_steps if train.max_steps > 0 else math.ceil(steps_per_epoch * train.num_train_epochs)
    epochs = steps / steps_per_epoch
    trained = total_tokens * epochs
    out.append(f"steps: {steps} ({steps_per_epoch} per epoch, {epochs:.2f} epochs, ~{trained:,.0f} tokens)")
    plan.data.update(packing=decision.on, steps=steps, steps_per_epoch=steps_per_epoch, tokens=trained)
    rate = throughput(target, recipe.load.use, est.parameters, packed=decision.on)
    if rate is None:
        out.append("time: no throughput measured for this GPU and backend (bench/gpu writes throughput.json)")
    else:
        seconds = trained / rate[0]
        out.append(f"time: ~{seconds / 60:.1f} min of training at ~{rate[0]:,.0f} tokens/s (from {rate[1]})")
        plan.data["train_seconds"] = round(seconds)
    return plan


@hookimpl
def register_commands(cli):
    @cli.command("plan")
    @click.argument("recipe_path", metavar="RECIPE", type=click.Path(dir_okay=False))
    @click.argument("overrides", nargs=-1)
    @click.option("--gpu", "gpu", metavar="NAME|GiB", help="Plan for this GPU (H100, A100-40GB, T4, 24GiB...) "
                  "instead of this machine.")
    @click.option("--no-data", is_flag=True, help="Do not read the data (no tokenizer; no packing, steps or time).")
    @click.option("--gpus", type=click.IntRange(min=1), help="Plan for this many GPUs training together: memory per "
                  "GPU under ddp, fsdp and deepspeed (default: [distributed] nproc_per_node, else 1).")
    @click.option("--json", "as_json", is_flag=True, help="Machine-readable output.")
    def plan(recipe_path: str, overrides: tuple[str, ...], gpu: str | None, no_data: bool, gpus: int | None,
             as_json: bool) -> None:
        """What RECIPE needs before anything is loaded: parameters, GPU memory by part, fit, micro-batch, steps, time.

        Exits with status 3 when the run surely does not fit the target.
        """
        from recipetune.cli import load_or_exit

        recipe = load_or_exit(recipe_path, overrides)
        target = parse_gpu(gpu) if gpu else this_machine()
        result = build_plan(recipe, target, with_data=not no_data,
                            gpus=gpus or recipe.header.distributed.nproc_per_node or 1)
        if as_json:
            click.echo(json.dumps({"lines": result.lines, **result.data}, indent=2, default=str))
        else:
            for line in result.lines:
                click.echo(line)
        if result.verdict == "does not fit":
            sys.exit(3)
