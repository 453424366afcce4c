"""Trainers ``dpo``, ``orpo`` and ``kto``: TRL's DPOTrainer, ORPOTrainer (``trl.experimental.orpo``) and KTOTrainer.

Each gets the examples :mod:`.preference_data` rendered with the recipe's chat template (prompt masked, every answer
ending with the stop token), runs through :func:`.supervision.supervised_training` like ``sft`` (checkpoints and
``--resume``, the progress bar, NaN and out-of-memory guards) and forwards TRL's logs (loss, ``rewards/chosen``,
``rewards/rejected``, ``rewards/margins``, ``rewards/accuracies``...) to ``metrics.jsonl``; the report gets a
"Preference training" block with the first and last margins and a PNG (:mod:`.preference_report`).

The reference model of dpo and kto is the model itself under a frozen copy of its LoRA adapter, named ``ref``
(TRL 1.16 adds it for a peft model): a fresh adapter starts at zero, so the reference is the base model; after an SFT
run (``load.adapter``) it is the SFT model, as DPO expects. Only the adapter is copied (a few MB), never the model's
weights; the copy is removed after training, so exports write the trained adapter alone. Full fine-tuning (no
``[adapt]``) would need a second copy of the model; it is refused with a clear message.
"""

from __future__ import annotations

import importlib.util
import random
import time
from typing import Any, Literal

from pydantic import Field

from recipetune import Options, Problem, Trainer, TrainResult, UserError, hookimpl

from .sft import OPTIMIZERS, SCHEDULERS, metrics_callback, name_problems, precision_flags
from .supervision import trainer_arguments as supervision_arguments

PREFERENCE_TRAINERS = ("dpo", "orpo", "kto")


class PreferenceOptions(Options):
    beta: float = Field(default=0.1, gt=0)
    """Strength of the preference (dpo/kto: how far the model may move from the reference; orpo: the weight of
    the odds-ratio term beside the answer's likelihood)."""
    per_device_train_batch_size: int = Field(default=2, ge=1)
    """Examples (pairs for dpo/orpo) per device per forward pass."""
    gradient_accumulation_steps: int = Field(default=4, ge=1)
    """Forward passes per optimizer step."""
    warmup_steps: int = Field(default=0, ge=0)
    """Steps of linear learning-rate warm-up."""
    max_steps: int = Field(default=-1, ge=-1)
    """Stop after this many optimizer steps; -1 trains for ``num_train_epochs``."""
    num_train_epochs: float = Field(default=1.0, gt=0)
    """Passes over the data when ``max_steps`` is -1."""
    learning_rate: float = Field(default=5e-5, gt=0)
    """Peak learning rate (preference training wants a lower one than SFT: 5e-6 for full weights, 5e-5 for LoRA)."""
    optim: str = "adamw_torch"
    """Optimizer name as transformers knows it."""
    weight_decay: float = Field(default=0.0, ge=0)
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
    """Evaluate on the validation examples every this many steps (format.validation_fraction)."""
    precision: Literal["auto", "fp32", "bf16", "fp16"] = "auto"
    """Mixed precision: auto is bf16 on Ampere+ GPUs, fp16 on older GPUs, fp32 on a CPU."""


class DPOOptions(PreferenceOptions):
    loss_type: list[str] = ["sigmoid"]
    """TRL's DPO losses, combined when several: sigmoid (DPO), ipo, hinge, robust, bco_pair, sppo_hard, nca_pair,
    aot, aot_unpaired, apo_zero, apo_down, exo_pair, discopop, sigmoid_norm, sft (RPO's likelihood term)."""
    loss_weights: list[float] | None = None
    """Weight of each loss in ``loss_type`` (default 1 each)."""
    label_smoothing: float = Field(default=0.0, ge=0, lt=0.5)
    """cDPO / robust DPO: the assumed share of flipped preference labels."""


class ORPOOptions(PreferenceOptions):
    learning_rate: float = Field(default=8e-6, gt=0)
    """Peak learning rate (ORPO trains from the base model: its paper's 8e-6 for full weights; LoRA takes more)."""


class KTOOptions(PreferenceOptions):
    loss_type: Literal["kto", "apo_zero_unpaired"] = "kto"
    """kto (with its KL estimate; needs a batch of 2 or more) or apo_zero_unpaired."""
    desirable_weight: float = Field(default=1.0, gt=0)
    """Weight of the desirable answers' loss (raise it when they are fewer than the undesirable ones)."""
    undesirable_weight: float = Field(default=1.0, gt=0)
    """Weight of the undesirable answers' loss."""


