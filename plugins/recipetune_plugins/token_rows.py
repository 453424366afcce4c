"""LoRA and the tokens a chat template adds: refuse them, or train just their embedding rows.

The format stage adds the tokens a chat template needs (``recipetune.data.new_tokens``), but it runs
after ``adapt``: rows added then are frozen under LoRA and peft saves the whole resized embedding
with the adapter. So under ``format.new_tokens = "train"`` the adapter adds them *before* wrapping
the model and trains only their rows with peft's ``trainable_token_indices`` (on the input
embedding, and on the output layer when it is not tied to it), which saves just those rows.
Unsloth's ``get_peft_model`` takes no token indices: there the two layers are trained whole
(``modules_to_save``), as Unsloth does for new tokens. ``refuse`` stops here, before training, and
``recipe validate`` says the same when the model's tokenizer is on this machine.
"""

from __future__ import annotations

from typing import Any, Iterable

from recipetune import Problem, UserError
from recipetune.data.new_tokens import explain, folder_vocabulary, missing_tokens, mode_for

EMBEDDING_LAYERS = ("embed_tokens", "lm_head")


def _template(recipe: Any):
    return recipe.chat_template.component if recipe.format is not None and recipe.chat_template is not None else None


def new_token_problems(recipe: Any) -> Iterable[Problem]:
    """``recipe validate``: the tokens the template adds to a local model's tokenizer, and what follows."""
    from .model_sources import gguf_cache_dir, local_model_path

    template = _template(recipe)
    if template is None or not template.special_tokens:
        return []
    try:
        local = local_model_path(recipe.load.options.model)
    except (UserError, AttributeError):
        return []
    if local is not None and local.suffix == ".gguf" and local.is_file():
        local = gguf_cache_dir(local)  # the folder converted on the first run (the quickstart's SmolLM2)
    if local is None or not local.is_dir():
        return []
    vocabulary = folder_vocabulary(local)
    if vocabulary is None:
        return []
    missing = missing_tokens(template, vocabulary)
    if not missing:
        return []
    mode = mode_for(recipe)
    message = explain(template, missing, mode, len(vocabulary), adapter=True)
    return [Problem("format.chat_template", message, severity="error" if mode == "refuse" else "warning")]


def train_rows(run: Any, loaded: Any, *, unsloth: bool = False, modules_to_save: list[str] | None = None) -> dict[str, Any]:
    """Add the template's missing tokens now (``train``) and return the peft arguments that train their rows;
    raise :class:`UserError` under ``refuse``; ``{}`` when nothing is missing or under ``map``."""
    recipe = run.recipe
    template = _template(recipe)
    if template is None:
        return {}
    tokenizer, model = loaded.tokenizer, loaded.model
    missing = missing_tokens(template, tokenizer.get_vocab())
    if not missing:
        return {}
    mode = mode_for(recipe)
    before = model.get_input_embeddings().weight.shape[0]
    if mode == "refuse":
        raise UserError("format.chat_template: " + explain(template, missing, mode, before, adapter=True))
    if mode == "map":
        return {}
    tokenizer.add_special_tokens({"additional_special_tokens": missing})  # as the format stage would, only earlier
    if before < len(tokenizer):
        model.resize_token_embeddings(len(tokenizer))
    ids = tokenizer.convert_tokens_to_ids(missing)
    run.logger.info("new tokens: %s", explain(template, missing, mode, before, adapter=True))
    run.state["new_tokens"] = {"tokens": missing, "ids": ids, "mode": mode, "rows_before": before}
    chosen = list(modules_to_save or [])
    if unsloth or any(layer in chosen for layer in EMBEDDING_LAYERS):
        # trained whole: saved whole with the adapter (peft's own "auto" does it for a resized vocabulary)
        return {"modules_to_save": list(dict.fromkeys([*chosen, *EMBEDDING_LAYERS]))}
    indices = {"embed_tokens": ids}
    tied = bool(getattr(model.config, "tie_word_embeddings", False))
    if not tied and model.get_output_embeddings() is not None:
        indices["lm_head"] = ids  # the output row too: the model must be able to say a new stop token
    # only the trained rows go into the adapter: a loader resizes the base to len(tokenizer) first
    loaded.extras["peft_save"] = {"save_embedding_layers": False}
    return {"trainable_token_indices": indices}


def head_with_bias(model: Any) -> None:
    """Give a token-row wrapper on the output layer the ``bias`` attribute TRL's fused LM head reads
    (``lm_head.weight`` is already the merged weight, whose new rows carry the gradient)."""
    head = model.get_output_embeddings()
    if head is not None and type(head).__name__ == "TrainableTokensWrapper" and "bias" not in vars(head):
        head.bias = getattr(head.original_module if hasattr(head, "original_module") else None, "bias", None)
