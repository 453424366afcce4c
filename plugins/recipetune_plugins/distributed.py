"""Several processes / GPUs for the built-in trainer: ``ddp``, ``fsdp`` (FSDP2) and ``deepspeed`` (ZeRO) through
transformers' Trainer and Accelerate, the global batch, the format stage run once, the job's throughput.

The launching and the process group live in the core (``recipetune.launcher`` over ``torch.distributed.run``,
``recipetune.distributed``); this module only turns ``[distributed]`` into the Trainer's own arguments (``ddp_*``, ``fsdp`` / ``fsdp_config``,
``deepspeed``) and observes the stages through hooks. Nothing here communicates by itself except through
``torch.distributed`` collectives (a barrier around the format stage, the FSDP state dict gathered by Accelerate).
"""

from __future__ import annotations

import time
from typing import Any

from recipetune import Problem, ReportBlock, UserError, hookimpl
from recipetune.distributed import global_batch_message

SHARDING_STRATEGIES = ("fsdp", "deepspeed")


# ------------------------------------------------------------------------------------------- recipe checks
@hookimpl
def validate_recipe(recipe, registry) -> list[Problem]:
    """Combinations of ``[distributed]`` with the rest of the recipe that cannot work (no machine needed)."""
    table = recipe.header.distributed
    written = table.model_fields_set
    problems: list[Problem] = []
    load = recipe.load.options
    if table.strategy in SHARDING_STRATEGIES and recipe.load.use == "unsloth":
        problems.append(Problem("distributed.strategy", f'strategy "{table.strategy}" cannot shard a model of backend '
                                '"unsloth" (its patched kernels need whole weights on each GPU); use strategy = "ddp" '
                                'with Unsloth, or load.use = "hf" to shard'))
    if table.strategy in SHARDING_STRATEGIES and getattr(load, "load_in_8bit", False):
        problems.append(Problem("distributed.strategy", f'strategy "{table.strategy}" cannot shard 8-bit bitsandbytes '
                                'weights; use load.load_in_4bit (QLoRA shards) or strategy = "ddp"'))
    if table.cpu_offload and table.strategy == "ddp":
        problems.append(Problem("distributed.cpu_offload", 'cpu_offload needs strategy = "fsdp" or "deepspeed"; '
                                "ddp keeps everything on each GPU", severity="warning"))
    if "zero_stage" in written and table.strategy != "deepspeed":
        problems.append(Problem("distributed.zero_stage", f'zero_stage is a DeepSpeed setting and strategy is '
                                f'"{table.strategy}": it is ignored', severity="warning"))
    train = recipe.train.options if recipe.train is not None else None
    global_batch = getattr(train, "global_batch_size", None)
    if global_batch:
        per_device = train.per_device_train_batch_size
        if "gradient_accumulation_steps" in train.model_fields_set:
            problems.append(Problem("train.gradient_accumulation_steps", "set global_batch_size or "
                                    "gradient_accumulation_steps, not both: with global_batch_size the accumulation is "
                                    "global_batch_size / (per_device_train_batch_size x processes)"))
        processes = table.nproc_per_node or 1
        if global_batch % (per_device * processes):
            problems.append(Problem("train.global_batch_size", global_batch_message(global_batch, per_device, processes)))
    return problems


# ------------------------------------------------------------------------------------- the batch and the Trainer
def accumulation_steps(run, options) -> int:
    """Forward passes per optimizer step: ``train.gradient_accumulation_steps``, or the one that makes
    ``train.global_batch_size`` = per-device batch x accumulation x world size."""
    global_batch = getattr(options, "global_batch_size", None)
    if not global_batch:
        return options.gradient_accumulation_steps
    per_step = options.per_device_train_batch_size * run.world_size
    if global_batch % per_step:
        raise UserError(global_batch_message(global_batch, options.per_device_train_batch_size, run.world_size))
    return global_batch // per_step


def effective_batch(run, options) -> dict[str, int]:
    """Per-device batch, accumulation, world size and their product (samples, or packed rows, per optimizer step)."""
    accumulation = accumulation_steps(run, options)
    per_device = options.per_device_train_batch_size
    return {"per_device_batch": per_device, "accumulation": accumulation, "world_size": run.world_size,
            "effective_batch": per_device * accumulation * run.world_size}