DPO_LOSSES = ("sigmoid", "hinge", "ipo", "exo_pair", "nca_pair", "robust", "bco_pair", "sppo_hard", "aot",
              "aot_unpaired", "apo_zero", "apo_down", "discopop", "sft", "sigmoid_norm")


def _to_dataset(examples: list[dict[str, Any]], keys: tuple[str, ...]):
    from datasets import Dataset

    return Dataset.from_dict({k: [e[k] for e in examples] for k in keys})


def drop_reference_adapter(run, model) -> None:
    """Remove the frozen ``ref`` copy TRL added beside the trained adapter (peft would save both)."""
    config = getattr(model, "peft_config", None)
    if isinstance(config, dict) and "ref" in config and "default" in config:
        model.delete_adapter("ref")
        model.set_adapter("default")
        run.logger.info("preference training: the reference adapter copy is removed; exports hold the trained adapter")


class PreferenceTrainer(Trainer):
    """Shared by dpo, orpo and kto: data, config, reference adapter, supervision, report."""

    Options = PreferenceOptions
    needs_reference = True
    paired_only = True

    def check(self, recipe):
        o = self.options
        yield from name_problems("train.optim", o.optim, OPTIMIZERS, "optimizer")
        yield from name_problems("train.lr_scheduler_type", o.lr_scheduler_type, SCHEDULERS, "learning-rate schedule")
        if recipe.adapt is None and self.needs_reference:
            yield Problem("train.use", f"{self.name} without an [adapt] table would train every weight and need a second "
                          "copy of the model as its reference; add [adapt] use = \"lora\" (the reference is then the "
                          "model with the adapter disabled)")
        fmt = recipe.format
        if fmt is not None and o.eval_steps and not (fmt.validation_fraction or fmt.validation_split):
            yield Problem("train.eval_steps", "eval_steps needs validation examples: set format.validation_fraction")
        standardizers = [s for s in (recipe.standardizer, *recipe.member_standardizers) if s is not None]
        wrong = sorted({s.use for s in standardizers if s.use not in ("preference", "auto")})
        if wrong:
            yield Problem("format.standardizer", f"trainer {self.name!r} needs preference rows: standardizer = "
                          f"\"preference\" (or \"auto\"), not {', '.join(repr(w) for w in wrong)}")
        if o.max_steps > 0 and o.warmup_steps >= o.max_steps:
            yield Problem("train.warmup_steps", f"warmup_steps = {o.warmup_steps} is not below max_steps = {o.max_steps}",
                          severity="warning")

    def preflight(self, recipe):
        if "8bit" in self.options.optim and importlib.util.find_spec("bitsandbytes") is None:
            yield Problem("train.optim", f"optimizer {self.options.optim!r} needs bitsandbytes: pip install bitsandbytes, "
                          "or set train.optim=adamw_torch")

    def describe_plan(self, recipe):
        o = self.options
        steps = f"{o.max_steps} steps" if o.max_steps > 0 else f"{o.num_train_epochs} epochs"
        return [f"{self.name} beta {o.beta}: {steps}, batch {o.per_device_train_batch_size} x "
                f"{o.gradient_accumulation_steps} accumulation, lr {o.learning_rate} ({o.lr_scheduler_type}), {o.optim}"]

    # ------------------------------------------------------------ pieces each trainer fills in
    def config_class(self):
        raise NotImplementedError

    def config_extra(self) -> dict[str, Any]:
        return {}

    def trainer_class(self):
        raise NotImplementedError

    def datasets(self, data, run):
        raise NotImplementedError

    # ------------------------------------------------------------ shared
    def config(self, run, loaded, has_eval: bool, max_length: int):
        import torch

        from .distributed import accumulation_steps, trainer_arguments

        o = self.options
        eval_on = has_eval and bool(o.eval_steps)
        return self.config_class()(
            output_dir=str(run.checkpoints_dir),
            per_device_train_batch_size=o.per_device_train_batch_size, per_device_eval_batch_size=o.per_device_train_batch_size,
            gradient_accumulation_steps=accumulation_steps(run, o), warmup_steps=o.warmup_steps, max_steps=o.max_steps,
            num_train_epochs=o.num_train_epochs, learning_rate=o.learning_rate, optim=o.optim,
            weight_decay=o.weight_decay, lr_scheduler_type=o.lr_scheduler_type, max_grad_norm=o.max_grad_norm,
            seed=o.seed if o.seed is not None else run.recipe.seed, logging_steps=o.logging_steps,
            save_strategy="steps" if o.save_steps else "no", save_steps=o.save_steps or 500,
            **supervision_arguments(o),
            eval_strategy="steps" if eval_on else "no", eval_steps=o.eval_steps,
            max_length=max_length, beta=o.beta, report_to="none",
            gradient_checkpointing=False,  # TRL's default is on; the adapter stage decides (adapt.gradient_checkpointing) use_cpu=not torch.cuda.is_available(),
            **precision_flags(o.precision), **self.config_extra(), **trainer_arguments(run, loaded))

    def train(self, run, loaded, dataset) -> TrainResult:
        on_unsloth = loaded.backend == "unsloth"
        if on_unsloth:
            import unsloth  # noqa: F401  (before TRL: Unsloth patches TRL's trainers when it is imported)
        from .preference_data import build_preference_data, check_pairs
        from .preference_report import add_report_block

        data = build_preference_data(run.recipe, loaded.tokenizer, loaded.model, loaded.max_seq_length)
        stats = data.stats
        run.logger.info("preference data: %d %s examples (%d validation), answers ending with the stop token %d of %d, "
                        "truncated %d; mean prompt %.1f tokens, mean answer %.1f", stats["examples"], stats["kind"],
                        stats["validation"], stats["answers_ending_with_stop_token"], stats["answers"],
                        stats["truncated"], stats["mean_prompt_tokens"], stats["mean_answer_tokens"])
        warning = check_pairs(stats)
        if warning:
            run.logger.warning("%s", warning)
            stats["stop_token_warning"] = warning
        run.state["preference_stats"] = stats
        if self.paired_only and not data.paired:
            raise UserError(f"trainer {self.name!r} needs paired rows (prompt/chosen/rejected); the data has unpaired "
                            "completion/label rows: use train.use = \"kto\"")
        train, evals = self.datasets(data, run)
        max_length = max(len(e["prompt_ids"]) + max(len(e.get(k, ())) for k in ("chosen_ids", "rejected_ids",
                         "completion_ids")) for e in data.train + data.validation)
        args = self.config(run, loaded, evals is not None, max_length)
        fast = loaded.extras.get("unsloth")
        if fast is not None:
            fast.for_training(loaded.model)
        trainer = self.trainer_class()(model=loaded.model, args=args, train_dataset=train, eval_dataset=evals,
                                       processing_class=loaded.tokenizer, callbacks=[metrics_callback(run)])
        from .supervision import supervised_training

        started = time.perf_counter()
        try:
            out = supervised_training(run, loaded, trainer, self.options, precision_flags(self.options.precision))
        finally:
            drop_reference_adapter(run, loaded.model)
        runtime = time.perf_counter() - started
        metrics = run.read_metrics()
        add_report_block(run, self.name, metrics, stats)
        losses = [(int(m["step"]), m["loss"]) for m in metrics if "loss" in m]
        if getattr(loaded.model, "config", None) is not None:
            loaded.model.config.use_cache = True
        return TrainResult(steps=out.global_step, train_loss=out.training_loss, runtime_s=runtime, losses=losses,
                           checkpoint_dir=run.checkpoints_dir, extras={"metrics": out.metrics, "preference": stats})

