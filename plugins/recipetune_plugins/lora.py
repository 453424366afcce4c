"""Adapter ``lora``: LoRA (and QLoRA on a 4-bit model) through peft."""

from __future__ import annotations

from typing import Any, Literal

from pydantic import Field

from recipetune import Adapter, Loaded, Options, UserError, hookimpl
from recipetune.report import trainable_share

from .parameters import count_parameters

SEVEN_PROJECTIONS = ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"]


class LoraOptions(Options):
    r: int = Field(default=16, ge=1)
    """Rank of the update matrices; higher learns more and costs more memory."""
    alpha: int = Field(default=16, ge=1)
    """Scaling numerator: the update is scaled by alpha / r (alpha / sqrt(r) with rslora)."""
    dropout: float = Field(default=0.0, ge=0.0, lt=1.0)
    """Dropout on the LoRA input; 0 keeps Unsloth's fast kernels."""
    bias: Literal["none", "all", "lora_only"] = "none"
    """Which biases to train; "none" keeps Unsloth's fast kernels."""
    target_modules: list[str] | Literal["all-linear"] = Field(default_factory=lambda: list(SEVEN_PROJECTIONS))
    """Module names to adapt (Llama: the seven projections) or "all-linear"."""
    modules_to_save: list[str] | None = None
    """Modules trained in full and saved with the adapter (e.g. embed_tokens, lm_head when adding tokens)."""
    use_rslora: bool = False
    """Rank-stabilized LoRA (scale alpha / sqrt(r))."""
    use_dora: bool = False
    """Weight-decomposed LoRA (slower; turns Unsloth's fast kernels off)."""
    gradient_checkpointing: bool | Literal["unsloth"] = "unsloth"
    """Recompute activations in backward to save memory. "unsloth" is Unsloth's offloaded variant; other backends treat it as true."""
    random_state: int = 3407
    """Seed for the LoRA weights' initialisation."""
    loftq_config: dict[str, Any] | None = None
    """LoftQ initialisation options (Unsloth backend), e.g. {loftq_bits = 4}."""


def peft_config(o: LoraOptions, **extra: Any):
    """peft's LoraConfig from the options; ``extra`` (the rows of new tokens, see ``token_rows``) goes in as given."""
    from peft import LoraConfig

    extra.setdefault("modules_to_save", o.modules_to_save)
    return LoraConfig(r=o.r, lora_alpha=o.alpha, lora_dropout=o.dropout, bias=o.bias,
                      target_modules=o.target_modules, use_rslora=o.use_rslora, use_dora=o.use_dora,
                      task_type="CAUSAL_LM", **extra)


def planned_share(recipe) -> str | None:
    """The trainable-parameter share the run will log, from the model's config.json (None when not local)."""
    from .memory_estimate import read_config
    from .model_sources import gguf_cache_dir, local_model_path
    from .parameters import planned_parameters

    try:
        local = local_model_path(recipe.load.options.model)
    except (UserError, AttributeError):
        return None
    if local is not None and local.suffix == ".gguf":
        local = gguf_cache_dir(local)
    cfg = read_config(local)
    counts = planned_parameters(cfg, recipe.adapt.options) if cfg else None
    return trainable_share(*counts) if counts else None


def log_parameters(run, model, label: str) -> None:
    """Log the trainable share (counted as the model has them, 4-bit weights unpacked) and keep it for the report."""
    trainable, total = count_parameters(model)
    run.logger.info("%s: %s", label, trainable_share(trainable, total))
    run.state["trainable_parameters"] = (trainable, total)


