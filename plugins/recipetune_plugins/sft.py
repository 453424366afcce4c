"""Trainer ``sft``: TRL's SFTTrainer on the pre-tokenized, pre-masked samples of the format stage."""

from __future__ import annotations

import difflib
import importlib.util
import time
from pathlib import Path
from typing import Literal

from pydantic import Field, field_validator

from recipetune import Options, Problem, Trainer, TrainResult, UserError, hookimpl

from .distributed import accumulation_steps, trainer_arguments
from .evaluation import EvaluationOptions, evaluation_arguments, evaluation_callbacks, evaluation_problems
from .evaluation import after_stage_run  # noqa: F401  (a hook: exported weights say whether they are the best or the last)
from .supervision import supervised_training
from .supervision import trainer_arguments as supervision_arguments


class SFTOptions(EvaluationOptions):
    per_device_train_batch_size: int = Field(default=2, ge=1)
    """Samples per device per forward pass."""
    gradient_accumulation_steps: int = Field(default=4, ge=1)
    """Forward passes per optimizer step (effective batch = batch size x this); the loss is normalised over all label tokens of the accumulated batch."""
    global_batch_size: int | None = Field(default=None, ge=1)
    """Samples per optimizer step over all processes: the accumulation becomes global_batch_size / (batch size x
    processes), so the effective batch stays the same when the number of GPUs changes (docs/distributed.md)."""
    warmup_steps: int = Field(default=5, ge=0)
    """Steps of linear learning-rate warm-up."""
    max_steps: int = Field(default=-1, ge=-1)
    """Stop after this many optimizer steps; -1 trains for ``num_train_epochs``."""
    num_train_epochs: float = Field(default=1.0, gt=0)
    """Passes over the data when ``max_steps`` is -1."""
    learning_rate: float = Field(default=2e-4, gt=0)
    """Peak learning rate."""
    optim: str = "adamw_8bit"
    """Optimizer name as transformers knows it: adamw_8bit (bitsandbytes), adamw_torch, adafactor..."""
    weight_decay: float = Field(default=0.01, ge=0)
    """Decoupled weight decay."""
    lr_scheduler_type: str = "linear"
    """Learning-rate schedule: linear, cosine, constant..."""
    max_grad_norm: float = 1.0
    """Gradient clipping norm."""
    seed: int | None = None
    """Trainer seed (data order, dropout); default: the recipe's seed."""
    logging_steps: int = Field(default=1, ge=1)
    """Log (and write a line of metrics.jsonl) every this many steps."""
    save_steps: int = Field(default=0, ge=0)
    """Write a resumable checkpoint every this many steps (0: only at the end)."""
    save_total_limit: int = Field(default=2, ge=1)
    """Checkpoints kept on disk."""
    eval_steps: int | None = Field(default=None, ge=1)
    """Evaluate on the validation split every this many steps (needs format.validation_fraction or validation_split)."""
    precision: Literal["auto", "fp32", "bf16", "fp16"] = "auto"
    """Mixed precision: auto is bf16 on Ampere+ GPUs, fp16 on older GPUs, fp32 on a CPU."""
    packing: bool | Literal["auto"] = "auto"
    """Pack several conversations into one row, each attending only to itself (position ids restart per conversation;
    best-fit decreasing, none split). "auto": on for Llama-family models on the hf and unsloth backends (proven equal
    to unpacked training) when padded batches would hold padding; a packed row of ``packing_length`` tokens counts as
    one sample of the batch."""
    packing_length: int | None = Field(default=None, ge=8)
    """Tokens per packed row; default: the longest a sample may be (format or load max_seq_length)."""
    tokens_per_batch: int | Literal["auto"] | None = Field(default="auto", ge=8)
    """Packed training on a GPU: tokens per micro-batch. "auto": as many packed rows of the effective batch
    (per_device_train_batch_size x gradient_accumulation_steps) as fit the GPU in one micro-batch (up to 16384 tokens),
    with accumulation making up the rest: the same optimizer steps and losses, fewer and fuller forward passes. An
    integer: at most that many tokens. None, or on a CPU: per_device_train_batch_size rows."""
    padding_free: bool | Literal["auto"] = "auto"
    """Flatten each batch into one row without pad tokens. "auto": on the unsloth backend, padded batches when they
    would hold (almost) no padding (they run Unsloth's compiled blocks), else Unsloth's own choice; on hf, off."""

    @field_validator("max_steps")
    @classmethod
    def _steps(cls, value: int) -> int:
        if value == 0:
            raise ValueError("max_steps = 0 trains nothing; give a number of steps, or -1 to train for num_train_epochs")
        return value