class DPOTrainer(PreferenceTrainer):
    """Direct Preference Optimization (TRL's DPOTrainer): prefers chosen over rejected, relative to the reference."""

    name = "dpo"
    Options = DPOOptions

    def check(self, recipe):
        yield from super().check(recipe)
        for loss in self.options.loss_type:
            if loss not in DPO_LOSSES:
                yield Problem("train.loss_type", f"unknown DPO loss {loss!r}; TRL knows {', '.join(DPO_LOSSES)}")
        weights = self.options.loss_weights
        if weights is not None and len(weights) != len(self.options.loss_type):
            yield Problem("train.loss_weights", f"{len(weights)} weights for {len(self.options.loss_type)} losses")

    def config_class(self):
        from trl import DPOConfig

        return DPOConfig

    def config_extra(self):
        o = self.options
        return {"loss_type": list(o.loss_type), "loss_weights": o.loss_weights, "label_smoothing": o.label_smoothing}

    def trainer_class(self):
        from trl import DPOTrainer as TRLDPOTrainer

        class Pretokenized(TRLDPOTrainer):
            """TRL's DPOTrainer on examples already tokenized by recipetune (prompt_ids, chosen_ids, rejected_ids)."""

            def _prepare_dataset(self, dataset, processing_class, args, dataset_name):
                return dataset

        return Pretokenized

    def datasets(self, data, run):
        keys = ("prompt_ids", "chosen_ids", "rejected_ids")
        return _to_dataset(data.train, keys), (_to_dataset(data.validation, keys) if data.validation else None)