class LoraAdapter(Adapter):
    """Low-rank adapters on the named projections (peft)."""

    name = "lora"
    Options = LoraOptions

    def check(self, recipe):
        from .token_rows import new_token_problems

        return new_token_problems(recipe)

    def describe_plan(self, recipe):
        o = self.options
        lines = [f"r={o.r} alpha={o.alpha} on {o.target_modules}"]
        share = planned_share(recipe)
        if share:
            lines.append(share)
        if recipe.load.use == "unsloth":
            off = [why for cond, why in ((o.dropout > 0, f"dropout={o.dropout}"), (o.bias != "none", f"bias={o.bias!r}"),
                                         (o.use_dora, "use_dora=true")) if cond]
            if off:
                lines.append(f"Unsloth's fast LoRA kernels are OFF because of {', '.join(off)}")
        return lines

    def adapt(self, run, loaded: Loaded) -> Loaded:
        if loaded.extras.get("adapter_from") is not None:  # load.adapter: the earlier run's adapter is trained on
            run.logger.info("adapt: training the adapter from %s (its own r/alpha/target modules; this table's are "
                            "not used)", loaded.extras["adapter_from"])
            log_parameters(run, loaded.model, "LoRA (continued)")
            loaded.adapter = self.name
            return loaded
        if loaded.backend == "unsloth":
            return self.adapt_unsloth(run, loaded)
        import torch
        from peft import get_peft_model, prepare_model_for_kbit_training

        from .token_rows import head_with_bias, train_rows

        o = self.options
        new_rows = train_rows(run, loaded, modules_to_save=o.modules_to_save)  # before hooks go on the embeddings
        model = loaded.model
        checkpointing = bool(o.gradient_checkpointing)
        if o.gradient_checkpointing == "unsloth":
            run.logger.info('adapt.gradient_checkpointing = "unsloth" on backend %r: using transformers\' '
                            "gradient checkpointing (non-reentrant)", loaded.backend)
        if loaded.quantized:
            model = prepare_model_for_kbit_training(model, use_gradient_checkpointing=checkpointing,
                                                    gradient_checkpointing_kwargs={"use_reentrant": False})
        elif checkpointing:
            model.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
            model.enable_input_require_grads()
        torch.manual_seed(o.random_state)
        try:
            model = get_peft_model(model, peft_config(o, **new_rows))
            head_with_bias(model)
        except ValueError as exc:
            raise UserError(f"adapt.target_modules {o.target_modules}: {exc}") from exc
        log_parameters(run, model, "LoRA")
        loaded.model = model
        loaded.adapter = self.name
        return loaded

    def unsloth_arguments(self, loaded: Loaded) -> dict[str, Any]:
        """Keyword arguments of ``FastLanguageModel.get_peft_model``, from this adapter's options."""
        o = self.options
        kwargs: dict[str, Any] = dict(
            r=o.r, target_modules=o.target_modules, lora_alpha=o.alpha, lora_dropout=o.dropout, bias=o.bias,
            use_gradient_checkpointing=o.gradient_checkpointing, random_state=o.random_state,
            use_rslora=o.use_rslora, loftq_config=o.loftq_config or {}, modules_to_save=o.modules_to_save,
            max_seq_length=loaded.max_seq_length)
        if o.use_dora:  # Unsloth takes it through **kwargs into peft's LoraConfig
            kwargs["use_dora"] = True
        if o.loftq_config:
            kwargs["init_lora_weights"] = "loftq"
        return kwargs

    def adapt_unsloth(self, run, loaded: Loaded) -> Loaded:
        """Unsloth's ``get_peft_model``: its fast LoRA kernels and "unsloth" (offloaded) checkpointing."""
        fast = loaded.extras.get("unsloth")
        if fast is None:
            raise UserError('backend "unsloth" did not hand over FastLanguageModel (Loaded.extras["unsloth"])')
        try:
            from .token_rows import train_rows

            new_rows = train_rows(run, loaded, unsloth=True, modules_to_save=self.options.modules_to_save)
            model = fast.get_peft_model(loaded.model, **{**self.unsloth_arguments(loaded), **new_rows})
        except ValueError as exc:
            raise UserError(f"adapt.target_modules {self.options.target_modules}: {exc}") from exc
        log_parameters(run, model, "LoRA (Unsloth)")
        loaded.model = model
        loaded.adapter = self.name
        return loaded


@hookimpl
def register_adapters(register):
    register(LoraAdapter)