def decoder_layer_classes(model) -> list[str]:
    """Class names of the model's decoder layers (what FSDP wraps one by one): transformers' ``_no_split_modules``."""
    base = model.get_base_model() if hasattr(model, "get_base_model") else model
    names = list(getattr(base, "_no_split_modules", None) or [])
    if not names:
        found = {type(m).__name__ for m in base.modules() if type(m).__name__.endswith("DecoderLayer")}
        names = sorted(found)
    return names


def fsdp_config(run, loaded) -> dict[str, Any]:
    """transformers' ``fsdp_config`` for FSDP2: one shard unit per decoder layer, sharded checkpoints."""
    table = run.recipe.header.distributed
    config: dict[str, Any] = {"version": 2, "auto_wrap_policy": "TRANSFORMER_BASED_WRAP",
                              "reshard_after_forward": True, "state_dict_type": "SHARDED_STATE_DICT",
                              "cpu_ram_efficient_loading": False, "cpu_offload": table.cpu_offload}
    layers = decoder_layer_classes(loaded.model)
    if layers:
        config["transformer_layer_cls_to_wrap"] = layers
    return config


def deepspeed_config(run) -> dict[str, Any]:
    """A ZeRO config; ``auto`` values are filled by transformers from the Trainer's own arguments."""
    table = run.recipe.header.distributed
    zero: dict[str, Any] = {"stage": table.zero_stage, "overlap_comm": True, "contiguous_gradients": True}
    if table.cpu_offload:
        zero["offload_optimizer"] = {"device": "cpu", "pin_memory": True}
    if table.zero_stage == 3:
        zero["stage3_gather_16bit_weights_on_model_save"] = True
    return {"zero_optimization": zero, "bf16": {"enabled": "auto"}, "fp16": {"enabled": "auto"},
            "train_micro_batch_size_per_gpu": "auto", "gradient_accumulation_steps": "auto",
            "train_batch_size": "auto", "gradient_clipping": "auto"}


def trainer_arguments(run, loaded) -> dict[str, Any]:
    """Extra ``TrainingArguments`` for a job of several processes; nothing for one process (it runs as before)."""
    if run.world_size <= 1:
        return {}
    import torch

    table = run.recipe.header.distributed
    backend = table.backend if table.backend != "auto" else ("nccl" if torch.cuda.is_available() else "gloo")
    args: dict[str, Any] = {
        "ddp_backend": backend, "ddp_timeout": table.timeout_minutes * 60,
        "ddp_find_unused_parameters": False,  # LoRA: every trainable weight gets a gradient each step
    }
    if table.strategy == "fsdp":
        args.update(fsdp=True, fsdp_config=fsdp_config(run, loaded))
    elif table.strategy == "deepspeed":
        args["deepspeed"] = deepspeed_config(run)
    return args


def quant_storage_dtype(run, compute_dtype):
    """bitsandbytes' ``bnb_4bit_quant_storage`` for a 4-bit load: the compute dtype under FSDP / ZeRO-3 (so the
    packed 4-bit weights shard like the others), else None (bitsandbytes' default, uint8)."""
    table = run.recipe.header.distributed
    shards_weights = table.strategy == "fsdp" or (table.strategy == "deepspeed" and table.zero_stage == 3)
    return compute_dtype if run.world_size > 1 and shards_weights else None


# ---------------------------------------------------------------------------------------------- stage hooks
@hookimpl(wrapper=True)
def format_dataset(run, loaded):
    """Several processes: rank 0 formats (and fills the data cache) first, the others wait and read the cache."""
    if run.world_size <= 1:
        return (yield)
    from recipetune import distributed

    if not run.is_main:
        distributed.barrier()
    try:
        return (yield)
    finally:
        if run.is_main:
            distributed.barrier()


@hookimpl(wrapper=True)
def train_model(run, loaded, dataset):
    """Several processes: the effective batch and tokens/s of the job and per GPU, and a sharded (FSDP, ZeRO-3)
    model gathered on rank 0 for the exporters."""
    if run.world_size <= 1 or run.recipe.train is None:
        return (yield)
    options = run.recipe.train.options
    batch = effective_batch(run, options)
    run.logger.info("%d processes (%s): batch %d per device x %d accumulation x %d processes = %d per step",
                    run.world_size, run.recipe.header.distributed.strategy, batch["per_device_batch"],
                    batch["accumulation"], batch["world_size"], batch["effective_batch"])
    result = yield
    job = dict(run.state.get("distributed") or {})
    packing = run.state.get("packing") or {}
    if packing.get("on") and "rows_per_micro_batch" in packing:  # packed rows: the same product, other factors
        batch.update(per_device_batch=packing["rows_per_micro_batch"], accumulation=packing["accumulation"])
    job.update(batch)
    # TRL logs num_tokens: the real (attention-mask) tokens trained so far, gathered over every rank
    tokens = next((m["num_tokens"] for m in reversed(run.read_metrics()) if "num_tokens" in m), None)
    seconds = (result.extras.get("metrics") or {}).get("train_runtime") or result.runtime_s if result else None
    if tokens and seconds:
        job["tokens_seen"] = int(tokens)
        job["tokens_per_second"] = round(tokens / seconds, 1)
        job["tokens_per_second_per_gpu"] = round(tokens / seconds / run.world_size, 1)
    run.state["distributed"] = job
    if run.recipe.header.distributed.strategy in SHARDING_STRATEGIES:
        gather_sharded_model(run, loaded)
    run.state.pop("hf_trainer", None)  # its optimizer state is not needed by the report and the exports
    return result