OPTIMIZERS = (
    "adamw_torch", "adamw_torch_fused", "adamw_torch_xla", "adamw_torch_npu_fused", "adafactor", "adamw_anyprecision",
    "adamw_torch_4bit", "adamw_torch_8bit", "ademamix", "sgd", "adagrad", "adamw_bnb_8bit", "adamw_8bit", "ademamix_8bit",
    "lion_8bit", "lion_32bit", "paged_adamw_32bit", "paged_adamw_8bit", "paged_ademamix_32bit", "paged_ademamix_8bit",
    "paged_lion_32bit", "paged_lion_8bit", "rmsprop", "rmsprop_bnb", "rmsprop_bnb_8bit", "rmsprop_bnb_32bit",
    "galore_adamw", "galore_adamw_8bit", "galore_adafactor", "galore_adamw_layerwise", "galore_adamw_8bit_layerwise",
    "galore_adafactor_layerwise", "lomo", "adalomo", "grokadamw", "schedule_free_radam", "schedule_free_adamw",
    "schedule_free_sgd", "apollo_adamw", "apollo_adamw_layerwise", "stable_adamw",
)
"""transformers' optimizer names (``OptimizerNames``; a test keeps the list equal to the installed transformers')."""

KNOWN_VERSION = "5.24"
"""The transformers release the two lists were taken from."""

SCHEDULERS = (
    "linear", "cosine", "cosine_with_restarts", "polynomial", "constant", "constant_with_warmup", "inverse_sqrt",
    "reduce_lr_on_plateau", "cosine_with_min_lr", "cosine_warmup_with_min_lr", "warmup_stable_decay", "greedy",
)
"""transformers' learning-rate schedules (``SchedulerType``)."""


def name_problems(key: str, value: str, known: tuple[str, ...], what: str) -> list[Problem]:
    """A name transformers will not know: an error when it is close to a known one (a typo), else a warning
    (a newer transformers may know it; it checks when training starts)."""
    if value in known:
        return []
    close = difflib.get_close_matches(value, known, n=3, cutoff=0.6)
    if close:
        return [Problem(key, f"unknown {what} {value!r}; did you mean {' or '.join(repr(c) for c in close)}?")]
    return [Problem(key, f"{what} {value!r} is not one transformers {KNOWN_VERSION} knows ({', '.join(known)}); "
                         "it is checked again when training starts", severity="warning")]


PADDING_FREE_MAX_PAD_FRACTION = 0.05
"""Below this expected fraction of pad tokens, "auto" picks padded batches on the unsloth backend."""


def expected_pad_fraction(lengths: list[int], batch_size: int, draws: int = 256, seed: int = 0) -> float:
    """The fraction of pad tokens in padded batches of ``batch_size`` samples drawn at random (as the trainer does)."""
    import random

    if batch_size <= 1 or not lengths:
        return 0.0
    rng = random.Random(seed)
    pads = total = 0
    for _ in range(draws):
        batch = rng.sample(lengths, min(batch_size, len(lengths)))
        total += max(batch) * len(batch)
        pads += sum(max(batch) - n for n in batch)
    return pads / total if total else 0.0


def padding_free_setting(option: bool | str, backend: str, lengths: list[int], batch_size: int) -> bool | None:
    """What to pass as SFTConfig(padding_free=...), or None to leave the trainer's default (Unsloth's auto choice).

    Unsloth's auto choice keeps padding-free on GPUs it has not measured (H100, H200, B200), and its varlen
    batches skip the per-block compile. Where the batches have no padding to remove, padding-free saves no
    work, so "auto" asks for padded batches there (the same batches a hand-written Unsloth loop trains on).
    On an H100 the two were within run-to-run noise of each other (docs/benchmarks.md).
    """
    if option is True or option is False:
        return option
    if backend != "unsloth":
        return None
    return False if expected_pad_fraction(lengths, batch_size) <= PADDING_FREE_MAX_PAD_FRACTION else None