class ORPOTrainer(PreferenceTrainer):
    """Odds Ratio Preference Optimization (TRL's experimental ORPOTrainer); no reference model.

    The chosen answer's likelihood plus an odds-ratio term against the rejected one, so it can start from a base
    model."""

    name = "orpo"
    Options = ORPOOptions
    needs_reference = False

    def config_class(self):
        from trl.experimental.orpo import ORPOConfig

        return ORPOConfig

    def config_extra(self):
        return {"remove_unused_columns": False}

    def trainer_class(self):
        from trl.experimental.orpo import ORPOTrainer as TRLORPOTrainer

        class Pretokenized(TRLORPOTrainer):
            """TRL's ORPOTrainer on rows already in its tokenized form (built by ``datasets``)."""

            def tokenize_row(self, feature, model=None):
                return feature

        return Pretokenized

    def datasets(self, data, run):
        from datasets import Dataset

        def rows(examples):
            out = []
            for e in examples:
                p = e["prompt_ids"]
                row = {"prompt_input_ids": p, "prompt_attention_mask": [1] * len(p)}
                for side in ("chosen", "rejected"):
                    ids = p + e[f"{side}_ids"]
                    row.update({f"{side}_input_ids": ids, f"{side}_attention_mask": [1] * len(ids),
                                f"{side}_labels": [-100] * len(p) + e[f"{side}_ids"]})
                out.append(row)
            return Dataset.from_list(out)

        return rows(data.train), (rows(data.validation) if data.validation else None)


class KTOTrainer(PreferenceTrainer):
    """Kahneman-Tversky Optimization (TRL's KTOTrainer): desirable and undesirable answers, paired or not.

    A pair gives one desirable and one undesirable answer to its prompt."""

    name = "kto"
    Options = KTOOptions
    paired_only = False

    def check(self, recipe):
        yield from super().check(recipe)
        if self.options.loss_type == "kto" and self.options.per_device_train_batch_size < 2:
            yield Problem("train.per_device_train_batch_size", "the kto loss estimates its KL term from the other answers "
                          "of a batch: per_device_train_batch_size must be 2 or more (or loss_type = \"apo_zero_unpaired\")")

    def config_class(self):
        from trl import KTOConfig

        return KTOConfig

    def config_extra(self):
        o = self.options
        return {"loss_type": o.loss_type, "desirable_weight": o.desirable_weight, "undesirable_weight": o.undesirable_weight}

    def trainer_class(self):
        from trl import KTOTrainer as TRLKTOTrainer

        class Pretokenized(TRLKTOTrainer):
            """TRL's KTOTrainer on examples already tokenized by recipetune (prompt_ids, completion_ids, label); the
            KL completions are TRL's: each batch's answers rotated by one."""

            def _prepare_dataset(self, dataset, processing_class, args, dataset_name):
                if not self.calculate_KL:
                    return dataset

                def rotate(batch):
                    batch["KL_completion_ids"] = [batch["completion_ids"][-1]] + batch["completion_ids"][:-1]
                    return batch

                return dataset.map(rotate, batched=True, batch_size=args.per_device_train_batch_size)

        return Pretokenized

    def datasets(self, data, run):
        def unpaired(examples):
            if data.paired:  # a pair is a desirable and an undesirable answer to one prompt
                out = [{"prompt_ids": e["prompt_ids"], "completion_ids": e[k], "label": k == "chosen_ids"}
                       for e in examples for k in ("chosen_ids", "rejected_ids")]
            else:
                out = [dict(prompt_ids=e["prompt_ids"], completion_ids=e["completion_ids"], label=e["label"])
                       for e in examples]
            # KTO reads batches in order (its KL pairs are fixed per batch): shuffle once, seeded, so a batch mixes
            random.Random(self.options.seed if self.options.seed is not None else run.recipe.seed).shuffle(out)
            return out

        keys = ("prompt_ids", "completion_ids", "label")
        return (_to_dataset(unpaired(data.train), keys),
                _to_dataset(unpaired(data.validation), keys) if data.validation else None)


@hookimpl
def register_trainers(register):
    for cls in (DPOTrainer, ORPOTrainer, KTOTrainer):
        register(cls)