def gather_sharded_model(run, loaded) -> None:
    """FSDP or ZeRO-3 sharded the weights: rank 0 gets a whole model for the report and the exporters.

    Every rank takes part in gathering the full state dict (Accelerate's ``get_state_dict``: FSDP's full state
    dict, DeepSpeed's consolidated 16-bit weights); rank 0 loads the trained weights (the adapter's, or all of them
    for full fine-tuning) into a fresh copy of the model, loaded and adapted as the recipe says.
    """
    trainer = run.state.get("hf_trainer")
    if trainer is None:
        return
    table = run.recipe.header.distributed
    if getattr(trainer, "is_fsdp_enabled", False):
        source, what = trainer.model, "fsdp"
    elif getattr(trainer, "is_deepspeed_enabled", False) and table.zero_stage == 3:
        source, what = trainer.model_wrapped, "ZeRO-3"
    else:  # ddp, ZeRO-2, or fsdp on CPUs (run as ddp): every rank holds whole weights already
        return
    started = time.perf_counter()
    state = trainer.accelerator.get_state_dict(source)  # a collective: full tensors on rank 0
    if not run.is_main:
        return
    whole = run.recipe.load.component.load(run)
    if run.recipe.adapt is not None:
        whole = run.recipe.adapt.component.adapt(run, whole)
    trained = {n for n, p in whole.model.named_parameters() if p.requires_grad}
    wanted = {k: v for k, v in state.items() if k in trained} if run.recipe.adapt is not None else state
    if trained - set(wanted):
        raise UserError(f"the gathered {what} weights lack trained parameters of the model: "
                        f"{sorted(trained - set(wanted))[:5]}")
    whole.model.load_state_dict(wanted, strict=False)
    loaded.model = whole.model
    run.logger.info("%s: gathered the trained weights on rank 0 in %.1f s", what, time.perf_counter() - started)


@hookimpl
def after_stage_run(run, stage, result):
    if stage == "train" and run.is_main and run.state.get("distributed"):
        run.report_blocks.append(ReportBlock("Processes", job_markdown(run.state["distributed"])))


def job_markdown(job: dict[str, Any]) -> str:
    """The report's block for a job of several processes."""
    lines = ["| | |", "|---|---|",
             f"| processes | {job['world_size']} on {job.get('nodes', 1)} node(s), strategy `{job.get('strategy')}`, "
             f"backend {job.get('backend')} |"]
    if "effective_batch" in job:
        lines.append(f"| batch per step | {job['per_device_batch']} per device x {job['accumulation']} accumulation x "
                     f"{job['world_size']} processes = {job['effective_batch']} |")
    if "tokens_per_second" in job:
        lines.append(f"| real tokens/s | {job['tokens_per_second']:,.0f} for the job, "
                     f"{job['tokens_per_second_per_gpu']:,.0f} per process ({job['tokens_seen']:,} tokens) |")
    lines += ["", "| rank | host | device |", "|---|---|---|"]
    for r in job.get("ranks", []):
        device = r.get("gpu") and f"{r['device']} {r['gpu']} ({r['gpu_memory_gib']} GiB)" or r.get("device", "?")
        lines.append(f"| {r['rank']} | {r['host']} | {device} |")
    return "\n".join(lines)


@hookimpl
def on_stage_error(run, stage, error):
    """Leave the failing rank's error where torch's launcher reads it, so the launcher names this rank."""
    if run.world_size > 1:
        from recipetune import distributed

        distributed.record_failure(f"stage {stage}: {type(error).__name__}: {error}" if not isinstance(error, UserError)
                                   else f"stage {stage}: {error}")