def precision_flags(choice: str) -> dict[str, bool]:
    import torch

    if choice == "auto":
        if not torch.cuda.is_available():
            choice = "fp32"
        else:
            choice = "bf16" if torch.cuda.is_bf16_supported() else "fp16"
    return {"bf16": choice == "bf16", "fp16": choice == "fp16"}


ZERO_GRAD_STEPS = 2


def metrics_callback(run):
    """Forward the trainer's logs to the run, and stop a run whose gradients are zero."""
    from transformers import TrainerCallback

    class _ToRun(TrainerCallback):
        def __init__(self):
            self.grad_norms: list[float] = []

        def on_log(self, args, state, control, logs=None, **kwargs):
            if not logs:
                return
            run.log_metrics(state.global_step, logs)
            if "grad_norm" in logs and len(self.grad_norms) < ZERO_GRAD_STEPS:
                self.grad_norms.append(float(logs["grad_norm"]))
                if len(self.grad_norms) == ZERO_GRAD_STEPS and all(g == 0.0 for g in self.grad_norms):
                    raise UserError(
                        f"the gradient norm is 0 at the first {ZERO_GRAD_STEPS} logged steps: nothing is being trained "
                        "(the loss does not reach the trainable weights; check adapt.target_modules, the loss masks "
                        "shown by the format stage, and the backend's quantization)")

    return _ToRun()


class SFTTrainer(Trainer):
    """Supervised fine-tuning with TRL's SFTTrainer; masks come from the format stage."""

    name = "sft"
    Options = SFTOptions

    def check(self, recipe):
        o = self.options
        yield from name_problems("train.optim", o.optim, OPTIMIZERS, "optimizer")
        yield from name_problems("train.lr_scheduler_type", o.lr_scheduler_type, SCHEDULERS, "learning-rate schedule")
        fmt = recipe.format
        if o.eval_steps and fmt is not None and not (fmt.validation_fraction or fmt.validation_split):
            yield Problem("train.eval_steps", "eval_steps needs a validation set: set format.validation_fraction "
                          "(e.g. 0.05) or format.validation_split")
        yield from evaluation_problems(o, recipe)
        if o.max_steps > 0 and o.warmup_steps >= o.max_steps:
            yield Problem("train.warmup_steps", f"warmup_steps = {o.warmup_steps} is not below max_steps = {o.max_steps}: "
                          f"the learning rate never reaches learning_rate = {o.learning_rate}; lower warmup_steps "
                          f"(e.g. {max(0, o.max_steps // 10)})", severity="warning")
        if o.max_steps > 0 and "num_train_epochs" in o.model_fields_set:
            yield Problem("train.num_train_epochs", f"both num_train_epochs and max_steps = {o.max_steps} are set: "
                          "max_steps wins and num_train_epochs is ignored; remove one (max_steps = -1 trains for "
                          "num_train_epochs)", severity="warning")

    def preflight(self, recipe):
        if "8bit" in self.options.optim and importlib.util.find_spec("bitsandbytes") is None:
            yield Problem("train.optim", f"optimizer {self.options.optim!r} needs bitsandbytes: "
                          "pip install bitsandbytes, or set train.optim=adamw_torch")

    def describe_plan(self, recipe):
        o = self.options
        steps = f"{o.max_steps} steps" if o.max_steps > 0 else f"{o.num_train_epochs} epochs"
        batch = (f"global batch {o.global_batch_size} ({o.per_device_train_batch_size} per device)" if o.global_batch_size
                 else f"batch {o.per_device_train_batch_size} x {o.gradient_accumulation_steps} accumulation")
        from .packing import plan_line

        return [f"{steps}, {batch}, lr {o.learning_rate} ({o.lr_scheduler_type}), {o.optim}", plan_line(recipe, o)]

    def config(self, run, loaded, has_eval: bool, padding_free: bool | None = None):
        from trl import SFTConfig

        o = self.options
        import torch

        extra = {} if padding_free is None else {"padding_free": padding_free}
        return SFTConfig(
            output_dir=str(run.checkpoints_dir),
            per_device_train_batch_size=o.per_device_train_batch_size,
            per_device_eval_batch_size=o.per_device_train_batch_size,
            gradient_accumulation_steps=accumulation_steps(run, o),
            warmup_steps=o.warmup_steps, max_steps=o.max_steps, num_train_epochs=o.num_train_epochs,
            learning_rate=o.learning_rate, optim=o.optim, weight_decay=o.weight_decay,
            lr_scheduler_type=o.lr_scheduler_type, max_grad_norm=o.max_grad_norm,
            seed=o.seed if o.seed is not None else run.recipe.seed,
            logging_steps=o.logging_steps,
            save_strategy="steps" if o.save_steps else "no", save_steps=o.save_steps or 500,
            **supervision_arguments(o),  # save_total_limit (applied once a checkpoint is complete), no NaN filter
            eval_strategy="steps" if (has_eval and o.eval_steps) else "no", eval_steps=o.eval_steps,
            **evaluation_arguments(o, has_eval and bool(o.eval_steps)),
            # the format stage already cut every sample to its length (format.max_seq_length, which may exceed
            # load.max_seq_length): the trainer must not cut again, or the stop token checked there is lost
            max_length=max(filter(None, [loaded.max_seq_length, run.state.get("format_stats", {}).get("max_seq_length")])),
            packing=False,  # packing.py packs the rows itself (train())
            report_to="none", use_cpu=not torch.cuda.is_available(), **precision_flags(o.precision), **extra,
            **trainer_arguments(run, loaded),  # several processes: ddp / fsdp / deepspeed (distributed.py)
        )

    def train(self, run, loaded, dataset) -> TrainResult:
        on_unsloth = loaded.backend == "unsloth"
        if on_unsloth:
            # Unsloth before TRL: importing it patches TRL's SFTTrainer (its trainer path, padding-free batches,
            # the gradient-accumulation loss fix). The backend imported it already; this keeps the order explicit.
            import unsloth  # noqa: F401
        from datasets import Dataset
        from trl import SFTTrainer as TRLSFTTrainer

        columns = ("input_ids", "labels")
        train = Dataset.from_list([{k: s[k] for k in columns} for s in dataset.train])
        evals = Dataset.from_list([{k: s[k] for k in columns} for s in dataset.validation]) if dataset.validation else None
        from .packing import prepare as prepare_packing

        packed = prepare_packing(run, loaded, dataset, self.options)
        if packed is not None:
            train, evals = packed.train, packed.validation
        padding_free = None
        if packed is None:
            lengths = [len(s["input_ids"]) for s in dataset.train]
            padding_free = padding_free_setting(self.options.padding_free, loaded.backend, lengths,
                                                self.options.per_device_train_batch_size)
            if padding_free is not None and self.options.padding_free == "auto":
                run.logger.info("train.padding_free auto: %s (expected padding in a batch: %.1f%%)",
                                "padding-free" if padding_free else "padded batches",
                                100 * expected_pad_fraction(lengths, self.options.per_device_train_batch_size))
        args = self.config(run, loaded, evals is not None, padding_free)
        for key, value in (packed.config if packed is not None else {}).items():
            setattr(args, key, value)
        trainer = TRLSFTTrainer(model=loaded.model, args=args,
                                train_dataset=train, eval_dataset=evals, processing_class=loaded.tokenizer,
                                callbacks=[metrics_callback(run), *evaluation_callbacks(run, self.options, evals is not None)], data_collator=packed.collator if packed else None)
        if run.world_size > 1:  # distributed.py gathers an FSDP model through its Accelerator, then lets it go
            run.state["hf_trainer"] = trainer
        started = time.perf_counter()
        train_call = trainer.train
        if on_unsloth:
            from unsloth import unsloth_train

            fast = loaded.extras.get("unsloth")
            if fast is not None:  # generation before training (samples reporter) may have left it in inference mode
                fast.for_training(loaded.model)
            train_call = lambda **resume: unsloth_train(trainer, **resume)  # noqa: E731
        # checkpoints, resume, Ctrl-C, progress, tokens/s and memory, NaN/out-of-memory/full-disk guards
        out = supervised_training(run, loaded, trainer, self.options, precision_flags(self.options.precision), train_call)
        runtime = time.perf_counter() - started
        losses = [(int(m["step"]), m["loss"]) for m in run.read_metrics() if "loss" in m]
        if getattr(loaded.model, "config", None) is not None:
            loaded.model.config.use_cache = True
        return TrainResult(steps=out.global_step, train_loss=out.training_loss, runtime_s=runtime, losses=losses,
                           checkpoint_dir=run.checkpoints_dir, extras={"metrics": out.metrics})


@hookimpl
def register_trainers(register):
    register(SFTTrainer)
